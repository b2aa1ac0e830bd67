"""`none`: no adaptation; the source model is scored on the pair's test scans (the baseline D_B)."""
from .base import Strategy, check_options


def build(model, arch, options, *, budget=None):
    return Strategy("none", check_options("none", options, ()), None)
