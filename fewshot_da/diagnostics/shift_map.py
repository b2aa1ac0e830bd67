"""Label-free shift map: how far a target domain's activation statistics lie from the source's, per unit.

"bn" (nets with BatchNorm): each BN layer's running statistics (the source's, accumulated in training) against
the per-channel mean and variance of that BN's *input* on target slices. The model runs in eval mode, padded
and batched as `fewshot_da.predict` runs it, so every layer sees what the deployed source model feeds it.
"features" (nets without BN, or on request): the input statistics of every conv layer on target slices against
the same statistics on a seeded sample of the source run's own training slices.

Per channel both sides are taken as Gaussians and compared by `gaussian_divergence`; a layer scores the mean
over its channels, a unit the mean over the channels of all its layers. Only images are read: no mask is
opened. shift_map.csv has one row per unit and per layer and target domain: `score` (that mean), `n_channels`,
and its two parts, `mean_shift_sd` (mean |mean_t - mean_s| / sd_s) and `log_sd_ratio` (mean log(sd_t / sd_s)).
"""
from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..atomic import write_csv_atomic
from ..errors import InputError
from ..figures import heatmap
from ..models.anatomy import describe, is_declared

DIVERGENCES = ("w2", "skl")
METHODS = ("auto", "bn", "features")
FORWARDS = ("source", "adabn")
ADABN_BATCH = 16  # slices per batch whose statistics an AdaBN forward normalises with
CSV_COLUMNS = ("level", "name", "unit", "domain", "score", "n_channels", "mean_shift_sd", "log_sd_ratio")


def gaussian_divergence(mean_s, var_s, mean_t, var_t, *, kind: str = "w2", eps: float = 1e-5) -> np.ndarray:
    """Per-channel distance of the target N(mean_t, var_t) from the source N(mean_s, var_s); 0 iff equal.

    w2: sqrt((mean_t - mean_s)^2 + (sd_t - sd_s)^2) / sd_s with sd = sqrt(var + eps): the Wasserstein-2
    distance of the two Gaussians in source standard deviations, i.e. after the (x - mean_s) / sd_s a BN layer
    applies. Scale-free, linear in the shift, finite when a channel dies on either side; AdaBN's re-estimation
    sets it to 0.
    skl: symmetric Kullback-Leibler, (KL(s||t) + KL(t||s)) / 2 in nats; grows like 1/var for a collapsing
    channel.
    """
    if kind not in DIVERGENCES:
        raise InputError(f"--divergence {kind!r}: choose {' or '.join(DIVERGENCES)}")
    mean_s, mean_t = np.asarray(mean_s, np.float64), np.asarray(mean_t, np.float64)
    var_s, var_t = np.asarray(var_s, np.float64) + eps, np.asarray(var_t, np.float64) + eps
    if kind == "w2":
        return np.sqrt((mean_t - mean_s) ** 2 + (np.sqrt(var_t) - np.sqrt(var_s)) ** 2) / np.sqrt(var_s)
    delta2 = (mean_t - mean_s) ** 2
    return ((var_s + delta2) / var_t + (var_t + delta2) / var_s) / 4.0 - 0.5


class _Moments:
    """Per-channel count, mean and sum of squared deviations of (B, C, H, W) batches, merged in float64
    (Chan, Golub and LeVeque's pairwise update)."""

    def __init__(self):
        self.n, self.mean, self.m2 = 0, None, None

    def add(self, x: torch.Tensor) -> None:
        var, mean = torch.var_mean(x.float(), dim=(0, 2, 3), unbiased=False)
        n = x.numel() // x.shape[1]
        mean, m2 = mean.double().cpu().numpy(), var.double().cpu().numpy() * n
        if self.n == 0:
            self.n, self.mean, self.m2 = n, mean, m2
            return
        total = self.n + n
        delta = mean - self.mean
        self.mean = self.mean + delta * n / total
        self.m2 = self.m2 + m2 + delta**2 * self.n * n / total
        self.n = total

    @property
    def var(self) -> np.ndarray:
        return self.m2 / self.n


def probed_layers(model: nn.Module, method: str) -> tuple:
    """(method, {module path: module}) whose inputs are measured: BN layers with running statistics ("bn") or
    every conv and transposed conv ("features"); "auto" resolves to bn when the net has such BN layers, else
    features."""
    if method not in METHODS:
        raise InputError(f"--method {method!r}: choose from {', '.join(METHODS)}")
    bns = {n: m for n, m in model.named_modules()
           if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None}
    if method == "bn" and not bns:
        raise InputError("--method bn: the model has no BatchNorm layer with running statistics; "
                         "use --method features")
    if method == "bn" or (method == "auto" and bns):
        return "bn", bns
    convs = (nn.Conv2d, nn.ConvTranspose2d)
    return "features", {n: m for n, m in model.named_modules() if isinstance(m, convs)}


def activation_stats(model: nn.Module, layers: dict, slice_stacks: Iterable, *, pad_multiple: int,
                     batch_size: int | None = None) -> dict:
    """{layer name: (mean, var, n_values)} per channel of each layer's input over all `slice_stacks` ((S, H,
    W) arrays), forwarded with `fewshot_da.predict.predict_volume` (eval mode, each slice padded to
    `pad_multiple` with its min)."""
    from ..predict import predict_volume

    moments = {name: _Moments() for name in layers}
    handles = [module.register_forward_pre_hook(lambda _m, args, acc=moments[name]: acc.add(args[0]))
               for name, module in layers.items()]
    try:
        for stack in slice_stacks:
            predict_volume(model, stack, pad_multiple=pad_multiple, batch_size=batch_size)
    finally:
        for handle in handles:
            handle.remove()
    if any(m.n == 0 for m in moments.values()):
        raise InputError("no slice reached the probed layers (empty target sample)")
    return {name: (m.mean, m.var, m.n) for name, m in moments.items()}


def adabn_copy(model: nn.Module) -> nn.Module:
    """A copy of `model` whose BatchNorm layers normalise with each forward batch's own statistics (AdaBN,
    REFERENCE.md §11, per batch) in eval mode too; the original keeps its running statistics."""
    import copy

    twin = copy.deepcopy(model)
    for module in twin.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.track_running_stats, module.running_mean, module.running_var = False, None, None
            module.num_batches_tracked = None
    return twin


def module_units(model: nn.Module) -> list:
    """Default units as [(name, [module prefixes])]: a built-in U-Net's top-level modules in registration order;
    for any other network, the decision units of its traced anatomy (each conv with its norm), in execution order."""
    if not is_declared(model):
        return [(u.name, list(u.modules)) for u in describe(model).units]
    return [(name, [name]) for name, child in model.named_children() if any(True for _ in child.modules())]


def _in_unit(layer: str, prefixes: Sequence[str]) -> bool:
    return any(layer == p or layer.startswith(p + ".") for p in prefixes)


def aggregate_units(per_channel: dict, units: Sequence) -> list:
    """[(unit, mean over the channels of its layers, n_channels)] for `units` = [(name, module prefixes)].

    `per_channel` maps a layer path to its per-channel scores; a layer belongs to every unit one of whose
    prefixes is the layer path or a parent of it. A unit holding no probed layer scores NaN with 0 channels.
    """
    rows = []
    for name, prefixes in units:
        prefixes = [prefixes] if isinstance(prefixes, str) else list(prefixes)
        values = [np.asarray(v, np.float64) for layer, v in per_channel.items() if _in_unit(layer, prefixes)]
        pooled = np.concatenate(values) if values else np.empty(0)
        rows.append((name, float(pooled.mean()) if pooled.size else float("nan"), int(pooled.size)))
    return rows


def read_units(path) -> list:
    """Unit definition from YAML/JSON: a mapping {unit: [module prefixes]} or a list of [unit, [prefixes]]."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: unit definition not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise InputError(f"{path}: not YAML/JSON ({str(exc).splitlines()[0]})") from None
    items = list(data.items()) if isinstance(data, dict) else data
    if not items or not all(isinstance(i, (list, tuple)) and len(i) == 2 for i in items):
        raise InputError(f"{path}: expected {{unit: [module prefixes]}} or a list of [unit, [prefixes]]")
    return [(str(name), [prefixes] if isinstance(prefixes, str) else [str(p) for p in prefixes])
            for name, prefixes in items]


def target_images(records, options, cache_dir, *, progress: bool = False) -> list:
    """Preprocessed images of `records` with the source run's options, cached by the data layer; their masks are
    never opened (the records are passed on without them)."""
    import dataclasses

    from ..data.cache import preprocess_manifest

    images_only = [dataclasses.replace(r, mask="") for r in records]
    return [v.image for v in preprocess_manifest(images_only, cache_dir, options, progress=progress)]


def _sample_ids(ids: Sequence[str], max_scans: int | None, rng: np.random.Generator) -> list:
    ids = list(ids)
    if max_scans is None or len(ids) <= max_scans:
        return ids
    keep = set(rng.choice(len(ids), size=max_scans, replace=False).tolist())
    return [i for n, i in enumerate(ids) if n in keep]


def sample_slices(images: Sequence[np.ndarray], max_slices: int | None, rng: np.random.Generator) -> list:
    """[(S_i, H, W) stacks]: `max_slices` slices drawn uniformly without replacement over all slices of
    `images` (all of them when None or fewer), in scan and slice order."""
    counts = [int(im.shape[0]) for im in images]
    total = sum(counts)
    chosen = np.arange(total) if max_slices is None or total <= max_slices else \
        np.sort(rng.choice(total, size=max_slices, replace=False))
    starts = np.cumsum([0] + counts)
    stacks = []
    for i, image in enumerate(images):
        local = chosen[(chosen >= starts[i]) & (chosen < starts[i + 1])] - starts[i]
        if local.size:
            stacks.append(np.asarray(image[local], dtype=np.float32))
    return stacks


def _read_spec(run_dir) -> dict:
    """What a run folder is (run.yaml's spec); one-line error when `run_dir` is not a run."""
    from ..experiments.run_folder import read_run

    return read_run(run_dir).get("spec") or {}


def _check_checkpoint(run_dir: Path) -> None:
    """One line naming checkpoint.pt when it is not one `fewshot-da train` / `adapt` wrote (a plain dict with
    the weights under `model` and the training config under `config`)."""
    from ..checkpoint import load_checkpoint

    path = run_dir / "checkpoint.pt"
    state = load_checkpoint(path)
    missing = [k for k in ("model", "config") if not isinstance(state, dict) or not isinstance(state.get(k), dict)]
    if missing:
        held = ", ".join(repr(k) for k in list(state)[:4]) if isinstance(state, dict) else type(state).__name__
        raise InputError(f"{path}: not a fewshot-da checkpoint (no {' or '.join(missing)} entry; holds {held or 'nothing'}); "
                         "--model takes the --out folder of fewshot-da train or adapt")


def load_source_model(run_dir) -> tuple:
    """(model in eval mode, run spec) of a train or adapt run folder, weights from its checkpoint.pt."""
    from ..experiments.stages import run_model

    _check_checkpoint(Path(run_dir))
    net, _ = run_model(run_dir)
    return net.eval(), _read_spec(run_dir)


def check_units(units: Sequence, model: nn.Module, where: str = "--units") -> list:
    """`units` as [(name, [prefixes])]; a one-line error naming a prefix that is no module of `model` (it would
    score NaN) and the model's top-level modules."""
    units = [(name, [p] if isinstance(p, str) else list(p)) for name, p in units]
    modules = {name for name, _ in model.named_modules() if name}
    for name, prefixes in units:
        for prefix in prefixes:
            if prefix not in modules:
                top = ", ".join(child for child, _ in model.named_children())
                raise InputError(f"{where}: unit {name!r}: prefix {prefix!r} names no module of the model "
                                 f"(its top-level modules: {top})")
    return units


def _check_counts(**counts) -> None:
    for option, value in counts.items():
        if value is not None and (isinstance(value, bool) or int(value) != value or value < 1):
            flag = "--" + option.replace("_", "-")
            raise InputError(f"{flag} {value!r}: must be a whole number >= 1"
                             + (" (or 0 on the command line: all)" if option != "batch_size" else ""))


def _source_train_ids(run_dir: Path, run: dict) -> list:
    """The training ids of the run that made the source statistics (an adapt run's parent chain, else its
    own)."""
    while not run.get("train_ids") and run.get("parent"):
        run_dir = Path(run["parent"])
        run = _read_spec(run_dir)
    if not run.get("train_ids"):
        raise InputError(f"{run_dir}: run.yaml lists no train_ids; --method features needs the source "
                         "training scans")
    return list(run["train_ids"])


def _reference_stats(layers, method, forward_net, hooked, run_dir, run, *, pad_multiple, max_scans,
                     max_slices, seed, batch_size):
    """{layer: (mean, var, eps)} of the source: the BN running statistics of `layers`, or ("features") the
    `hooked` layers' input statistics of `forward_net` on a seeded sample of the run's own training slices."""
    if method == "bn":
        return {n: (m.running_mean.double().numpy(), m.running_var.double().numpy(), float(m.eps))
                for n, m in layers.items()}
    from ..experiments.stages import open_volumes

    rng = np.random.default_rng([seed, 1])
    ids = _sample_ids(_source_train_ids(run_dir, run), max_scans, rng)
    volumes = open_volumes(run["manifest"], ids, cache=run["cache"], preprocess=run["preprocess"],
                           progress=False)
    stats = activation_stats(forward_net, hooked, sample_slices([v.image for v in volumes], max_slices, rng),
                             pad_multiple=pad_multiple, batch_size=batch_size)
    # a variance floor relative to the layer's typical channel variance (dead channels get no infinite score)
    return {n: (mean, var, 1e-5 + 1e-3 * float(np.mean(var))) for n, (mean, var, _) in stats.items()}


def _target_records(manifest, domains: Sequence[str] | None) -> dict:
    from ..data.manifest import domain_counts, read_manifest

    records = read_manifest(manifest)
    if not records:
        raise InputError(f"{manifest}: the manifest lists no scans")
    present = domain_counts(records)
    chosen = list(dict.fromkeys(domains)) if domains else list(present)
    for domain in chosen:
        if domain not in present:
            raise InputError(f"--domain {domain!r} names no scan of {manifest} "
                             f"(domains: {', '.join(present)})")
    return {d: [r for r in records if r.domain == d] for d in chosen}


def shift_map(*, model, manifest, out, domains: Sequence[str] | None = None, method: str = "auto",
              divergence: str = "w2", forward: str = "source", units: Sequence | None = None,
              max_scans: int | None = 10, max_slices: int | None = 64, seed: int = 0,
              batch_size: int | None = None, cache=None,
              progress: bool = True, wait: bool = False, units_file=None) -> dict:
    """Score, per layer and unit, how far each target domain of `manifest` shifts the source run `model`'s
    activation statistics; no labels are read. Writes `out/shift_map.csv`, `out/shift_map.png`,
    `out/summary.json`.

    Per domain, `max_scans` scans (seeded) are preprocessed as the source run preprocessed its own (images
    only, cached in `cache`, default `out/cache`) and `max_slices` of their slices are forwarded (None: all).
    `forward`: "source" runs the model as deployed (a layer's score includes all shift passed on from the
    layers before it); "adabn" normalises every BN with the batch's own statistics (`adabn_copy`, batches of
    `batch_size`, default 16), so a layer scores the shift left after all earlier BNs were re-estimated on the
    target. `units`: [(unit, module prefixes)] (default: the top-level modules; `units_file` names their file in
    messages). `out` follows the run-folder protocol: a lock while it is written (another writer: a one-line
    error, or wait=True to wait), and run.yaml with an identity over these settings, the manifest's content and
    the source run, so the same call again returns the finished summary and another one into a finished
    folder is refused. Returns the summary. """
    from ..experiments.run_folder import RUN_FILE, identity_of, open_run, write_summary

    started = time.perf_counter()
    run_dir = Path(model)
    _read_spec(run_dir)  # a one-line error for a folder that is not a run, before the manifest is read
    if divergence not in DIVERGENCES:
        raise InputError(f"--divergence {divergence!r}: choose {' or '.join(DIVERGENCES)}")
    if forward not in FORWARDS:
        raise InputError(f"--forward {forward!r}: choose {' or '.join(FORWARDS)}")
    _check_counts(max_scans=max_scans, max_slices=max_slices, batch_size=batch_size)
    targets = _target_records(manifest, domains)
    net, run = load_source_model(run_dir)
    method, layers = probed_layers(net, method)
    units = module_units(net) if units is None else check_units(units, net, f"--units {units_file or ''}".strip())
    out = Path(out)
    spec = {"kind": "shift_map", "model": str(run_dir.resolve()), "manifest": str(Path(manifest).resolve()),
            "domains": list(targets), "method": method, "divergence": divergence, "forward": forward,
            "units": [[name, prefixes] for name, prefixes in units], "max_scans": max_scans,
            "max_slices": max_slices, "seed": seed, "batch_size": batch_size}
    identity = identity_of(spec, None, [manifest], parent=run_dir)
    unclaimed = not (out / RUN_FILE).is_file()  # a map written before shift-map kept run.yaml is made again
    with open_run(out, spec, identity, wait=wait) as done:
        if done is not None and not unclaimed:  # summary.json keeps sorted keys: back to domain and unit order
            for key in ("scores", "ranks", "domains"):
                done[key] = {d: done[key][d] for d in done["target_domains"]}
            for key in ("scores", "ranks"):
                done[key] = {d: {u: v[u] for u in done["units"]} for d, v in done[key].items()}
            return done
        summary = _shift_map(net, run, run_dir, manifest, out, targets, method, layers, units, divergence,
                             forward, max_scans, max_slices, seed, batch_size, cache, progress)
        summary["elapsed_s"] = round(time.perf_counter() - started, 3)
        write_summary(out, summary)
        return summary


def _shift_map(net, run, run_dir, manifest, out, targets, method, layers, units, divergence, forward, max_scans,
               max_slices, seed, batch_size, cache, progress) -> dict:
    """The shift map's rows, CSV and figure in `out`; returns the summary (written by the caller)."""
    from tqdm.auto import tqdm

    from ..data.preprocess import preprocess_options

    arch = run["arch"]
    forward_net = adabn_copy(net) if forward == "adabn" else net
    hooked = {name: dict(forward_net.named_modules())[name] for name in layers}
    if batch_size is None and forward == "adabn":
        batch_size = ADABN_BATCH
    common = {"pad_multiple": describe(net).pad_multiple, "batch_size": batch_size}
    reference = _reference_stats(layers, method, forward_net, hooked, run_dir, run, max_scans=max_scans,
                                 max_slices=max_slices, seed=seed, **common)
    options = preprocess_options(run["preprocess"])
    cache = Path(cache) if cache else out / "cache"
    rows, scores, sampled = [], {}, {}
    for n_domain, (domain, records) in enumerate(tqdm(targets.items(), desc="shift map", unit="domain",
                                                      disable=not progress)):
        rng = np.random.default_rng([seed, 2, n_domain])
        chosen = _sample_ids([r.id for r in records], max_scans, rng)
        by_id = {r.id: r for r in records}
        images = target_images([by_id[i] for i in chosen], options, cache)
        stacks = sample_slices(images, max_slices, rng)
        stats = activation_stats(forward_net, hooked, stacks, **common)
        per_channel, parts = {}, {}
        for name, (mean_t, var_t, _) in stats.items():
            mean_s, var_s, eps = reference[name]
            per_channel[name] = gaussian_divergence(mean_s, var_s, mean_t, var_t, kind=divergence, eps=eps)
            parts[name] = (np.abs(mean_t - mean_s) / np.sqrt(var_s + eps),
                           0.5 * np.log((var_t + eps) / (var_s + eps)))
        unit_rows = aggregate_units(per_channel, units)
        shifts = {k: v for k, v, _ in aggregate_units({n: p[0] for n, p in parts.items()}, units)}
        ratios = {k: v for k, v, _ in aggregate_units({n: p[1] for n, p in parts.items()}, units)}
        for unit, score, n_channels in unit_rows:
            rows.append({"level": "unit", "name": unit, "unit": unit, "domain": domain, "score": score,
                         "n_channels": n_channels, "mean_shift_sd": shifts[unit],
                         "log_sd_ratio": ratios[unit]})
        for name, values in per_channel.items():
            owner = next((u for u, prefixes in units if _in_unit(name, prefixes)), "")
            rows.append({"level": "layer", "name": name, "unit": owner, "domain": domain,
                         "score": float(values.mean()), "n_channels": int(values.size),
                         "mean_shift_sd": float(parts[name][0].mean()),
                         "log_sd_ratio": float(parts[name][1].mean())})
        scores[domain] = {unit: score for unit, score, _ in unit_rows}
        sampled[domain] = {"scans": chosen, "n_scans_in_manifest": len(records),
                           "n_slices": int(sum(s.shape[0] for s in stacks))}
    unit_names = [u for u, _ in units]
    write_csv_atomic(out / "shift_map.csv", rows, CSV_COLUMNS)
    label = "W2 / source sd" if divergence == "w2" else "symmetric KL (nats)"
    heatmap([[scores[d][u] for d in targets] for u in unit_names], unit_names, list(targets),
            out / "shift_map.png", title=f"{run_dir.name}: {method} statistics shift, {forward} forward",
            colorbar_label=label, cmap="magma", vmin=0,
            blank_label="no normalisation layer in the unit (e.g. a 1x1 shortcut conv)")
    summary = {"kind": "shift_map", "model": str(run_dir.resolve()), "arch": arch,
               "manifest": str(Path(manifest)), "method": method, "divergence": divergence,
               "forward": forward,
               "seed": seed, "max_scans": max_scans, "max_slices": max_slices, "units": unit_names,
               "target_domains": list(targets), "domains": sampled, "scores": scores,
               "ranks": {d: _ranks(s) for d, s in scores.items()},
               "outputs": {"csv": str(out / "shift_map.csv"), "figure": str(out / "shift_map.png")}}
    return summary


def _ranks(scores: dict) -> dict:
    """{unit: 1 for the most shifted unit, 2, ...}; NaN units get no rank (None)."""
    finite = sorted((u for u, s in scores.items() if np.isfinite(s)), key=lambda u: -scores[u])
    return {u: (finite.index(u) + 1 if u in finite else None) for u in scores}
