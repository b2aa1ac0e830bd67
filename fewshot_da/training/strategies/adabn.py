"""`adabn`: no labels, no gradient step: every BatchNorm's running statistics are re-estimated on target images.

Li et al., "Revisiting batch normalization for practical domain adaptation" (AdaBN, 2016). The fine-tune scans'
images (masks are not read) are passed whole, padded to the architecture's multiple with each slice's minimum as in
prediction, in batches; each BN keeps the cumulative average of the batch statistics (momentum None).
"""
import numpy as np
import torch

from ...errors import InputError
from ...models.anatomy import describe, running_stat_norms
from ...predict import pad_slices
from ..layers import no_running_stats
from .base import Strategy, check_options


def reestimate_bn(model, images, *, batch_size: int = 16, pad_multiple: int = 8) -> dict:
    """Reset and re-estimate every BatchNorm's running mean/var from `images` ((S, H, W) arrays); returns counts."""
    bns = [m for _, m in running_stat_norms(model)]  # BatchNorm (and InstanceNorm tracking running statistics)
    if not bns:
        raise InputError("--strategy adabn: the model has no BatchNorm layer (classic U-Net); use another strategy")
    saved = [(m, m.momentum) for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    device = next(model.parameters()).device
    model.train()
    n = 0
    try:
        with torch.no_grad():
            for image in images:
                for start in range(0, image.shape[0], batch_size):
                    chunk = torch.from_numpy(np.array(image[start:start + batch_size], dtype=np.float32))
                    x = pad_slices(chunk.to(device), pad_multiple)
                    model(x[:, None])
                    n += x.shape[0]
    finally:
        for m, momentum in saved:
            m.momentum = momentum
        model.eval()
    return {"bn_layers": len(bns), "slices": n}


def build(model, arch, options, *, budget=None):
    options = check_options("adabn", options, ())
    anatomy = describe(model)
    if not anatomy.has_running_stats:  # AdaBN re-estimates running statistics: nothing to do without them
        raise InputError(f"--strategy adabn does not apply: {no_running_stats(model)}; use another strategy")

    def prepare(net, images, batch_size):
        return reestimate_bn(net, images, batch_size=batch_size, pad_multiple=anatomy.pad_multiple)

    return Strategy("adabn", options, None, prepare=prepare)
