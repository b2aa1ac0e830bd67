"""`auto-rgn`: every tensor trains; each epoch its learning rate is scaled by its relative gradient norm.

Lee et al., "Surgical fine-tuning improves adaptation to distribution shifts" (ICLR 2023): RGN_t = ||g_t|| / ||w_t||.
Here the gradient is that of the epoch's first batch (a probe step that changes neither weights nor BN statistics),
and the scale of tensor t is RGN_t / max over tensors of RGN, so the most-moving tensor trains at the scheduled lr.
The scales are written per epoch to strategy.csv.
"""
import torch
from .base import Strategy, check_options


def build(model, arch, options, *, budget=None):
    options = check_options("auto-rgn", options, ())
    names = [n for n, _ in model.named_parameters()]

    def epoch_scales(net, epoch, batch, loss_fn):
        params = dict(net.named_parameters())
        buffers = {k: v.clone() for k, v in net.state_dict().items() if k not in params}
        x, y = batch
        net.zero_grad(set_to_none=True)
        loss_fn(net(x), y).backward()
        rgn = {}
        for name in names:
            p = params[name]
            g = p.grad
            w_norm = float(p.detach().norm())
            rgn[name] = float(g.norm()) / w_norm if g is not None and w_norm > 0 else 0.0
        net.zero_grad(set_to_none=True)
        with torch.no_grad():  # the probe must not move BN running statistics
            for key, value in net.state_dict().items():
                if key in buffers:
                    value.copy_(buffers[key])
        top = max(rgn.values()) or 1.0
        scales = {n: v / top for n, v in rgn.items()}
        return scales, [{"epoch": epoch, "tensor": n, "rgn": rgn[n], "lr_scale": scales[n]} for n in names]

    return Strategy("auto-rgn", options, lambda epoch: names,
                    param_groups=lambda chosen: [{"names": [n]} for n in chosen], epoch_scales=epoch_scales)
