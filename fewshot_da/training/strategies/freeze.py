"""`freeze`: fine-tune one fixed layer selection (a group, `bn`, regex or module list); the rest stays frozen."""
from ..layers import trainable_names


def build(model, arch, options, Strategy):
    from . import check_options

    options = check_options("freeze", options, ("layers",))
    options.setdefault("layers", "first")
    names = trainable_names(model, arch, options["layers"])
    return Strategy("freeze", options, lambda epoch: names)
