"""Layer selection: which parameters a spec names (groups, blocks, regex, module lists), freezing, BN modes.

Groups, blocks and units come from the network's anatomy (`fewshot_da.models.anatomy.describe`): declared by our
model classes as module-path prefixes (a parameter belongs to a group when its name equals a prefix or starts with
prefix + "."; for the papers' sets this selects exactly what their substring match on `named_parameters()` did), or
traced for any other module. `bn` selects every norm layer's affine parameters (BatchNorm in our nets; Karani et al.
2018's BN-only fine-tuning). Layers a forward pass never calls are never selected.
"""
import re

from torch import nn

from ..errors import InputError
from ..models import GROUP_NAMES, build_model, describe
from ..models.anatomy import matches, norm_types, running_stat_norms

BN_STATS = ("update", "freeze")
SPECIAL_SPECS = ("bn",)


def trainable_names(model: nn.Module, arch: str, spec: str, *, anatomy=None) -> list:
    """Names of the parameters of `model` that `spec` selects, in model order.

    spec: a group (first|last|all|contracting|expanding), `bn` (norm affine parameters only),
    `regex:PATTERN` (re.search on parameter names), or a comma list of groups and module paths (e.g.
    `init_path.0,out_path`). `arch` only names the network in messages (its type name when empty); `anatomy`
    defaults to `describe(model)`. Raises InputError (one line) when a name is unknown or selects nothing.
    """
    anatomy = anatomy or describe(model)
    label = arch or type(model).__name__
    unused = set(anatomy.unused)
    names = [name for name, _ in model.named_parameters() if name not in unused]
    spec = spec.strip()
    if spec.startswith("regex:"):
        try:
            pattern = re.compile(spec[len("regex:"):])
        except re.error as exc:
            raise InputError(f"--layers {spec!r}: invalid regular expression ({exc})") from None
        selected = [n for n in names if pattern.search(n)]
        if not selected:
            raise InputError(f"--layers {spec!r} matches no parameter of {label}")
        return selected
    module_names = {name for name, _ in model.named_modules() if name}
    prefixes, chosen = [], set()
    for item in filter(None, (s.strip() for s in spec.split(","))):
        if item in GROUP_NAMES:
            chosen.update(anatomy.groups[item])
        elif item == "bn":
            chosen.update(anatomy.groups["norm"])
        elif item in module_names and any(matches(n, item) for n in names):
            prefixes.append(item)
        else:
            raise InputError(
                f"--layers: unknown group or module {item!r} for {label}; valid groups: {', '.join(GROUP_NAMES)}, "
                f"bn, regex:PATTERN, or module paths with parameters such as "
                f"{', '.join(anatomy.group_modules['all'])}"
            )
    if not prefixes and not chosen:
        raise InputError(f"--layers is empty; valid groups: {', '.join(GROUP_NAMES)}")
    return [n for n in names if n in chosen or any(matches(n, p) for p in prefixes)]


def block_names(model: nn.Module, arch: str = "", *, anatomy=None) -> list:
    """Parameter names of each block (resolution stage) of `model`, shallow to deep: a list of name lists."""
    return [list(block) for block in (anatomy or describe(model)).blocks]


def freeze(model: nn.Module, trainable, bn_stats: str = "update") -> list:
    """Set requires_grad True for the parameters named in `trainable` and False for all others.

    bn_stats: "update" (reference behaviour: every BatchNorm keeps updating its running statistics during
    training, frozen or not) or "freeze" (BatchNorms whose parameters are all frozen run in eval mode; applied by
    `set_train_mode`, which `fit` calls every epoch). Returns the sorted list of frozen parameter names.
    "freeze" on a model whose norm layers keep no running statistics is a one-line InputError (it would do nothing).
    """
    check_bn_stats(bn_stats)
    if bn_stats == "freeze" and not running_stat_norms(model):
        raise InputError(f"--bn-stats freeze does not apply: {no_running_stats(model)}")
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


def no_running_stats(model: nn.Module) -> str:
    """Why running-statistics options do nothing for `model`, in words naming its norm layer types."""
    types = norm_types(model)
    if not types:
        return f"{type(model).__name__} has no norm layer"
    return f"the norm layers of {type(model).__name__} ({', '.join(types)}) keep no running statistics"


def frozen_batchnorms(model: nn.Module) -> list:
    """Names of the norm modules with running statistics (BatchNorm) whose affine parameters are all frozen."""
    return [name for name, m in running_stat_norms(model)
            if all(not p.requires_grad for p in m.parameters(recurse=False))]


def set_train_mode(model: nn.Module, bn_stats: str = "update") -> nn.Module:
    """model.train(); with bn_stats="freeze" the fully frozen BatchNorms go back to eval (running stats fixed)."""
    check_bn_stats(bn_stats)
    model.train()
    if bn_stats == "freeze":
        modules = dict(model.named_modules())
        for name in frozen_batchnorms(model):
            modules[name].eval()
    return model


def model_layers_table(model: nn.Module, anatomy=None) -> list:
    """Rows (group, modules, n_params) for every named group of `model`, the norm (`bn`) parameters, the layers
    its forward never calls (`unused`, traced nets only), then one row per top-level module with parameters."""
    anatomy = anatomy or describe(model)
    rows = [(g, ", ".join(anatomy.group_modules[g]), anatomy.count(anatomy.groups[g])) for g in GROUP_NAMES]
    batchnorms = {type(m).__name__ for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}
    what = "BatchNorm" if set(anatomy.norm_types) <= batchnorms else f"norm ({', '.join(anatomy.norm_types)})"
    rows.append(("bn", f"{what} affine parameters", anatomy.count(anatomy.groups["norm"])))
    if anatomy.unused:
        rows.append(("unused", ", ".join(anatomy.unused_modules), anatomy.count(anatomy.unused)))
    params = list(anatomy.sizes)
    for name, _ in model.named_children():  # counted as named_parameters() names them (a shared module once)
        n = anatomy.count(p for p in params if matches(p, name))
        if n:
            rows.append(("module", name, n))
    return rows


def model_blocks_table(model: nn.Module, anatomy=None) -> list:
    """Rows (block number 1.., modules, n_params): the stages gradual unfreezing adds, shallow to deep."""
    anatomy = anatomy or describe(model)
    return [(i + 1, ", ".join(modules), anatomy.count(names))
            for i, (modules, names) in enumerate(zip(anatomy.block_modules, anatomy.blocks))]


def model_selection_table(model: nn.Module, spec: str, label: str = "", anatomy=None) -> list:
    """Rows (parameter name, shape, n params) that the layer spec `spec` makes trainable in `model`."""
    params = dict(model.named_parameters())
    return [(name, tuple(params[name].shape), params[name].numel())
            for name in trainable_names(model, label, spec, anatomy=anatomy)]


def units_rows(anatomy) -> list:
    """Rows {index, name, modules, n_params} of the anatomy's decision units, for `layers --units`."""
    return [{"index": u.index, "name": u.name, "modules": ",".join(u.modules), "n_params": u.n_params}
            for u in anatomy.units]


def layers_table(arch: str) -> list:
    """`model_layers_table` of a fresh `arch` U-Net."""
    return model_layers_table(build_model(arch))


def blocks_table(arch: str) -> list:
    """`model_blocks_table` of a fresh `arch` U-Net."""
    return model_blocks_table(build_model(arch))


def selection_table(arch: str, spec: str) -> list:
    """`model_selection_table` of a fresh `arch` U-Net."""
    return model_selection_table(build_model(arch), spec, arch)


def format_layers_table(rows, first: str = "group") -> str:
    """Plain-text table of `layers_table` or `blocks_table` rows."""
    lines = [f"{first:<12} {'params':>11}  modules"]
    for group, modules, n in rows:
        lines.append(f"{group!s:<12} {n:>11,}  {modules}")
    return "\n".join(lines)
