"""`gradual`: block-wise unfreezing as in the ultrasound paper (Amiri et al. 2019, experiment 2).

Blocks are the architecture's resolution stages (`fewshot-da layers --arch A --blocks`), ordered shallow (input
side) to deep (output side). `order` shallow-deep or deep-shallow; either `blocks_trained` K trains the first K
blocks of that order for the whole run (the paper's Fig. 4 series, one run per K), or one block is added every
`unfreeze_every` epochs, starting with one.
"""
from ...errors import InputError
from ..layers import block_names
from .base import Strategy, check_options

ORDERS = ("shallow-deep", "deep-shallow")


def build(model, arch, options, *, budget=None):
    options = check_options("gradual", options, ("order", "unfreeze_every", "blocks_trained"))
    options.setdefault("order", "shallow-deep")
    if options["order"] not in ORDERS:
        raise InputError(f"--order {options['order']!r} is not valid; valid: {', '.join(ORDERS)}")
    per_block = block_names(model, arch)
    order = list(range(len(per_block)))
    if options["order"] == "deep-shallow":
        order.reverse()
    if "blocks_trained" in options:
        k = int(options["blocks_trained"])
        if not 1 <= k <= len(order):
            raise InputError(f"--blocks-trained {k}: {arch} has {len(order)} blocks (1..{len(order)})")

        def count(epoch):
            return k
    else:
        every = int(options.setdefault("unfreeze_every", 1))
        if every < 1:
            raise InputError(f"--unfreeze-every must be >= 1, got {every}")

        def count(epoch):
            return min(len(order), 1 + epoch // every)

    def active(epoch):
        return sorted(order[:count(epoch)])

    def trainable_at(epoch):
        chosen = set(active(epoch))
        return [n for i, names in enumerate(per_block) if i in chosen for n in names]

    return Strategy("gradual", options, trainable_at,
                    describe=lambda epoch: {"trainable_blocks": "+".join(str(i + 1) for i in active(epoch))})
