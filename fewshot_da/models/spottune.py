"""SpotTUnet (REFERENCE.md §6): a fine-tuned and a frozen copy of a U-Net, mixed unit by unit per slice by a policy.

Per slice and decision unit, p in {0, 1} comes from the policy network (Gumbel straight-through while training,
argmax in eval mode) and the unit's output is finetuned(x) * (1 - p) + frozen(x) * p on the same input x, so p = 1
means "reuse the frozen source unit". The U-Net's own `forward` supplies the wiring (skips, concatenations): it is
run with each top-level module replaced by a mixing runner, so any architecture built by `build_model` works.

Decision units (`decision_units`, in `models/anatomy.py`), the rule for every architecture:
  1. path units: the children of every top-level nn.Sequential, in registration order; a child that has
     parameters and contains a conv (Conv2d, ConvTranspose2d, or a block holding one: ResBlock, pre-/post-
     activation) is one unit. A parametrised child without a conv (a standalone BatchNorm) joins the next conv
     child of the same Sequential (BN then conv = one pre-activation unit, e.g. DART20's down/up convs);
  2. skip units: every other top-level module with parameters (the 1x1 skip convs), in registration order;
  3. a trailing conv-free child (nothing after it in its Sequential: the final BatchNorm2d on the logit) gets,
     with unit_map="reference", the decision of the next unit in this order (the DSA code's layer counter: for
     `dsa` out_path.4 shares shortcut0's decision, index 29); with unit_map="own", or when no unit follows
     (vanilla), a decision of its own appended after all others (index 32 for `dsa`), so indices 0-31 keep their
     reference meaning.
Parameter-free children (ReLU, Identity, MaxPool, dropout) are applied once, outside the mixing.
With this rule every parameter of dsa, dart20 and vanilla belongs to exactly one unit (`unassigned_parameters`).
"""
import copy
import functools

import torch
from torch import nn

from ..checkpoint import load_pretrained
from ..errors import InputError
from . import build_model
from .anatomy import UNIT_MAPS, Unit, decision_units  # noqa: F401 (the unit rule lives with the anatomy)
from .policy_net import DEFAULT_TEMPERATURE, PolicyNet, sample_policy


def unassigned_parameters(model: nn.Module, units) -> list:
    """Names of the parameters of `model` that no unit switches (they would be shared, not mixed): [] for our nets."""
    prefixes = tuple(p + "." for u in units for p in u.modules)
    return [n for n, _ in model.named_parameters() if not n.startswith(prefixes)]


def units_table(arch: str, unit_map: str = "reference") -> list:
    """Rows {index, name, modules, n_params} of `arch`'s decision units, for `layers --arch A --units`."""
    units = decision_units(build_model(arch), arch, unit_map)
    return [{"index": u.index, "name": u.name, "modules": ",".join(u.modules), "n_params": u.n_params}
            for u in units]


def _sites(units) -> dict:
    """Where each unit mixes: ({top-level name: unit index} for whole top-level modules (skip convs),
    {top-level name: [(start, stop, unit index), ...]} for runs of Sequential children). One unit may mix at
    several sites (dsa's shortcut0 and out_path.4); modules in neither dict are applied unmixed."""
    whole, ranges = {}, {}
    for u in units:
        by_top = {}
        for path in u.modules:
            top, _, child = path.partition(".")
            if not child:
                whole[top] = u.index
            else:
                by_top.setdefault(top, []).append(int(child))
        for top, idx in by_top.items():
            ranges.setdefault(top, []).append((min(idx), max(idx) + 1, u.index))
    return whole, ranges


def mix(finetuned_out: torch.Tensor, frozen_out: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """finetuned_out * (1 - p) + frozen_out * p per sample, p of shape (B,); p = 1 means the frozen unit's output.

    Computed as torch.lerp: the formula's value and gradients, exact at p = 0 and p = 1, and in one fused pass
    (forward + backward about 2x faster than the written-out formula on CPU; benchmarks/README.md).
    """
    p = p.reshape(p.shape[0], *([1] * (finetuned_out.dim() - 1))).to(finetuned_out.dtype)
    return torch.lerp(finetuned_out, frozen_out, p)


class _Wiring:
    """Stand-in for `self` in the U-Net's forward: top-level modules resolve to mixing runners."""

    def __init__(self, runners: dict, model: nn.Module):
        self._runners, self._model = runners, model

    def __getattr__(self, name):
        runners = self.__dict__["_runners"]
        return runners[name] if name in runners else getattr(self.__dict__["_model"], name)


class PolicyWrapper(nn.Module):
    """What both SpotTUnet wrappers share: the policy decisions of a batch (sampled, checked, recorded) and the
    per-unit records of how often each unit's fine-tuned copy was used. Subclasses set `units`, `policy` and
    `temperature`, and call `_init_records()` once."""

    def _init_records(self) -> None:
        # per unit: sum over slices of (1 - p) = slices that used the fine-tuned unit; and the slice count
        self.register_buffer("record_finetuned", torch.zeros(len(self.units), dtype=torch.float64))
        self.register_buffer("record_slices", torch.zeros((), dtype=torch.int64))
        self.recording = True
        self.last_policy = None

    def _decide(self, x: torch.Tensor, policy: torch.Tensor | None) -> torch.Tensor:
        """(B, n_units) decisions for x (p = 1: frozen unit): `policy` if given, else the policy network's (Gumbel
        straight-through in training, argmax in eval); kept as `last_policy` and added to the records."""
        if policy is None:
            policy = sample_policy(self.policy(x), temperature=self.temperature, hard_gumbel=self.training)
        if policy.shape != (x.shape[0], len(self.units)):
            raise ValueError(f"policy has shape {tuple(policy.shape)}, expected ({x.shape[0]}, {len(self.units)})")
        self.last_policy = policy
        if self.recording:
            with torch.no_grad():
                self.record_finetuned += (1 - policy.detach()).sum(0).to(torch.float64)
                self.record_slices += x.shape[0]
        return policy

    def reset_policy_record(self) -> None:
        self.record_finetuned.zero_()
        self.record_slices.zero_()

    def policy_fractions(self) -> dict:
        """{unit name: fraction of recorded slices that used the fine-tuned unit} (NaN before any slice)."""
        n = int(self.record_slices)
        values = (self.record_finetuned / n).tolist() if n else [float("nan")] * len(self.units)
        return {u.name: v for u, v in zip(self.units, values)}

    def policy_rows(self) -> list:
        """Rows {index, unit, fraction_finetuned, slices} of the current record, for a per-epoch / per-scan CSV."""
        n = int(self.record_slices)
        return [{"index": u.index, "unit": u.name, "fraction_finetuned": f, "slices": n}
                for u, f in zip(self.units, self.policy_fractions().values())]

    def trainable_names(self) -> list:
        """Parameter names that train: the fine-tuned copy and the policy network (never `frozen.*`)."""
        return [n for n, _ in self.named_parameters() if not n.startswith("frozen.")]



class SpotTUnet(PolicyWrapper):
    """Two copies of the `arch` U-Net (`finetuned`: trainable; `frozen`: requires_grad False) loaded from the same
    source state dict, the `policy` network (2 logits per unit) and per-unit policy records.

    forward(x) -> logits (B, out_channels, H, W); it also sets `last_policy` (B, n_units), the decisions used
    (p = 1: frozen unit), which `policy_penalty` turns into the extra loss. train(): Gumbel straight-through at
    `temperature`; eval(): argmax, deterministic per slice. Both copies' BatchNorms follow the module mode, so in
    training the frozen copy's running statistics keep updating on target data, as in the reference (§1.5, §6).
    H and W divisible by 8 (16 for vanilla): the U-Net's and the policy network's requirement.
    """

    def __init__(self, arch: str, source_state: dict | None = None, *, unit_map: str = "reference",
                 temperature: float = DEFAULT_TEMPERATURE, in_channels: int = 1, out_channels: int = 1,
                 base_filters: int = 0):
        super().__init__()
        if not temperature > 0:
            raise InputError(f"--temperature must be > 0, got {temperature}")
        self.arch, self.unit_map, self.temperature = arch, unit_map, float(temperature)
        self.finetuned = build_model(arch, in_channels=in_channels, out_channels=out_channels,
                                     base_filters=base_filters)
        if source_state is not None:
            self.finetuned.load_state_dict(source_state)
        self.frozen = copy.deepcopy(self.finetuned).requires_grad_(False)
        self.units = tuple(decision_units(self.finetuned, arch, unit_map))
        self.policy = PolicyNet(len(self.units), in_channels=in_channels)
        self._whole, self._ranges = _sites(self.units)
        self._init_records()

    @classmethod
    def from_checkpoint(cls, arch: str, path, **kwargs) -> "SpotTUnet":
        """Both copies from a source checkpoint file (ours or a raw reference state dict; see `load_pretrained`)."""

        base = build_model(arch, in_channels=kwargs.get("in_channels", 1), out_channels=kwargs.get("out_channels", 1))
        load_pretrained(base, path, arch=arch)
        return cls(arch, base.state_dict(), **kwargs)

    # --- forward -------------------------------------------------------------------------------------------------
    def _run_top(self, name, *inputs, weights):
        ft, fr = getattr(self.finetuned, name), getattr(self.frozen, name)
        if name in self._whole:  # a whole top-level module is one unit (it may take several inputs: classic)
            return mix(ft(*inputs), fr(*inputs), weights[self._whole[name]])
        segments = self._ranges.get(name)
        if not segments:
            return ft(*inputs)
        (x,) = inputs
        i, n = 0, len(ft)
        for start, stop, unit in sorted(segments):
            for j in range(i, start):
                x = ft[j](x)
            a = b = x
            for j in range(start, stop):
                a, b = ft[j](a), fr[j](b)
            x = mix(a, b, weights[unit])
            i = stop
        for j in range(i, n):
            x = ft[j](x)
        return x

    def forward(self, x: torch.Tensor, policy: torch.Tensor | None = None) -> torch.Tensor:
        """Logits for x (B, C, H, W). `policy` (B, n_units) in [0, 1] overrides the policy network (tests, analysis)."""
        weights = self._decide(x, policy).unbind(1)
        runners = {name: functools.partial(self._run_top, name, weights=weights)
                   for name, _ in self.finetuned.named_children()}
        return type(self.finetuned).forward(_Wiring(runners, self.finetuned), x)



def policy_penalty(policy: torch.Tensor, lam: float) -> torch.Tensor:
    """lam * sum(1 - p) / numel(p): lam times the fraction of (slice, unit) decisions that use the fine-tuned unit.

    This is the DSA code's normalisation (mode 'l1'), over batch x units. The paper writes a sum over the units
    (no division by their number), so with the published lam values (0.005, ...) its formula is 32x stronger
    (REFERENCE.md §6 cautions); the published values are the code's, hence this form.
    """
    return lam * (1 - policy.float()).sum() / policy.numel()


def param_groups(model: SpotTUnet, *, lr_main: float = 1e-3, lr_policy: float = 1e-2,
                 weight_decay_main: float = 0.0, weight_decay_policy: float = 1e-3) -> list:
    """Two SGD parameter groups: "main" (fine-tuned copy, lr 1e-3, no weight decay) and "policy" (policy network,
    lr 1e-2, weight decay 1e-3), as the reference's two SGD optimizers (§6). One SGD over both groups makes the
    same update: SGD's step reads only each group's own lr / weight decay and each parameter's own momentum.
    `initial_lr` holds each group's base lr so a schedule can scale both (reference: x0.1 after epoch 45).
    """
    main = [p for p in model.finetuned.parameters() if p.requires_grad]
    return [
        {"name": "main", "params": main, "lr": lr_main, "initial_lr": lr_main, "weight_decay": weight_decay_main},
        {"name": "policy", "params": list(model.policy.parameters()), "lr": lr_policy, "initial_lr": lr_policy,
         "weight_decay": weight_decay_policy},
    ]
