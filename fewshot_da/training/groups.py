"""Named layer groups per architecture (first/last as in the papers, contracting/expanding, regex, lists) and freezing.

A group is a tuple of module-path prefixes; a parameter belongs to it when its name equals a prefix or starts with
prefix + ".". For the papers' sets this selects exactly what their substring match on `named_parameters()` did.
"""
import re

from torch import nn

from ..errors import InputError
from ..models import build_model, check_arch

BN_STATS = ("update", "freeze")

_TOP = {
    "dart20": ("init_path", "shortcut0", "down1", "shortcut1", "down2", "shortcut2", "down3", "up3", "up2", "up1",
               "out_path"),
    "dsa": ("init_path", "shortcut0", "down1", "shortcut1", "down2", "shortcut2", "bottleneck", "up2", "up1",
            "out_path"),
    "vanilla": ("init_path", "down1", "down2", "down3", "down4", "up4", "up3", "up2", "up1", "out_path"),
}

# first/last: the reference sets (3 convs each for the residual nets; DSA's last leaves the final BN(1) frozen).
# contracting/expanding (ultrasound study, our mapping): the encoder up to and including the deepest ResBlocks vs the
# decoder, head and skip convs. DSA's `bottleneck` is split: its strided conv and ResBlocks (.0-.3) contract, its
# transposed conv (.4) expands, mirroring DART20 where the transposed conv at 1/8 sits in `up3`.
_GROUPS = {
    "dart20": {
        "first": ("init_path.0", "init_path.2"),
        "last": ("out_path",),
        "contracting": ("init_path", "down1", "down2", "down3"),
        "expanding": ("up3", "up2", "up1", "out_path", "shortcut0", "shortcut1", "shortcut2"),
    },
    "dsa": {
        "first": ("init_path.0", "init_path.1"),
        "last": ("out_path.2", "out_path.3"),
        "contracting": ("init_path", "down1", "down2", "bottleneck.0", "bottleneck.1", "bottleneck.2",
                        "bottleneck.3"),
        "expanding": ("bottleneck.4", "up2", "up1", "out_path", "shortcut0", "shortcut1", "shortcut2"),
    },
    "vanilla": {
        "first": ("init_path",),
        "last": ("out_path",),
        "contracting": ("init_path", "down1", "down2", "down3", "down4"),
        "expanding": ("up4", "up3", "up2", "up1", "out_path"),
    },
}
GROUP_NAMES = ("first", "last", "all", "contracting", "expanding")


def layer_groups(arch: str) -> dict:
    """{group name: tuple of module-path prefixes} for `arch`, including `all` (every top-level module)."""
    groups = dict(_GROUPS[check_arch(arch)])
    groups["all"] = _TOP[arch]
    return {name: groups[name] for name in GROUP_NAMES}


def _matches(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def trainable_names(model: nn.Module, arch: str, spec: str) -> list:
    """Names of the parameters of `model` that `spec` selects, in model order.

    spec: a group (first|last|all|contracting|expanding), `regex:PATTERN` (re.search on parameter names), or a
    comma list of groups and module paths (e.g. `init_path.0,out_path`). Raises InputError (one line) when a name
    is unknown or selects nothing.
    """
    groups = layer_groups(arch)
    names = [name for name, _ in model.named_parameters()]
    spec = spec.strip()
    if spec.startswith("regex:"):
        try:
            pattern = re.compile(spec[len("regex:"):])
        except re.error as exc:
            raise InputError(f"--layers {spec!r}: invalid regular expression ({exc})") from None
        selected = [n for n in names if pattern.search(n)]
        if not selected:
            raise InputError(f"--layers {spec!r} matches no parameter of {arch}")
        return selected
    module_names = {name for name, _ in model.named_modules() if name}
    prefixes = []
    for item in filter(None, (s.strip() for s in spec.split(","))):
        if item in groups:
            prefixes.extend(groups[item])
        elif item in module_names and any(_matches(n, item) for n in names):
            prefixes.append(item)
        else:
            raise InputError(
                f"--layers: unknown group or module {item!r} for {arch}; valid groups: {', '.join(GROUP_NAMES)}, "
                f"regex:PATTERN, or module paths with parameters such as {', '.join(_TOP[arch])}"
            )
    if not prefixes:
        raise InputError(f"--layers is empty; valid groups: {', '.join(GROUP_NAMES)}")
    return [n for n in names if any(_matches(n, p) for p in prefixes)]


def freeze(model: nn.Module, trainable, bn_stats: str = "update") -> list:
    """Set requires_grad True for the parameters named in `trainable` and False for all others.

    bn_stats: "update" (reference behaviour: every BatchNorm keeps updating its running statistics during
    training, frozen or not) or "freeze" (BatchNorms whose parameters are all frozen run in eval mode; applied by
    `set_train_mode`, which `fit` calls every epoch). Returns the sorted list of frozen parameter names.
    """
    check_bn_stats(bn_stats)
    trainable = set(trainable)
    names = {name for name, _ in model.named_parameters()}
    unknown = trainable - names
    if unknown:
        raise InputError(f"trainable parameter {sorted(unknown)[0]!r} is not in the model")
    frozen = []
    for name, param in model.named_parameters():
        param.requires_grad_(name in trainable)
        if name not in trainable:
            frozen.append(name)
    return sorted(frozen)


def check_bn_stats(bn_stats: str) -> str:
    if bn_stats not in BN_STATS:
        raise InputError(f"--bn-stats {bn_stats!r} is not valid; valid: {', '.join(BN_STATS)}")
    return bn_stats


def frozen_batchnorms(model: nn.Module) -> list:
    """Names of BatchNorm modules whose affine parameters are all frozen."""
    return [name for name, m in model.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm)
            and all(not p.requires_grad for p in m.parameters(recurse=False))]


def set_train_mode(model: nn.Module, bn_stats: str = "update") -> nn.Module:
    """model.train(); with bn_stats="freeze" the fully frozen BatchNorms go back to eval (running stats fixed)."""
    check_bn_stats(bn_stats)
    model.train()
    if bn_stats == "freeze":
        modules = dict(model.named_modules())
        for name in frozen_batchnorms(model):
            modules[name].eval()
    return model


def layers_table(arch: str) -> list:
    """Rows (group, modules, n_params) for every named group of `arch`, then one row per top-level module."""
    model = build_model(arch)
    params = dict(model.named_parameters())
    rows = []
    for group, prefixes in layer_groups(arch).items():
        n = sum(p.numel() for name, p in params.items() if any(_matches(name, q) for q in prefixes))
        rows.append((group, ", ".join(prefixes), n))
    for name, module in model.named_children():
        rows.append(("module", name, sum(p.numel() for p in module.parameters())))
    return rows


def selection_table(arch: str, spec: str) -> list:
    """Rows (parameter name, shape, n params) that the layer spec `spec` makes trainable in `arch`."""
    model = build_model(arch)
    params = dict(model.named_parameters())
    return [(name, tuple(params[name].shape), params[name].numel()) for name in trainable_names(model, arch, spec)]


def format_layers_table(rows) -> str:
    """Plain-text table of `layers_table` rows."""
    lines = [f"{'group':<12} {'params':>11}  modules"]
    for group, modules, n in rows:
        lines.append(f"{group:<12} {n:>11,}  {modules}")
    return "\n".join(lines)
