"""The stages of a study, each a function of its options that writes one run folder: train, adapt, predict.

Each stage resolves its options into one `RunSpec` (what the run is: data, ids, strategy, budget), claims the
folder with it (run.yaml + identity, under the folder lock), does its work, and writes summary.json last. The same
record is the provenance in run.yaml and the `spec` of the summary, from which results.csv rows are made.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import torch

from ..atomic import write_csv_atomic
from ..data import splits as splits_mod
from ..data.budgets import budget_label, comb_slices, make_budget
from ..data.loader import SliceLoader
from ..data.manifest import read_manifest
from ..data.preprocess import PreprocessOptions, preprocess_options
from ..data.volumes import open_volumes
from ..errors import InputError
from ..metrics.scoring import check_tolerances
from ..models import check_arch
from ..models.spec import build_network, builtin_spec, spec_of
from ..training.config import load_config, preset_config, with_overrides
from ..checkpoint import load_checkpoint, load_pretrained, save_checkpoint
from ..training.fit import fit
from ..training.strategies.registry import LABEL_FREE, make_strategy
from .run_folder import finished_summary, identity_of, locked, open_run, read_run, write_summary
from .scoring import aggregate_scores, score_masks, score_volumes


@dataclass
class RunSpec:
    """What a run is. Paths are absolute; ids are in the order used; options are plain data (YAML/JSON)."""

    kind: str
    arch: str
    manifest: str
    splits: str
    cache: str
    preprocess: dict
    source: Optional[str] = None
    target: Optional[str] = None
    strategy: Optional[str] = None
    strategy_options: dict = field(default_factory=dict)
    scans: Optional[int] = None
    slices_k: int = 1
    folds: Optional[int] = None
    fold: Optional[int] = None
    train_ids: list = field(default_factory=list)
    eval_ids: list = field(default_factory=list)
    parent: Optional[str] = None
    seed: Optional[int] = None

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def budget(self) -> str:
        """'3', '1', '1/48' (target labels used) or '' (none)."""
        if self.kind != "adapt" or self.strategy in LABEL_FREE:
            return ""
        return budget_label(self.scans, self.slices_k)

    def result_fields(self) -> dict:
        """The fields that identify the run in results.csv."""
        return {"kind": self.kind, "arch": self.arch, "source": self.source, "target": self.target,
                "strategy": self.strategy, "layers": self.strategy_options.get("layers", ""),
                "budget": self.budget, "seed": self.seed, "fold": self.fold,
                "options": self.strategy_options}


def set_threads(num_threads: Optional[int]) -> Optional[int]:
    """--num-threads: the CPU threads a command uses, for torch and the slice loader alike (None: all cores)."""
    if num_threads is not None:
        if int(num_threads) < 1:
            raise InputError(f"--num-threads must be >= 1, got {num_threads}")
        torch.set_num_threads(int(num_threads))
    return num_threads


def _options_dict(options: PreprocessOptions) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(options).items()}


def _train_config(preset, stage, arch, config_path, overrides):
    base = preset_config(preset, stage, arch)
    if config_path:
        base = load_config(config_path, base)
    return with_overrides(base, dict(overrides or {}))


def _batches(volumes, slices, config, num_threads) -> SliceLoader:
    """The slice loader of a run: the config's batch size, square crop and seed; per-volume allowed slices."""
    from ..data.augment import augment_options

    return SliceLoader([v.image for v in volumes], [v.mask for v in volumes], slices,
                       batch_size=config.batch_size, crop=(config.crop, config.crop), seed=config.seed,
                       num_threads=num_threads, augment=augment_options(config.augment) if config.augment else None,
                       ids=[v.id for v in volumes])


def _score(model, arch, volumes, *, tolerances_mm, progress, on_prediction=None, strategy=None, records=None,
           batch_size=None) -> list:
    """score_volumes; with a strategy that records per test scan (SpotTUnet), one scan at a time and its record
    rows written to `records` (a CSV path)."""
    if strategy is None or strategy.scan_record is None:
        return score_volumes(model, arch, volumes, tolerances_mm=tolerances_mm, progress=progress,
                             on_prediction=on_prediction, batch_size=batch_size)
    rows, record = [], []
    strategy.scan_record(model, None)
    for volume in volumes:
        rows += score_volumes(model, arch, [volume], tolerances_mm=tolerances_mm, progress=False,
                              on_prediction=on_prediction, batch_size=batch_size)
        record += strategy.scan_record(model, volume.id)
    write_csv_atomic(records, record)
    return rows


def _finish(run_dir: Path, spec: RunSpec, model, eval_volumes, summary: dict, *, tolerances_mm,
            progress, on_prediction=None, strategy=None) -> dict:
    """Score `eval_volumes`, write scores.csv and summary.json (last, atomically); return the summary."""
    summary = {"spec": spec.result_fields(), **summary}
    if eval_volumes:
        rows = _score(model, spec.arch, eval_volumes, tolerances_mm=tolerances_mm, progress=progress,
                      on_prediction=on_prediction, strategy=strategy, records=run_dir / "policy_test.csv")
        write_csv_atomic(run_dir / "scores.csv", rows)
        aggregate = aggregate_scores(rows)
        summary.update(scores=rows, aggregate=aggregate,
                       mean={k: v["mean"] for k, v in aggregate["metrics"].items()})
    return write_summary(run_dir, summary)


def _plot_curve(run_dir: Path) -> None:
    from ..figures import plot_training_curve

    plot_training_curve(run_dir)


def train(*, manifest, splits, out, source: Optional[str] = None, ids: Optional[Sequence[str]] = None,
          eval_ids: Optional[Sequence[str]] = None, arch: str = "dart20", preset: str = "paper",
          preprocess="paper", cache=None, config=None, overrides: Optional[dict] = None,
          tolerances_mm=(1.0,), num_threads: Optional[int] = None, progress: bool = True,
          wait: bool = False) -> dict:
    """Train a U-Net from scratch on the source domain's one2all train scans (or on `ids`); score on its val scans
    (or `eval_ids`). Returns the run summary; a finished `out` is returned as is, an interrupted one resumes."""
    tolerances_mm = check_tolerances(tolerances_mm)
    set_threads(num_threads)
    check_arch(arch)
    split = splits_mod.read_splits(splits)
    if ids is None:
        if source is None:
            raise InputError("--source is required (a domain of the split file) unless train ids are given")
        ids = splits_mod.source_train_ids(split, source)
        eval_ids = splits_mod.source_val_ids(split, source) if eval_ids is None else eval_ids
    cfg = _train_config(preset, "source", arch, config, overrides)
    options = preprocess_options(preprocess)
    spec = RunSpec(kind="train", arch=arch, manifest=str(Path(manifest).resolve()),
                   splits=str(Path(splits).resolve()),
                   cache=str(Path(cache or Path(manifest).resolve().parent / "cache").resolve()),
                   preprocess=_options_dict(options), source=source, strategy="all", train_ids=list(ids),
                   eval_ids=list(eval_ids or []), seed=cfg.seed)
    identity = identity_of(spec.as_dict(), cfg.resolved(), [manifest, splits])
    run_dir = Path(out)
    with open_run(run_dir, spec.as_dict(), identity, wait=wait) as done:
        if done is not None:
            return done
        volumes = open_volumes(manifest, spec.train_ids + spec.eval_ids, cache=spec.cache, preprocess=options,
                               progress=progress)
        train_vols, eval_vols = volumes[:len(spec.train_ids)], volumes[len(spec.train_ids):]
        torch.manual_seed(cfg.seed)  # the initial weights are part of the run
        model = build_network(builtin_spec(arch, base_filters=cfg.base_filters))
        with _batches(train_vols, None, cfg, num_threads) as loader:
            trained = fit(model, loader.batch, cfg, run_dir, progress=progress)
        _plot_curve(run_dir)
        return _finish(run_dir, spec, model, eval_vols, {"kind": "train", "fit": trained},
                       tolerances_mm=tolerances_mm, progress=progress)


def _finetune_and_test_ids(split: dict, target: str, scans, finetune_ids, folds, fold):
    """(fine-tune ids, test ids) of an adaptation: the split's nested sets, explicit ids, or a CV fold."""
    if finetune_ids:
        return (splits_mod.check_finetune_ids(split, target, finetune_ids),
                splits_mod.remaining_test_ids(split, target, finetune_ids))
    if folds is not None:
        return splits_mod.cv_fold_ids(split, int(folds), int(fold or 0), domain=target, n_finetune=scans)
    return splits_mod.finetune_ids(split, target, int(scans)), splits_mod.pair_test_ids(split, target, int(scans))


def finished_parent(run_dir) -> tuple:
    """(spec, training config) of a finished source run folder; one-line error if it is not one or unfinished."""
    spec = read_run(run_dir).get("spec") or {}
    if finished_summary(run_dir) is None:
        raise InputError(f"{run_dir}: the source run has not finished (no summary.json); finish `fewshot-da train` "
                         "first")
    return spec, load_checkpoint(Path(run_dir) / "checkpoint.pt")["config"]


def network_of(run_dir, arch: str, base_filters: int = 0):
    """A fresh network as the run in `run_dir` recorded it (its checkpoint's `network`), or, for runs made before
    the record, the built-in `arch` at `base_filters`."""
    path = Path(run_dir) / "checkpoint.pt"
    spec = load_checkpoint(path).get("network")
    return build_network(spec, where=str(path)) if spec else build_network(builtin_spec(arch, base_filters=base_filters))


def strategy_model(parent_dir, arch: str, cfg, strategy: str, options: dict, *, budget):
    """(module, Strategy): the source run's U-Net with `strategy` made for it (and its wrapper, if any).
    Seeded with cfg.seed first, since a strategy's new weights (SpotTUnet's policy network) are part of a run."""
    net = network_of(parent_dir, arch, cfg.base_filters)
    load_pretrained(net, Path(parent_dir) / "checkpoint.pt", arch=arch)
    torch.manual_seed(cfg.seed)
    chosen = make_strategy(strategy, net, arch, options, budget=budget)
    if chosen.wrap is None:
        return net, chosen
    wrapped = chosen.wrap(net)
    wrapped.network_spec = spec_of(net)  # the record is the source network's; the strategy rebuilds the wrapper
    return wrapped, chosen


def tune(net, chosen, cfg, volumes, slices, run_dir, *, num_threads=None, progress: bool = True) -> dict:
    """Adapt `net` in place on `volumes` (allowed slice indices per volume, or None: all) with `chosen`: train
    (resuming from run_dir), or a label-free update on the images; checkpoint.pt is written either way.
    Returns {"fit": fit's summary or None, "prepare": the label-free update's record or None}."""
    done = {"fit": None, "prepare": None}
    if chosen.trains:
        with _batches(volumes, slices, cfg, num_threads) as loader:
            done["fit"] = fit(net, loader.batch, cfg, run_dir, strategy=chosen, progress=progress)
        _plot_curve(run_dir)
        return done
    if chosen.prepare is not None:
        images = [v.image if c is None else v.image[c] for v, c in zip(volumes, slices or [None] * len(volumes))]
        done["prepare"] = chosen.prepare(net, images, cfg.batch_size)
    save_checkpoint({"model": net.state_dict(), "config": cfg.resolved(), "network": spec_of(net)},
                    Path(run_dir) / "checkpoint.pt")
    return done


def adapt(*, model, target: str, out, strategy: str = "freeze", strategy_options: Optional[dict] = None,
          layers: Optional[str] = None, scans: Optional[int] = 1, slices: Optional[str] = None,
          finetune_ids: Optional[Sequence[str]] = None, folds: Optional[int] = None, fold: Optional[int] = None,
          preset: Optional[str] = None, config=None, overrides: Optional[dict] = None, tolerances_mm=(1.0,),
          evaluate: bool = True, save_predictions: bool = False, num_threads: Optional[int] = None,
          progress: bool = True, wait: bool = False) -> dict:
    """Adapt a trained source model to `target` with `strategy` on `scans` target scans (or 1/k of their slices),
    then score the pair's test scans (the target minus the fine-tune scans) unless evaluate=False.

    Fine-tune scans: the split file's nested sets (1 within 2 within 3), `finetune_ids`, or the training part
    of CV fold `fold` of `folds` over the target's scans (seeded by the split's seed). The slice comb {0, k, 2k, ...}
    of a 1/k budget is applied to each fine-tune scan and recorded. Label-free strategies (none, adabn,
    histogram) never read the fine-tune masks.
    """
    tolerances_mm = check_tolerances(tolerances_mm)
    set_threads(num_threads)
    parent_dir = Path(model)
    parent, parent_cfg = finished_parent(parent_dir)
    arch = parent["arch"]
    split = splits_mod.read_splits(parent["splits"])
    k = make_budget(scans or 1, slices or "all", images2d=splits_mod.domain_is_2d(split, target)).slice_interval
    options = dict(strategy_options or {})
    if layers is not None and strategy == "freeze":
        options.setdefault("layers", layers)
    overrides = dict(overrides or {})
    overrides.setdefault("base_filters", parent_cfg.get("base_filters", 0))
    cfg = _train_config(preset or parent_cfg.get("preset", "paper"), "finetune", arch, config, overrides)
    ids, test_ids = _finetune_and_test_ids(split, target, scans, finetune_ids, folds, fold)
    test_ids = test_ids if evaluate else []
    net, chosen = strategy_model(parent_dir, arch, cfg, strategy, options, budget=(scans or len(ids), k))
    tune_options = preprocess_options(parent["preprocess"])
    test_options = chosen.preprocess(tune_options, parent_dir, parent) if chosen.preprocess else tune_options
    spec = RunSpec(kind="adapt", arch=arch, manifest=parent["manifest"], splits=parent["splits"],
                   cache=parent["cache"], preprocess=_options_dict(test_options), source=parent.get("source"),
                   target=target, strategy=strategy, strategy_options=chosen.options,
                   scans=len(ids), slices_k=k, folds=folds, fold=fold, train_ids=list(ids),
                   eval_ids=list(test_ids), parent=str(parent_dir.resolve()), seed=cfg.seed)
    run_dir = Path(out)
    identity = identity_of(spec.as_dict(), cfg.resolved(), [spec.manifest, spec.splits], parent=parent_dir)
    with open_run(run_dir, spec.as_dict(), identity, wait=wait) as done:
        if done is not None:
            return done
        tune_vols = open_volumes(spec.manifest, ids, cache=spec.cache, preprocess=tune_options,
                                 progress=progress) if (chosen.trains or chosen.prepare) else []
        comb = None
        if k > 1 and tune_vols:
            comb = [comb_slices(v.n_slices, k) for v in tune_vols]
            if any(len(c) == 0 for c in comb):
                raise InputError(f"--slices 1/{k}: a fine-tune scan has fewer than {k} slices")
        summary = {"kind": "adapt", "finetune_ids": list(ids),
                   "slice_indices": {v.id: c.tolist() for v, c in zip(tune_vols, comb)} if comb else "all",
                   "n_slices_available": int(sum(len(c) for c in comb)) if comb
                   else int(sum(v.n_slices for v in tune_vols))}
        summary.update(tune(net, chosen, cfg, tune_vols, comb, run_dir, num_threads=num_threads,
                            progress=progress))
        test_vols = open_volumes(spec.manifest, test_ids, cache=spec.cache, preprocess=test_options,
                                 progress=progress) if test_ids else []
        return _finish(run_dir, spec, net, test_vols, summary, tolerances_mm=tolerances_mm, progress=progress,
                       on_prediction=_prediction_writer(run_dir / "predictions") if save_predictions else None,
                       strategy=chosen)


def _prediction_writer(folder: Path):
    from ..data.preprocess import save_prediction_nifti

    def save(volume, mask):
        save_prediction_nifti(volume, mask, folder / f"{volume.id}.nii.gz", original_grid=False)

    return save


def run_model(run_dir):
    """(model, strategy) of a finished train or adapt run folder, with its weights: the U-Net, or the module its
    strategy trained (SpotTUnet's wrapper, which then decides per slice at test time); strategy None for train."""
    run_dir = Path(run_dir)
    spec = read_run(run_dir).get("spec") or {}
    cfg = load_checkpoint(run_dir / "checkpoint.pt")["config"]
    net = network_of(run_dir, spec["arch"], cfg.get("base_filters", 0))
    strategy = None
    if spec.get("kind") == "adapt":
        strategy = make_strategy(spec["strategy"], net, spec["arch"], spec.get("strategy_options"))
        net = strategy.wrap(net) if strategy.wrap is not None else net
    load_pretrained(net, run_dir / "checkpoint.pt", arch=spec["arch"])
    return net, strategy


def _score_written(row: dict, record, pred_dir: Path, tolerances_mm) -> tuple:
    """(row, True): the scores of a written original-grid prediction against the record's NIfTI mask on its own
    grid and header spacing; (row, False): the preprocessed grid's row, when there is no same-shape NIfTI mask."""
    from ..data.io import is_nifti
    from ..metrics.masks import read_mask_file

    if record is None or not record.mask or not is_nifti(record.mask):
        return row, False
    gt = read_mask_file(record.mask)
    pred = read_mask_file(pred_dir / f"{row['id']}.nii.gz")
    if gt.data.shape != pred.data.shape:
        return row, False
    return score_masks(row["id"], row.get("domain"), gt.data > 0, pred.data > 0, gt.spacing_mm,
                       tolerances_mm=tolerances_mm), True


def resolve_ids(split: dict, run: dict, which: str, records: Sequence) -> list:
    """Ids for `predict --ids`: test (the run's own test role), val, all, a domain, or a comma list of ids."""
    which = which.strip()
    manifest_ids = [r.id for r in records]
    if which == "all":
        return manifest_ids
    if which == "test":
        if run.get("kind") == "adapt":
            return list(run.get("eval_ids") or [])
        if not run.get("source"):
            raise InputError("--ids test: this run was trained on explicit ids, not a source domain; "
                             "use val, all, a domain or ids")
        return splits_mod.source_test_ids(split, run["source"])
    if which == "val":
        return list(run.get("eval_ids") or [])
    if which in {r.domain for r in records}:
        return [r.id for r in records if r.domain == which]
    ids = [i.strip() for i in which.split(",") if i.strip()]
    unknown = [i for i in ids if i not in set(manifest_ids)]
    if unknown:
        raise InputError(f"--ids: {unknown[0]!r} is not an id of the manifest; use test, val, all, a domain or ids")
    return ids


def predict(*, model, out, manifest=None, ids: str = "test", tolerances_mm=(1.0,), original_grid: bool = False,
            batch_size=None, num_threads: Optional[int] = None, progress: bool = True) -> dict:
    """Predict volumes with a trained run's model, write NIfTI masks to `out/predictions/` and score them.

    Masks are written in the preprocessed grid with its affine (or resampled back onto each input's grid with
    original_grid=True); scores (when the manifest has masks) are those of the written masks: in the preprocessed
    grid, or with original_grid=True against each scan's own mask file on its own grid (`scored_on` says which).
    """
    from ..data.preprocess import save_prediction_nifti

    tolerances_mm = check_tolerances(tolerances_mm)
    set_threads(num_threads)
    run_dir = Path(model)
    run = read_run(run_dir).get("spec") or {}
    arch = run["arch"]
    manifest = manifest or run["manifest"]
    split = splits_mod.read_splits(run["splits"])
    chosen = resolve_ids(split, run, ids, read_manifest(manifest))
    if not chosen:
        raise InputError(f"--ids {ids!r} selects no scan")
    net, strategy = run_model(run_dir)
    out = Path(out)
    pred_dir = out / "predictions"

    def save(volume, mask):
        save_prediction_nifti(volume, mask, pred_dir / f"{volume.id}.nii.gz", original_grid=original_grid)

    with locked(out):
        volumes = open_volumes(manifest, chosen, cache=run["cache"], preprocess=run["preprocess"], progress=progress)
        rows = _score(net, arch, volumes, tolerances_mm=tolerances_mm, batch_size=batch_size, on_prediction=save,
                      progress=progress, strategy=strategy, records=out / "policy_test.csv")
        kept = []  # ids scored on the preprocessed grid although original_grid was asked (no same-shape NIfTI mask)
        if original_grid:  # score the masks as written, on each scan's own grid, against its own mask file
            records = {r.id: r for r in read_manifest(manifest)}
            rescored = [_score_written(row, records.get(row["id"]), pred_dir, tolerances_mm) for row in rows]
            kept = [row["id"] for row, original in rescored if not original]
            rows = [row for row, _ in rescored]
        write_csv_atomic(out / "scores.csv", rows)
        summary = {"spec": {**{k: run.get(k) for k in ("arch", "source", "target", "strategy", "seed", "fold")},
                            "kind": "predict", "layers": (run.get("strategy_options") or {}).get("layers", ""),
                            "budget": ""},
                   "kind": "predict", "model": str(run_dir.resolve()), "ids": chosen, "scores": rows,
                   "predictions": str(pred_dir.resolve()), "original_grid": bool(original_grid),
                   "scores_grid": "original" if original_grid else "preprocessed", "scored_on_preprocessed": kept}
        if rows:
            aggregate = aggregate_scores(rows)
            summary.update(aggregate=aggregate, mean={k: v["mean"] for k, v in aggregate["metrics"].items()})
        return write_summary(out, summary)
