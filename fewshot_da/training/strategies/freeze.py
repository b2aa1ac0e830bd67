"""`freeze`: fine-tune one fixed layer selection (a group, `bn`, regex or module list); the rest stays frozen."""
from ..layers import trainable_names
from .base import Strategy, check_options


def build(model, arch, options, *, budget=None):
    options = check_options("freeze", options, ("layers",))
    options.setdefault("layers", "first")
    names = trainable_names(model, arch, options["layers"])
    return Strategy("freeze", options, lambda epoch: names)
