"""`recommend`: validate the candidate strategies on the user's labelled target scans, rank them, forecast the
score against labelled-data size, and put the label-free shift map beside it.

Every validation fine-tune is a run folder under OUT/runs/<candidate>/<fold>-s<seed> (claimed, locked, summary
written last, its checkpoint removed once scored), so an interrupted recommend resumes where it stopped and a
finished one is re-read, not recomputed.
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from ..atomic import write_csv_atomic, write_json_atomic, write_text_atomic
from ..data.budgets import parse_slices
from ..data.manifest import read_manifest
from ..data.preprocess import preprocess_options
from ..errors import InputError
from ..experiments.run_folder import identity_of, open_run, read_run, write_summary
from ..experiments.scoring import score_volumes
from ..experiments.stages import (_options_dict, _train_config, check_tolerances, finished_parent, open_volumes,
                                  set_threads, strategy_model, tune)
from ..training.config import with_overrides
from .candidates import CANDIDATES, parse_candidates, uses_labels
from .folds import ONE_SCAN_FOLDS, curve_folds, labelled_parts, sub_volume, validation_folds
from .learning_curve import bootstrap, fit_curve
from .ranking import decide, rank_candidates

QUICK = {"epochs": 4, "iters_per_epoch": 25}  # the quick-validation schedule unless the adapt knobs say otherwise
DEFAULT_CANDIDATES = tuple(CANDIDATES)
SCAN_FORECASTS = (1, 2, 3, 5, 10)  # labelled scans (labelled as the user's) the learning-curve table shows


def quick_overrides(overrides: Optional[dict]) -> dict:
    """The adapt knobs given, on top of QUICK; the lr drops x0.1 halfway unless --lr-steps is given."""
    merged = {**QUICK, **{k: v for k, v in (overrides or {}).items() if v is not None}}
    if "lr_steps" not in (overrides or {}):
        merged["lr_steps"] = ({min(int(merged["epochs"]) // 2, int(merged["epochs"]) - 2): 0.1}
                              if int(merged["epochs"]) >= 2 else {})
    return merged


def _check_metric(metric: str, tolerances_mm=None) -> str:
    """The metric name, refused unless it is one the scoring computes (a surface Dice at a scored tolerance)."""
    if metric in ("dice", "ari"):
        return metric
    if metric.startswith("surface_dice_") and metric.endswith("mm"):
        from ..metrics import surface_dice_key

        keys = [surface_dice_key(t) for t in tolerances_mm or ()]
        if tolerances_mm is not None and metric not in keys:
            wanted = metric[len("surface_dice_"):-len("mm")]
            scored = ", ".join(f"{t:g}" for t in tolerances_mm)
            raise InputError(f"--metric {metric}: scored only at --tolerance {scored} mm; add --tolerance {wanted}")
        return metric
    raise InputError(f"--metric {metric!r}: choose dice, ari or surface_dice_<tol>mm (higher is better)")


def _check_not_source_scans(parent: dict, parent_dir, records: list) -> None:
    """Refuse labelled target scans the source model was trained on (its run.yaml's train_ids, or the same image
    files): validating on them flatters `none`."""
    train_ids = [str(i) for i in parent.get("train_ids") or []]
    if not train_ids:
        return
    trained_images = set()
    try:
        trained = {r.id: r for r in read_manifest(parent["manifest"])} if parent.get("manifest") else {}
        trained_images = {str(Path(trained[i].image).resolve()) for i in train_ids if i in trained}
    except InputError:  # the source's manifest moved: the ids alone still say it
        pass
    chosen = set(train_ids)
    same = [r.id for r in records if r.id in chosen or str(Path(r.image).resolve()) in trained_images]
    if same:
        shown = ", ".join(same[:5]) + (f" (+{len(same) - 5} more)" if len(same) > 5 else "")
        raise InputError(f"{Path(parent_dir) / 'run.yaml'}: the source model was trained on labelled scan(s) "
                         f"{shown}; validate on scans it has not seen (--ids to leave them out)")


def _check_labelled_foreground(volumes, parts, ids, unit: str) -> None:
    """Refuse labelled slices without any foreground: every validation score would be NaN (nothing to find)."""
    if not any(np.asarray(volumes[p.scan].mask[list(p.slices)]).any() for p in parts):
        raise InputError(f"recommend: the masks of every labelled {unit} ({', '.join(ids[:3])}"
                         f"{', ...' if len(ids) > 3 else ''}) are empty on the labelled slices; nothing to score")


def _check_scored(scores: dict, metric: str, folds: list) -> None:
    """Refuse a ranking from scores that are all NaN, naming the cause."""
    values = np.array(list(scores.values()), dtype=float)
    if values.size and not np.isfinite(values).any():
        raise InputError(f"recommend: every validation {metric} is NaN over {len(folds)} folds (the held-out "
                         "masks are empty or the metric was not computed); nothing to rank")


def _labelled_records(manifest, domain: Optional[str], ids: Optional[Sequence[str]]) -> list:
    records = read_manifest(manifest)
    if ids:
        by_id = {r.id: r for r in records}
        missing = [i for i in ids if i not in by_id]
        if missing:
            raise InputError(f"{manifest}: --ids {missing[0]!r} is not an id of the manifest")
        records = [by_id[i] for i in ids]
    if domain:
        records = [r for r in records if r.domain == domain]
        if not records:
            raise InputError(f"{manifest}: no scan of domain {domain!r}")
    domains = sorted({r.domain for r in records})
    if len(domains) > 1:
        raise InputError(f"{manifest}: scans of several domains ({', '.join(domains)}); pass --domain")
    unlabelled = [r.id for r in records if not r.mask]
    if unlabelled:
        raise InputError(f"{manifest}: scan {unlabelled[0]!r} has no mask; recommend needs labelled scans")
    if not records:
        raise InputError(f"{manifest}: no scans")
    return records


class _Context:
    """What every validation run shares: the parent run, the labelled volumes, the config, the output folder."""

    def __init__(self, parent_dir, arch, manifest, ids, volumes, options, cache, cfg, k, tolerances_mm, metric,
                 num_threads, out, wait=False):
        self.wait = wait
        self.parent_dir, self.arch, self.manifest, self.ids = parent_dir, arch, manifest, ids
        self.volumes, self.options, self.cache, self.cfg, self.k = volumes, options, cache, cfg, k
        self.tolerances_mm, self.metric, self.num_threads, self.out = tolerances_mm, metric, num_threads, out
        self._harmonised = {}

    def test_volumes(self, chosen):
        """The labelled volumes as the strategy's test preprocessing makes them (histogram matching)."""
        if chosen.preprocess is None:
            return self.volumes
        options = chosen.preprocess(self.options, self.parent_dir, read_run(self.parent_dir)["spec"])
        key = repr(options)
        if key not in self._harmonised:
            self._harmonised[key] = open_volumes(self.manifest, self.ids, cache=self.cache, preprocess=options,
                                                 progress=False)
        return self._harmonised[key]


def _fold_score(rows: list, metric: str) -> float:
    values = [r[metric] for r in rows if not r.get("empty_gt") and metric in r]
    values = [v for v in values if math.isfinite(v)]
    return float(np.mean(values)) if values else float("nan")


def _validate(ctx: _Context, candidate: str, fold, seed: int) -> dict:
    """One validation run (or its finished summary): fine-tune on the fold's training slices, score its test."""
    strategy, options = CANDIDATES[candidate]
    cfg = with_overrides(ctx.cfg, {"seed": seed})
    part = lambda p: [ctx.ids[p.scan], list(p.slices)]  # noqa: E731
    spec = {"kind": "recommend-validation", "model": str(ctx.parent_dir.resolve()),
            "manifest": str(Path(ctx.manifest).resolve()), "candidate": candidate, "strategy": strategy,
            "options": dict(options), "fold": fold.name, "train": [part(p) for p in fold.train],
            "test": [part(p) for p in fold.test], "seed": seed, "tolerances_mm": list(ctx.tolerances_mm),
            "preprocess": _options_dict(ctx.options)}
    run_dir = ctx.out / "runs" / candidate / f"{fold.name}-s{seed}"
    identity = identity_of(spec, cfg.resolved(), [ctx.manifest], parent=ctx.parent_dir)
    with open_run(run_dir, spec, identity, wait=ctx.wait) as done:
        if done is not None:
            return {**done, "status": "finished before, reused"}
        started = time.perf_counter()
        net, chosen = strategy_model(ctx.parent_dir, ctx.arch, cfg, strategy, dict(options),
                                     budget=(len(fold.train), ctx.k))
        tuned = tune(net, chosen, cfg, [ctx.volumes[p.scan] for p in fold.train],
                     [np.asarray(p.slices, dtype=np.int64) for p in fold.train], run_dir,
                     num_threads=ctx.num_threads, progress=False)
        test_source = ctx.test_volumes(chosen)
        rows = score_volumes(net, ctx.arch, [sub_volume(test_source[p.scan], p.slices) for p in fold.test],
                             tolerances_mm=ctx.tolerances_mm, progress=False)
        summary = {"spec": spec, "kind": "recommend-validation", "scores": rows,
                   "score": _fold_score(rows, ctx.metric), "metric": ctx.metric,
                   "n_train_slices": fold.n_train_slices,
                   "timings_s": (tuned["fit"] or {}).get("timings_s"),
                   "seconds": time.perf_counter() - started}
        summary = write_summary(run_dir, summary)
        (run_dir / "checkpoint.pt").unlink(missing_ok=True)
        resumed = (tuned["fit"] or {}).get("resumed_from_epoch")
        return {**summary, "status": f"resumed after epoch {resumed - 1}" if resumed else ""}


def _learning_curve(points_by_fold: list, total_slices: int, slices_per_scan: float, n_scans: int,
                    target_score: Optional[float], seed: int, full_scan_slices: float) -> dict:
    """Fit on the pooled points, forecast at SCAN_FORECASTS and the user's own budget, size for the target."""
    xs = [x for fold in points_by_fold for x, _ in fold]
    ys = [y for fold in points_by_fold for _, y in fold]
    curve = fit_curve(xs, ys)
    scans = sorted(set(SCAN_FORECASTS) | {n_scans})
    at = [s * slices_per_scan for s in scans]
    boot = bootstrap(points_by_fold, at, target=target_score, seed=seed)
    table = [{"labelled_scans": s, "labelled_slices": x, "forecast": float(curve(x)), "low": lo, "high": hi,
              "measured_range": bool(x <= max(xs) if xs else False), "band_widened": wide}
             for s, (x, lo, hi), wide in zip(scans, boot["forecast"], boot["widened"])]
    result = {"curve": {"kind": curve.kind, "a": curve.a, "b": curve.b, "c": curve.c,
                        "at_bound": list(curve.at_bound)},
              "points": [{"fold": f, "labelled_slices": x, "score": y}
                         for f, fold in enumerate(points_by_fold) for x, y in fold],
              "slices_per_scan": slices_per_scan, "full_scan_slices": full_scan_slices,
              "total_labelled_slices": total_slices,
              "forecast_at_your_budget": float(curve(total_slices)), "table": table, "target": None}
    if target_score is not None:
        size = curve.size_for(target_score)
        needed = math.ceil(size / slices_per_scan - 1e-9) if math.isfinite(size) else None
        low, high = boot["size_for"]
        result["target"] = {
            "score": target_score, "labelled_slices": size if math.isfinite(size) else None,
            "scans_needed": needed, "more_scans": None if needed is None else max(0, needed - n_scans),
            "scans_interval": [math.ceil(low / slices_per_scan - 1e-9) if math.isfinite(low) else None,
                               math.ceil(high / slices_per_scan - 1e-9) if math.isfinite(high) else None],
            "reachable": math.isfinite(size)}
    return result


def recommend(*, model, manifest, out, domain: Optional[str] = None, ids: Optional[Sequence[str]] = None,
              slices: Optional[str] = None, strategies=DEFAULT_CANDIDATES, seeds: Sequence[int] = (0,),
              max_folds: int = 5, metric: Optional[str] = None, target_score: Optional[float] = None,
              curve: bool = True, curve_points: int = 4, shift: bool = True, preset: Optional[str] = None,
              one_scan_folds: str = ONE_SCAN_FOLDS[0],
              config=None, overrides: Optional[dict] = None, tolerances_mm=(1.0,), cache=None,
              num_threads: Optional[int] = None, progress: bool = True, wait: bool = False,
              log: Callable[[str], None] = print) -> dict:
    """Rank `strategies` for adapting the source run `model` to the labelled scans of `manifest` (one domain;
    `slices` '1/k' when only every k-th slice is labelled) by internal validation, forecast the score against
    labelled-data size (`target_score`: how many scans reach it) and write OUT/recommendation.json, ranking.csv,
    validation.csv, learning_curve.csv/.png, report.md and shift_map/. One labelled scan is validated on two
    halves of its labelled slices (`one_scan_folds`: 'slab' or 'interleave', see folds.one_scan_halves). Refuses
    the source model's own training scans, an unscored metric, and all-NaN scores. Returns the recommendation."""
    from tqdm.auto import tqdm

    started = time.perf_counter()
    tolerances_mm = check_tolerances(tolerances_mm)
    set_threads(num_threads)
    candidates = parse_candidates(strategies)
    seeds = [int(s) for s in seeds] or [0]
    parent_dir = Path(model)
    parent, parent_cfg = finished_parent(parent_dir)
    arch = parent["arch"]
    if target_score is not None and not (0 < float(target_score) <= 1):
        raise InputError(f"--target-score {target_score}: a score in (0, 1]")
    if one_scan_folds not in ONE_SCAN_FOLDS:
        raise InputError(f"--one-scan-folds {one_scan_folds!r}: choose {' or '.join(ONE_SCAN_FOLDS)}")
    records = _labelled_records(manifest, domain, ids)
    _check_not_source_scans(parent, parent_dir, records)
    ids = [r.id for r in records]
    if metric is not None:
        _check_metric(metric, tolerances_mm)
    knobs = quick_overrides(overrides)
    knobs.setdefault("base_filters", parent_cfg.get("base_filters", 0))
    cfg = _train_config(preset or parent_cfg.get("preset", "paper"), "finetune", arch, config, knobs)
    options = preprocess_options(parent["preprocess"])
    cache = Path(cache) if cache else Path(manifest).resolve().parent / "cache"
    volumes = open_volumes(manifest, ids, cache=cache, preprocess=options, progress=progress)
    images2d = all(v.n_slices == 1 for v in volumes)
    k = parse_slices(slices or "all")
    if images2d and k > 1:
        raise InputError(f"--slices {slices}: the target is 2D (one slice per image)")
    if images2d and len(volumes) < 2:
        raise InputError(f"{manifest}: one labelled image leaves nothing to validate on; give at least 2")
    metric = _check_metric(metric or ("dice" if images2d else f"surface_dice_{tolerances_mm[0]:g}mm"),
                           tolerances_mm)
    parts = labelled_parts([v.n_slices for v in volumes], k)
    folds = validation_folds(parts, max_folds=max_folds, seed=seeds[0], one_scan=one_scan_folds)
    unit = "image" if images2d else "scan"
    _check_labelled_foreground(volumes, parts, ids, unit)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ctx = _Context(parent_dir, arch, manifest, ids, volumes, options, cache, cfg, k, tolerances_mm, metric,
                   num_threads, out, wait=wait)
    log(f"recommend: {len(candidates)} candidates x {len(folds)} folds x {len(seeds)} seed(s) on {len(ids)} "
        f"labelled {unit}(s){'' if k == 1 else f' (1/{k} of the slices)'}; {cfg.epochs} x {cfg.iters_per_epoch} "
        f"steps per fine-tune; metric {metric}")

    bar = tqdm(total=len(candidates) * len(folds) * len(seeds), desc="validate", unit="run",
               disable=not progress)
    rows, scores = [], {}
    count = {"done": 0, "total": bar.total}  # the bar keeps no count when disabled

    def run(candidate, fold, seed):
        summary = _validate(ctx, candidate, fold, seed)
        score = float("nan") if summary["score"] is None else float(summary["score"])  # NaN is null in JSON
        rows.append({"candidate": candidate, "fold": fold.name, "seed": seed,
                     "n_train_slices": summary["n_train_slices"], metric: score,
                     "seconds": summary.get("seconds")})
        bar.update(1)
        count["done"] += 1
        status = summary.get("status")
        if not progress or status:  # a line per run for batch jobs and CI logs, and for every resumed or reused run
            log(f"  [{count['done']}/{count['total']}] {candidate} {fold.name} seed {seed}: {metric} {score:.4f} "
                f"({summary.get('seconds') or 0:.1f} s{'; ' + status if status else ''})")
        return score

    for candidate in candidates:
        per_fold = [float(np.nanmean([run(candidate, fold, s) for s in seeds])) for fold in folds]
        scores[candidate] = per_fold
        log(f"  {candidate}: {metric} {np.nanmean(per_fold):.4f} over {len(folds)} folds")
    _check_scored(scores, metric, folds)
    ranking = rank_candidates(scores, seed=seeds[0], metric=metric)
    choice = decide(ranking, scores, metric=metric)
    for note in choice["notes"]:
        log(f"  note: {note}")

    learning = None
    labelled = [c for c in (r["candidate"] for r in ranking) if uses_labels(c)]
    if curve and labelled:
        curved = labelled[0]
        sub = [curve_folds(fold, points=curve_points) for fold in folds]
        bar.total += sum(len(s) - 1 for s in sub) * len(seeds)
        count["total"] = bar.total
        bar.refresh()
        points_by_fold = []
        for fold, sizes in zip(folds, sub):
            points = [(fold.n_train_slices, scores[curved][folds.index(fold)])]
            for smaller in sizes[1:]:
                value = float(np.nanmean([run(curved, smaller, s) for s in seeds]))
                points.append((smaller.n_train_slices, value))
            points_by_fold.append(points)
        total = sum(p.n for p in parts)
        learning = {"strategy": curved, **_learning_curve(points_by_fold, total, total / len(parts), len(parts),
                                                          target_score, seeds[0],
                                                          float(np.mean([v.n_slices for v in volumes])))}
    bar.close()

    shift_summary = None
    if shift:
        from ..diagnostics.shift_map import shift_map

        shift_summary = shift_map(model=parent_dir, manifest=manifest, out=out / "shift_map",
                                  domains=[records[0].domain], cache=cache, progress=False)  # the scans' own cache
    result = {"kind": "recommendation", "model": str(parent_dir.resolve()), "arch": arch,
              "manifest": str(Path(manifest).resolve()), "domain": records[0].domain, "ids": ids,
              "labelled_slices_interval": k, "unit": unit, "metric": metric, "seeds": seeds,
              "one_scan_folds": one_scan_folds if len(parts) == 1 else None,
              "folds": [{"name": f.name, "train": [ids[p.scan] for p in f.train],
                         "test": [ids[p.scan] for p in f.test], "n_train_slices": f.n_train_slices}
                        for f in folds],
              "schedule": {"epochs": cfg.epochs, "iters_per_epoch": cfg.iters_per_epoch,
                           "batch_size": cfg.batch_size, "crop": cfg.crop, "lr": cfg.lr,
                           "lr_steps": cfg.lr_steps, "preset": cfg.preset},
              "ranking": ranking, "recommendation": choice, "learning_curve": learning,
              "shift_map": None if shift_summary is None else {
                  "csv": shift_summary["outputs"]["csv"], "figure": shift_summary["outputs"]["figure"],
                  "ranks": shift_summary["ranks"][records[0].domain]},
              "seconds": time.perf_counter() - started}
    _write_outputs(out, result, rows)
    return result


def _write_outputs(out: Path, result: dict, rows: list) -> None:
    from .report import learning_curve_figure, report_markdown

    write_csv_atomic(out / "validation.csv", rows)
    write_csv_atomic(out / "ranking.csv", result["ranking"])
    if result["learning_curve"]:
        write_csv_atomic(out / "learning_curve.csv", result["learning_curve"]["table"])
        learning_curve_figure(result, out / "learning_curve.png")
    write_json_atomic(out / "recommendation.json", result)
    write_text_atomic(out / "report.md", report_markdown(result))
