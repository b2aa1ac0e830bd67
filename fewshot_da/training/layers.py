"""Layer selection: which parameters a spec names (groups, blocks, regex, module lists), freezing, BN modes.

A group is a tuple of module-path prefixes declared by the model class (`fewshot_da.models`); a parameter belongs
to it when its name equals a prefix or starts with prefix + ".". For the papers' sets this selects exactly what
their substring match on `named_parameters()` did. `bn` selects every BatchNorm affine parameter (Karani et al.
2018's BN-only fine-tuning).
"""
import re

from torch import nn

from ..errors import InputError
from ..models import GROUP_NAMES, blocks, build_model, layer_groups, top_modules

BN_STATS = ("update", "freeze")
SPECIAL_SPECS = ("bn",)


def matches(name: str, prefix: str) -> bool:
    """True when parameter/module `name` is `prefix` or lies below it."""
    return name == prefix or name.startswith(prefix + ".")


def _bn_parameters(model: nn.Module) -> list:
    return [f"{module_name}.{p}" for module_name, m in model.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) for p, _ in m.named_parameters(recurse=False)]


def trainable_names(model: nn.Module, arch: str, spec: str) -> list:
    """Names of the parameters of `model` that `spec` selects, in model order.

    spec: a group (first|last|all|contracting|expanding), `bn` (BatchNorm affine parameters only),
    `regex:PATTERN` (re.search on parameter names), or a comma list of groups and module paths (e.g.
    `init_path.0,out_path`). Raises InputError (one line) when a name is unknown or selects nothing.
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
    prefixes, chosen = [], set()
    for item in filter(None, (s.strip() for s in spec.split(","))):
        if item in groups:
            prefixes.extend(groups[item])
        elif item == "bn":
            chosen.update(_bn_parameters(model))
        elif item in module_names and any(matches(n, item) for n in names):
            prefixes.append(item)
        else:
            raise InputError(
                f"--layers: unknown group or module {item!r} for {arch}; valid groups: {', '.join(GROUP_NAMES)}, "
                f"bn, regex:PATTERN, or module paths with parameters such as {', '.join(top_modules(arch))}"
            )
    if not prefixes and not chosen:
        raise InputError(f"--layers is empty; valid groups: {', '.join(GROUP_NAMES)}")
    return [n for n in names if n in chosen or any(matches(n, p) for p in prefixes)]


def block_names(model: nn.Module, arch: str) -> list:
    """Parameter names of each block (resolution stage) of `arch`, shallow to deep: a list of name lists."""
    names = [name for name, _ in model.named_parameters()]
    return [[n for n in names if any(matches(n, p) for p in block)] for block in blocks(arch)]


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
        n = sum(p.numel() for name, p in params.items() if any(matches(name, q) for q in prefixes))
        rows.append((group, ", ".join(prefixes), n))
    rows.append(("bn", "BatchNorm affine parameters", sum(params[n].numel() for n in _bn_parameters(model))))
    for name, module in model.named_children():
        n = sum(p.numel() for p in module.parameters())
        if n:
            rows.append(("module", name, n))
    return rows


def blocks_table(arch: str) -> list:
    """Rows (block number 1.., modules, n_params): the stages gradual unfreezing adds, shallow to deep."""
    model = build_model(arch)
    params = dict(model.named_parameters())
    return [(i + 1, ", ".join(block), sum(params[n].numel() for n in names))
            for i, (block, names) in enumerate(zip(blocks(arch), block_names(model, arch)))]


def selection_table(arch: str, spec: str) -> list:
    """Rows (parameter name, shape, n params) that the layer spec `spec` makes trainable in `arch`."""
    model = build_model(arch)
    params = dict(model.named_parameters())
    return [(name, tuple(params[name].shape), params[name].numel()) for name in trainable_names(model, arch, spec)]


def format_layers_table(rows, first: str = "group") -> str:
    """Plain-text table of `layers_table` or `blocks_table` rows."""
    lines = [f"{first:<12} {'params':>11}  modules"]
    for group, modules, n in rows:
        lines.append(f"{group!s:<12} {n:>11,}  {modules}")
    return "\n".join(lines)
