"""Run folders: source training, layer-selective adaptation and prediction, each a function of its options.

A run folder holds `config.yaml` (the resolved TrainConfig), `run.yaml` (data provenance: manifest, splits,
ids, slices, preprocessing, parent model), `log.txt`, `metrics.csv`, `progress.png`, `checkpoint.pt`,
`scores.csv` and `summary.json`, written last and atomically. A folder with `summary.json` is done: calling
the same run again returns its summary without recomputing; an interrupted run resumes from its checkpoint.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
import yaml

from ..data import splits as splits_mod
from ..data.budgets import comb_slices, parse_slices
from ..data.loader import SliceLoader
from ..data.manifest import read_manifest
from ..data.preprocess import PreprocessOptions, preprocess_manifest, preprocess_options
from ..atomic import write_text_atomic
from ..errors import InputError
from ..models import build_model, check_arch
from ..training.config import load_config, preset_config, with_overrides
from ..training.fit import fit, load_checkpoint, load_pretrained
from ..training.groups import trainable_names
from .scoring import score_volumes, write_scores

SUMMARY = "summary.json"
RUN_FILE = "run.yaml"


def write_json_atomic(data, path) -> Path:
    """JSON with sorted keys, written to a temporary file and renamed (a reader never sees half a file)."""
    return write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def finished_summary(run_dir) -> Optional[dict]:
    """The summary of a finished run folder, or None when it has not finished."""
    path = Path(run_dir) / SUMMARY
    return json.loads(path.read_text()) if path.is_file() else None


def read_run(run_dir) -> dict:
    """run.yaml of a run folder (data provenance); one-line error when `run_dir` is not a run."""
    path = Path(run_dir) / RUN_FILE
    if not path.is_file():
        raise InputError(f"{run_dir}: not a fewshot-da run folder (no {RUN_FILE}); pass the --out of `fewshot-da train`")
    return yaml.safe_load(path.read_text())


def _write_run(run_dir: Path, info: dict) -> None:
    write_text_atomic(run_dir / RUN_FILE, yaml.safe_dump(info, sort_keys=False))


def _options_dict(options: PreprocessOptions) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(options).items()}


def open_volumes(manifest, ids: Sequence[str], *, cache, preprocess="paper", num_workers: int = 2,
                 progress: bool = True):
    """Preprocessed (cached) volumes of `ids` from `manifest`, in the order of `ids`."""
    records = {r.id: r for r in read_manifest(manifest)}
    missing = [i for i in ids if i not in records]
    if missing:
        raise InputError(f"{manifest}: id {missing[0]!r} (from the split file) is not in the manifest")
    return preprocess_manifest([records[i] for i in ids], cache, preprocess_options(preprocess),
                               num_workers=num_workers, progress=progress)


def _train_config(preset, stage, arch, config_path, overrides):
    base = preset_config(preset, stage, arch)
    if config_path:
        base = load_config(config_path, base)
    return with_overrides(base, dict(overrides or {}))


def _batches(volumes, slices, config, num_threads) -> SliceLoader:
    """The slice loader of a run: the config's batch size, square crop and seed; per-volume allowed slices."""
    return SliceLoader([v.image for v in volumes], [v.mask for v in volumes], slices,
                       batch_size=config.batch_size, crop=(config.crop, config.crop), seed=config.seed,
                       num_threads=num_threads)


def _finish(run_dir: Path, model, arch, eval_volumes, summary: dict, *, tolerances_mm, progress) -> dict:
    """Score `eval_volumes`, write scores.csv and summary.json (last, atomically); return the summary."""
    if eval_volumes:
        rows = score_volumes(model, arch, eval_volumes, tolerances_mm=tolerances_mm, progress=progress)
        write_scores(rows, run_dir / "scores.csv")
        summary["scores"] = rows
        summary["mean"] = {k: float(np.nanmean([r[k] for r in rows])) for k in rows[0] if k not in ("id", "domain")}
    write_json_atomic(summary, run_dir / SUMMARY)
    return summary


def train(*, manifest, splits, out, source: Optional[str] = None, ids: Optional[Sequence[str]] = None,
          eval_ids: Optional[Sequence[str]] = None, arch: str = "dart20", preset: str = "paper",
          preprocess="paper", cache=None, config=None, overrides: Optional[dict] = None,
          tolerances_mm=(1.0,), num_threads: Optional[int] = None, progress: bool = True) -> dict:
    """Train a U-Net from scratch on the source domain's one2all train scans (or on `ids`); score on its val scans.

    Returns the run summary; a finished `out` is returned as is, an interrupted one resumes.
    """
    run_dir = Path(out)
    done = finished_summary(run_dir)
    if done is not None:
        return done
    check_arch(arch)
    split = splits_mod.read_splits(splits)
    if ids is None:
        if source is None:
            raise InputError("--source is required (a domain of the split file) unless train ids are given")
        ids = splits_mod.source_train_ids(split, source)
        eval_ids = splits_mod.source_val_ids(split, source) if eval_ids is None else eval_ids
    ids, eval_ids = list(ids), list(eval_ids or [])
    cache = str(cache or Path(manifest).resolve().parent / "cache")
    cfg = _train_config(preset, "source", arch, config, overrides)
    _write_run(run_dir, {"kind": "train", "manifest": str(Path(manifest).resolve()),
                         "splits": str(Path(splits).resolve()), "source": source, "arch": arch,
                         "preprocess": _options_dict(preprocess_options(preprocess)),
                         "cache": str(Path(cache).resolve()), "train_ids": ids,
                         "eval_ids": eval_ids})
    volumes = open_volumes(manifest, ids + eval_ids, cache=cache, preprocess=preprocess, progress=progress)
    train_vols, eval_vols = volumes[:len(ids)], volumes[len(ids):]
    torch.manual_seed(cfg.seed)  # the initial weights are part of the run
    model = build_model(arch)
    with _batches(train_vols, None, cfg, num_threads) as loader:
        trained = fit(model, loader.batch, cfg, run_dir, progress=progress)
    summary = {"kind": "train", "arch": arch, "source": source, "train_ids": ids, "eval_ids": eval_ids,
               "fit": trained}
    return _finish(run_dir, model, arch, eval_vols, summary, tolerances_mm=tolerances_mm, progress=progress)


def adapt(*, model, target: str, out, layers: str = "first", scans: int = 1, slices: Optional[str] = None,
          preset: Optional[str] = None, config=None, overrides: Optional[dict] = None,
          tolerances_mm=(1.0,), evaluate: bool = True, num_threads: Optional[int] = None,
          progress: bool = True) -> dict:
    """Fine-tune the chosen `layers` of a trained source model on `scans` target scans (or 1/k of their slices).

    The fine-tune scans come from the source run's split file (nested: 1 within 2 within 3); the slice comb
    {0, k, 2k, ...} is applied to each of them and recorded. Scores the pair's test scans (the target minus the
    fine-tune scans) unless evaluate=False.
    """
    run_dir = Path(out)
    done = finished_summary(run_dir)
    if done is not None:
        return done
    parent_dir = Path(model)
    parent = read_run(parent_dir)
    if not (parent_dir / "summary.json").is_file():
        raise InputError(f"{parent_dir}: the source run has not finished (no summary.json); finish `fewshot-da train` first")
    arch = parent["arch"]
    parent_cfg = load_checkpoint(parent_dir / "checkpoint.pt")["config"]
    split = splits_mod.read_splits(parent["splits"])
    k = parse_slices(slices) if slices else 1
    ids = splits_mod.finetune_ids(split, target, int(scans))
    test_ids = splits_mod.pair_test_ids(split, target, int(scans)) if evaluate else []
    overrides = dict(overrides or {})
    overrides.setdefault("layers", layers)
    cfg = _train_config(preset or parent_cfg.get("preset", "paper"), "finetune", arch, config, overrides)
    volumes = open_volumes(parent["manifest"], list(ids) + list(test_ids), cache=parent["cache"],
                           preprocess=parent["preprocess"], progress=progress)
    tune_vols, test_vols = volumes[:len(ids)], volumes[len(ids):]
    comb = None
    if k > 1:
        comb = [comb_slices(v.n_slices, k) for v in tune_vols]
        if any(len(c) == 0 for c in comb):
            raise InputError(f"--slices 1/{k}: a fine-tune scan has fewer than {k} slices")
    _write_run(run_dir, {"kind": "adapt", "parent": str(parent_dir.resolve()), "manifest": parent["manifest"],
                         "splits": parent["splits"], "arch": arch, "preprocess": parent["preprocess"],
                         "cache": parent["cache"], "source": parent.get("source"), "target": target,
                         "layers": layers, "scans": int(scans), "slices": f"1/{k}" if k > 1 else "all",
                         "finetune_ids": list(ids),
                         "slice_indices": {v.id: c.tolist() for v, c in zip(tune_vols, comb)} if comb else "all",
                         "test_ids": list(test_ids)})
    net = build_model(arch)
    load_pretrained(net, parent_dir / "checkpoint.pt", arch=arch)
    trainable = trainable_names(net, arch, layers)
    with _batches(tune_vols, comb, cfg, num_threads) as loader:
        trained = fit(net, loader.batch, cfg, run_dir, trainable=trainable, progress=progress)
    summary = {"kind": "adapt", "arch": arch, "source": parent.get("source"), "target": target, "layers": layers,
               "scans": int(scans), "slices": f"1/{k}" if k > 1 else "all", "finetune_ids": list(ids),
               "n_slices_available": int(sum(len(c) for c in comb)) if comb else int(sum(v.n_slices for v in tune_vols)),
               "fit": trained}
    return _finish(run_dir, net, arch, test_vols, summary, tolerances_mm=tolerances_mm, progress=progress)


def resolve_ids(split: dict, run: dict, which: str, records: Sequence) -> list:
    """Ids for `predict --ids`: test (the run's own test role), val, all, a domain, or a comma list of ids."""
    which = which.strip()
    manifest_ids = [r.id for r in records]
    if which == "all":
        return manifest_ids
    if which == "test":
        if run.get("kind") == "adapt":
            return splits_mod.pair_test_ids(split, run["target"], int(run["scans"]))
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
            batch_size=None, progress: bool = True) -> dict:
    """Predict volumes with a trained run's model, write NIfTI masks to `out/predictions/` and score them.

    Masks are written in the preprocessed grid with its affine (or resampled back onto each input's grid with
    original_grid=True); scores (when the manifest has masks) are computed in the preprocessed grid.
    """
    from ..data.preprocess import save_prediction_nifti

    run_dir = Path(model)
    run = read_run(run_dir)
    arch = run["arch"]
    manifest = manifest or run["manifest"]
    split = splits_mod.read_splits(run["splits"])
    chosen = resolve_ids(split, run, ids, read_manifest(manifest))
    if not chosen:
        raise InputError(f"--ids {ids!r} selects no scan")
    volumes = open_volumes(manifest, chosen, cache=run["cache"], preprocess=run["preprocess"], progress=progress)
    net = build_model(arch)
    load_pretrained(net, run_dir / "checkpoint.pt", arch=arch)
    out = Path(out)
    pred_dir = out / "predictions"

    def save(volume, mask):
        save_prediction_nifti(volume, mask, pred_dir / f"{volume.id}.nii.gz", original_grid=original_grid)

    rows = score_volumes(net, arch, volumes, tolerances_mm=tolerances_mm, batch_size=batch_size,
                         on_prediction=save, progress=progress)
    write_scores(rows, out / "scores.csv")
    summary = {"kind": "predict", "model": str(run_dir.resolve()), "ids": chosen, "scores": rows,
               "predictions": str(pred_dir.resolve()), "original_grid": bool(original_grid)}
    if rows:
        summary["mean"] = {k: float(np.nanmean([r[k] for r in rows])) for k in rows[0] if k not in ("id", "domain")}
    return write_json_atomic(summary, out / SUMMARY) and summary
