"""One description of a network: layer groups, blocks, decision units, pad multiple and channels (`describe`).

Our four U-Nets declare theirs as class attributes (`PAD_MULTIPLE`; `GROUPS` and `BLOCKS` as module-path prefixes;
decision units by the Sequential rule of `decision_units`). Any other `torch.nn.Module` is described from one traced
forward pass: hooks on its parametrised layers record their execution order and output resolution (`_trace`).
Parameters are always named and counted as `named_parameters()` names them (a module registered under two names
counts once, under its first name), never by `state_dict()` keys.
"""
from __future__ import annotations

import math
import weakref
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn

from ..errors import InputError

GROUP_NAMES = ("first", "last", "all", "contracting", "expanding")
UNIT_MAPS = ("reference", "own")
_CONVS = (nn.Conv2d, nn.ConvTranspose2d)  # the declared nets' unit rule (2D nets only)
_ANCHORS = (nn.modules.conv._ConvNd, nn.Linear)  # traced units: one per conv (or linear) layer
_NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


class Unit(NamedTuple):
    """One decision: its policy index, its name (the path of its conv module), the module paths it switches (in the
    fine-tuned copy, e.g. ("shortcut0", "out_path.4")), their parameter count, and their parameter names."""
    index: int
    name: str
    modules: tuple
    n_params: int
    params: tuple = ()


@dataclass(frozen=True)
class Anatomy:
    """What the package needs to know about a network, computed once from the module (`describe`).

    groups: {first, last, all, contracting, expanding, norm: parameter names in named_parameters() order};
    group_modules: the same groups as module paths (declared prefixes, or the fewest module paths whose parameters
    are exactly the group, in execution order); blocks / block_modules: the stages gradual unfreezing adds, shallow
    to deep; units: the decision units (SpotTUnet, the shift map) in order; pad_multiple: input H, W (, D) must be a
    multiple of it; unused / unused_modules: parametrised layers the forward never calls (never trained, in no
    group); norm_types: class names of the norm layers; has_running_stats: some norm layer keeps running
    statistics (AdaBN and --bn-stats freeze act on those only); sizes: {parameter name: number of elements}.
    """
    kind: str  # "declared" (the class says) or "traced" (one forward pass)
    groups: dict
    group_modules: dict
    blocks: tuple
    block_modules: tuple
    units: tuple
    pad_multiple: int
    in_channels: int
    out_channels: int
    unused: tuple
    unused_modules: tuple
    norm_types: tuple
    has_running_stats: bool
    sizes: dict

    def count(self, names) -> int:
        """Number of parameter elements in `names` (parameter names)."""
        return sum(self.sizes[n] for n in names)


def matches(name: str, prefix: str) -> bool:
    """True when parameter/module `name` is `prefix` or lies below it."""
    return name == prefix or name.startswith(prefix + ".")


def running_stat_norms(model: nn.Module) -> list:
    """(path, module) of the norm layers that keep running statistics (BatchNorm; InstanceNorm with
    track_running_stats=True)."""
    return [(n, m) for n, m in model.named_modules()
            if isinstance(m, nn.modules.batchnorm._NormBase) and m.running_mean is not None]


def norm_types(model: nn.Module) -> tuple:
    """Class names of the norm layers of `model`, in first-registered order."""
    return tuple(dict.fromkeys(type(m).__name__ for m in model.modules() if isinstance(m, _NORMS)))


def is_declared(model: nn.Module) -> bool:
    """True when the class declares its anatomy (PAD_MULTIPLE, GROUPS, BLOCKS), as our four U-Nets do."""
    return all(hasattr(type(model), a) for a in ("PAD_MULTIPLE", "GROUPS", "BLOCKS"))


def describe(module: nn.Module, *, in_channels: int | None = None, example_size: int | None = None,
             unit_map: str = "reference") -> Anatomy:
    """The anatomy of `module`: declared by its class (our U-Nets) or traced from one forward pass (any other).

    Tracing runs `module` once in eval mode without gradients on a seeded (1, in_channels, S, S[, S]) input with
    S = example_size (default 128 for 2D, 64 for 3D) and restores every submodule's mode; it draws nothing from
    the global RNG. in_channels: default, the first conv in_channels value a forward pass accepts. unit_map applies
    to declared nets only (`decision_units`). Raises InputError (one line) when no forward pass succeeds.
    """
    if unit_map not in UNIT_MAPS:
        raise InputError(f"--unit-map {unit_map!r}: valid values are {', '.join(UNIT_MAPS)}")
    if is_declared(module):
        return _declared(module, unit_map)
    return _traced(module, in_channels=in_channels, example_size=example_size)


# --- declared: our U-Nets --------------------------------------------------------------------------------------------
def _n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _has_conv(module: nn.Module) -> bool:
    return any(isinstance(m, _CONVS) for m in module.modules())


def decision_units(model: nn.Module, arch: str = "", unit_map: str = "reference") -> list:
    """The decision units of a declared U-Net (built by `build_model(arch)`), as a list of `Unit` by index.

    The rule is in `fewshot_da.models.spottune`'s docstring. `dsa`, reference map: 32 units with §6's order and
    parameter counts.
    """
    if unit_map not in UNIT_MAPS:
        raise InputError(f"--unit-map {unit_map!r}: valid values are {', '.join(UNIT_MAPS)}")
    modules = dict(model.named_modules())
    path, skips, trailing = [], [], []  # lists of module-path lists; trailing: (next unit position, paths)
    for top_name, top in model.named_children():
        if isinstance(top, nn.Sequential):
            pending = []
            for i, child in enumerate(top):
                if _n_params(child) == 0:
                    continue
                if _has_conv(child):
                    path.append([*pending, f"{top_name}.{i}"])
                    pending = []
                else:
                    pending.append(f"{top_name}.{i}")
            if pending:
                trailing.append((len(path), pending))
        elif _n_params(top) > 0:
            skips.append([top_name])
    groups = [list(g) for g in path + skips]
    names = [next(p for p in g if _has_conv(modules[p])) for g in groups]
    for position, paths in trailing:
        if unit_map == "reference" and position < len(groups):
            groups[position].extend(paths)
        else:
            groups.append(list(paths))
            names.append(paths[0])
    if not groups:
        raise InputError(f"architecture {arch or type(model).__name__} has no parametrised module to decide on")
    params = [n for n, _ in model.named_parameters()]
    return [Unit(i, name, tuple(g), sum(_n_params(modules[p]) for p in g),
                 tuple(n for n in params if any(matches(n, p) for p in g)))
            for i, (name, g) in enumerate(zip(names, groups))]


def _declared(model: nn.Module, unit_map: str) -> Anatomy:
    cls = type(model)
    named = list(model.named_parameters())
    params = [n for n, _ in named]

    def select(prefixes):
        return tuple(n for n in params if any(matches(n, p) for p in prefixes))

    group_modules = dict(cls.GROUPS)
    group_modules["all"] = tuple(dict.fromkeys(prefix for block in cls.BLOCKS for prefix in block))
    group_modules = {g: tuple(group_modules[g]) for g in GROUP_NAMES}
    groups = {g: select(prefixes) for g, prefixes in group_modules.items()}
    bns = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    groups["norm"] = tuple(f"{n}.{p}" for n, m in bns for p, _ in m.named_parameters(recurse=False))
    group_modules["norm"] = tuple(n for n, m in bns if _n_params(m))
    modules = dict(model.named_modules())
    convs = [m for n in group_modules["first"] for m in modules[n].modules() if isinstance(m, _CONVS)]
    heads = [m for n in group_modules["last"] for m in modules[n].modules() if isinstance(m, _CONVS)]
    return Anatomy(
        kind="declared", groups=groups, group_modules=group_modules,
        blocks=tuple(select(block) for block in cls.BLOCKS), block_modules=tuple(tuple(b) for b in cls.BLOCKS),
        units=tuple(decision_units(model, "", unit_map)), pad_multiple=int(cls.PAD_MULTIPLE),
        in_channels=convs[0].in_channels, out_channels=heads[-1].out_channels, unused=(), unused_modules=(),
        norm_types=norm_types(model), has_running_stats=bool(running_stat_norms(model)),
        sizes={n: p.numel() for n, p in named})


# --- traced: any other module ----------------------------------------------------------------------------------------
class _Call(NamedTuple):
    """A parametrised layer's first call: its output resolution (spatial shape) and the layer whose output it took."""
    resolution: tuple | None
    source: str | None


def _tensors(value) -> list:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _tensors(v)]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _tensors(v)]
    return []


def _run_traced(module: nn.Module, layers: dict, x: torch.Tensor):
    """(output, {layer: _Call} in first-call order) of one forward pass of `module` on `x`."""
    calls, produced = {}, {}  # produced: id(tensor) -> (weak reference, layer name)

    def hook(name):
        def record(_module, args, output):
            if name in calls:
                return
            inputs, outputs = _tensors(args), _tensors(output)
            source = None
            if inputs:
                entry = produced.get(id(inputs[0]))
                if entry is not None and entry[0]() is inputs[0]:
                    source = entry[1]
            out = outputs[0] if outputs else None
            calls[name] = _Call(tuple(out.shape[2:]) if out is not None and out.dim() >= 3 else None, source)
            if out is not None:
                produced[id(out)] = (weakref.ref(out), name)
        return record

    handles = [m.register_forward_hook(hook(name)) for name, m in layers.items()]
    try:
        output = module(x)
    finally:
        for handle in handles:
            handle.remove()
    return output, calls


def _trace(module: nn.Module, *, in_channels, example_size):
    """(input spatial shape, input channels, prediction tensor, {layer: _Call}) of one eval-mode, no-grad forward
    pass."""
    convs = [m for m in module.modules() if isinstance(m, nn.modules.conv._ConvNd)]
    if not convs:
        raise InputError(f"cannot describe {type(module).__name__}: it has no convolution layer")
    ndim = convs[0].weight.dim() - 2
    size = int(example_size) if example_size is not None else (128 if ndim <= 2 else 64)
    if size < 1:
        raise InputError(f"--example-size must be >= 1, got {size}")
    if in_channels is not None and int(in_channels) < 1:
        raise InputError(f"--in-channels must be >= 1, got {in_channels}")
    candidates = [int(in_channels)] if in_channels is not None else sorted({c.in_channels for c in convs})
    layers = {n: m for n, m in module.named_modules() if next(m.parameters(recurse=False), None) is not None}
    first_param = next(module.parameters())
    states = [(m, m.training) for m in module.modules()]
    module.eval()
    best = (-1, "")  # (layers run before the failure, message): the candidate that got furthest
    try:
        with torch.no_grad():
            for channels in candidates:
                generator = torch.Generator().manual_seed(0)
                x = torch.randn((1, channels, *[size] * ndim), generator=generator)
                x = x.to(device=first_param.device, dtype=first_param.dtype)
                calls = {}
                try:
                    output, calls = _run_traced(module, layers, x)
                except Exception as exc:  # a wrong channel count or size; the furthest failure is reported
                    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                    best = max(best, (len(calls), text), key=lambda b: b[0])
                    continue
                outputs = [t for t in _tensors(output) if t.dim() == ndim + 2]
                if not outputs:
                    raise InputError(f"cannot describe {type(module).__name__}: its forward returns no "
                                     f"{ndim}D feature map")
                # deep supervision returns several maps: the full-resolution one is the prediction
                prediction = max(outputs, key=lambda t: math.prod(t.shape[2:]))
                return (size,) * ndim, channels, prediction, calls
    finally:
        for m, training in states:
            m.training = training
    raise InputError(f"cannot describe {type(module).__name__}: a forward pass on a {ndim}D input of size {size} "
                     f"with {' or '.join(map(str, candidates))} channels failed ({best[1]}); "
                     "pass in_channels / example_size (--in-channels / --example-size)")


def _depth_shared(a: str, b: str) -> int:
    """Number of leading module-path components `a` and `b` share (depth of their nearest common module)."""
    n = 0
    for x, y in zip(a.split("."), b.split(".")):
        if x != y:
            break
        n += 1
    return n


def _units_of(order: list, layers: dict, calls: dict) -> list:
    """[(anchor or layer name, [layer names])] in execution order: each conv (or linear) layer with the other
    parametrised layers (norms, PReLU) that belong to it.

    A non-conv layer joins the conv run just before or just after it, whichever shares the deeper enclosing module
    (BN -> ReLU -> conv inside one pre-activation block joins that conv; conv -> BN -> ReLU joins the conv before);
    on a tie, the conv before it when its input is that conv's unit's output, else the conv after it."""
    anchors = [i for i, n in enumerate(order) if isinstance(layers[n], _ANCHORS)]
    owner, units = {}, {}
    for i, name in enumerate(order):
        if i in anchors:
            owner[name] = name
            units[name] = [name]
    for i, name in enumerate(order):
        if name in owner:
            continue
        before = next((order[j] for j in reversed(anchors) if j < i), None)
        after = next((order[j] for j in anchors if j > i), None)
        if before is None and after is None:
            choice = None
        elif before is None or after is None:
            choice = before or after
        else:
            d_before, d_after = _depth_shared(name, before), _depth_shared(name, after)
            if d_before != d_after:
                choice = before if d_before > d_after else after
            else:
                source = calls[name].source
                choice = before if source is not None and owner.get(source) == before else after
        if choice is None:
            owner[name] = name
            units[name] = [name]
        else:
            owner[name] = choice
            units[choice].append(name)
    position = {n: i for i, n in enumerate(order)}
    return sorted(((k, sorted(v, key=position.get)) for k, v in units.items()), key=lambda kv: position[kv[0]])


def _cover(selected, params: list, module_names: list, rank: dict) -> tuple:
    """The fewest module paths (below the root) whose parameters are exactly `selected`, ordered by `rank` (the
    first execution index of a parameter under the path)."""
    selected = set(selected)
    chosen = []
    for path in module_names:
        if not path or any(matches(path, c) for c in chosen):
            continue
        under = [n for n in params if n.startswith(path + ".")]
        if under and all(n in selected for n in under):
            chosen.append(path)
    leftovers = [n for n in params if n in selected and not any(matches(n, c) for c in chosen)]
    chosen += leftovers  # parameters registered on the root module itself
    first = {c: min(rank.get(n, math.inf) for n in params if matches(n, c)) for c in chosen}
    return tuple(sorted(chosen, key=lambda c: first[c]))


def _traced(module: nn.Module, *, in_channels, example_size) -> Anatomy:
    in_size, channels, prediction, calls = _trace(module, in_channels=in_channels, example_size=example_size)
    named = list(module.named_parameters())
    params = [n for n, _ in named]
    param_name = {id(p): n for n, p in named}
    layers = {n: m for n, m in module.named_modules() if next(m.parameters(recurse=False), None) is not None}
    order = list(calls)
    # a layer's parameters, as named_parameters() names them; a parameter shared by two layers goes to the first
    owned, layer_params = set(), {}
    for name in order + [n for n in layers if n not in calls]:
        mine = [param_name[id(p)] for p in layers[name].parameters(recurse=False) if param_name[id(p)] not in owned]
        owned.update(mine)
        layer_params[name] = mine
    resolution, previous = {}, in_size
    for name in order:
        previous = resolution[name] = calls[name].resolution or previous
    units = _units_of(order, layers, calls)
    unit_res = [resolution[anchor] for anchor, _ in units]
    unit_params = [[p for layer in members for p in layer_params[layer]] for _, members in units]
    out_res = tuple(prediction.shape[2:])
    lowest = min(unit_res, key=math.prod)

    def names_of(indices):
        chosen = {p for i in indices for p in unit_params[i]}
        return tuple(n for n in params if n in chosen)

    n = len(units)
    lead = next((i for i, r in enumerate(unit_res) if r != in_size), n)
    # a strided first conv (or no resolution change at all): "first" is the first conv's unit
    first = range(lead) if 0 < lead < n else range(1)
    back = n
    while back > 0 and unit_res[back - 1] == out_res:
        back -= 1
    # the trailing layers after the final return to output resolution, not the returning up-conv itself; the
    # head alone when nothing follows that return (or the resolution never changes)
    last = range(back + 1, n) if 0 < back < n - 1 else range(n - 1, n)
    bottom = next(i for i, r in enumerate(unit_res) if r == lowest)
    runs = []
    for i, r in enumerate(unit_res):
        if runs and unit_res[runs[-1][-1]] == r:
            runs[-1].append(i)
        else:
            runs.append([i])
    used = {p for layer in order for p in layer_params[layer]}
    groups = {"first": names_of(first), "last": names_of(last), "all": tuple(n for n in params if n in used),
              "contracting": names_of(range(bottom + 1)), "expanding": names_of(range(bottom + 1, n))}
    norm_layers = [name for name in order if isinstance(layers[name], _NORMS)]
    groups["norm"] = tuple(n for n in params if any(n in layer_params[layer] for layer in norm_layers))
    rank = {p: i for i, ps in enumerate(unit_params) for p in ps}
    module_names = [name for name, _ in module.named_modules()]
    group_modules = {g: _cover(names, params, module_names, rank) for g, names in groups.items()}
    unused = tuple(n for n in params if n not in used)
    sizes = {n: p.numel() for n, p in named}
    return Anatomy(
        kind="traced", groups=groups, group_modules=group_modules,
        blocks=tuple(names_of(run) for run in runs),
        block_modules=tuple(_cover(names_of(run), params, module_names, rank) for run in runs),
        units=tuple(Unit(i, anchor, tuple(members), sum(sizes[p] for p in unit_params[i]), names_of([i]))
                    for i, (anchor, members) in enumerate(units)),
        pad_multiple=math.lcm(*(max(1, s // r) for s, r in zip(in_size, lowest))),
        in_channels=channels, out_channels=int(prediction.shape[1]), unused=unused,
        unused_modules=_cover(unused, params, module_names, {}), norm_types=norm_types(module),
        has_running_stats=bool(running_stat_norms(module)), sizes=sizes)
