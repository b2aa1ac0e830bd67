"""`none`: no adaptation; the source model is scored on the pair's test scans (the baseline D_B)."""


def build(model, arch, options, Strategy):
    from . import check_options

    return Strategy("none", check_options("none", options, ()), None)
