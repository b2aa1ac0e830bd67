"""Score predicted NIfTI masks against ground truth: files or folders matched by case id -> metrics.csv, summary.json."""

from __future__ import annotations

import csv
import json
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fewshot_da.atomic import write_text_atomic
from fewshot_da.errors import InputError
from fewshot_da.metrics.scoring import score_case, surface_dice_key

NIFTI_SUFFIXES = (".nii.gz", ".nii")
# Mask-name suffixes dropped to get the case id: CC359 brain masks (`CC0001_philips_15_55_M_ss`), IXI-style
# `_brain` / `_mask`, and nnU-Net's first-channel suffix (`case_0000`).
_ID_SUFFIX = re.compile(r"(_ss|_brain|_mask|_0000)$")
# CC359 names carry vendor, field, age and sex after the id; the manifest (and `predict`) use the id alone.
_CC359_STEM = re.compile(r"^(CC\d{4})_(siemens|ge|philips)_(15|3)_\d+_[MF]$")


def case_id(path: str | os.PathLike) -> str:
    """Case id of a NIfTI file name: extension and one known mask/channel suffix removed."""
    name = Path(path).name
    for suffix in NIFTI_SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    name = _ID_SUFFIX.sub("", name)
    cc359 = _CC359_STEM.match(name)
    return cc359.group(1) if cc359 else name


def _index_folder(folder: Path, option: str) -> dict[str, Path]:
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.name.endswith(NIFTI_SUFFIXES))
    cases: dict[str, Path] = {}
    for path in files:
        cid = case_id(path)
        if cid in cases:
            raise InputError(
                f"{option} {folder}: {cases[cid].name} and {path.name} both map to case id {cid!r}"
            )
        cases[cid] = path
    return cases


def match_cases(gt: str | os.PathLike, pred: str | os.PathLike) -> list[tuple[str, Path, Path]]:
    """(case id, gt file, pred file) pairs: two files, or two folders matched by case id (all gt cases needed)."""
    gt, pred = Path(gt), Path(pred)
    for option, path in (("--gt", gt), ("--pred", pred)):
        if not path.exists():
            raise InputError(f"{option} {path}: no such file or folder")
    if gt.is_file() and pred.is_file():
        return [(case_id(gt), gt, pred)]
    if gt.is_dir() != pred.is_dir():
        raise InputError(f"--gt {gt} and --pred {pred} must both be files or both be folders")
    gt_cases, pred_cases = _index_folder(gt, "--gt"), _index_folder(pred, "--pred")
    if not gt_cases:
        raise InputError(f"--gt {gt}: no NIfTI files (.nii / .nii.gz)")
    common = sorted(set(gt_cases) & set(pred_cases))
    if not common:
        raise InputError(
            f"no matching case ids between --gt {gt} ({len(gt_cases)} cases, e.g. "
            f"{next(iter(gt_cases))!r}) and --pred {pred} ({len(pred_cases)} cases)"
        )
    # A prediction without ground truth is a mistake; ground truth without prediction is the usual case of a
    # test subset scored against a dataset's full mask folder (the count is reported, never hidden).
    orphans = sorted(set(pred_cases) - set(gt_cases))
    if orphans:
        raise InputError(
            f"--pred {pred}: {len(orphans)} prediction(s) have no ground truth in --gt {gt}, "
            f"first {orphans[0]!r} ({pred_cases[orphans[0]].name})"
        )
    return [(cid, gt_cases[cid], pred_cases[cid]) for cid in common]


def load_mask(path: Path, label: int | None = None):
    """(binary mask, spacing_mm, affine, shape) of a 2D/3D NIfTI; foreground = value > 0, or == `label`."""
    import zlib

    import nibabel as nib
    from nibabel.filebasedimages import ImageFileError

    try:
        image = nib.load(str(path))
        data = np.asanyarray(image.dataobj)
    except (ImageFileError, OSError, ValueError, EOFError, zlib.error) as exc:
        raise InputError(f"{path}: cannot read NIfTI ({exc})".splitlines()[0]) from None
    if data.ndim not in (2, 3):
        raise InputError(f"{path}: expected a 2D or 3D mask, got shape {data.shape}")
    if np.issubdtype(data.dtype, np.floating) and not np.all(np.isfinite(data)):
        raise InputError(f"{path}: mask contains NaN or infinite values")
    mask = data > 0 if label is None else data == label
    spacing = tuple(float(z) for z in image.header.get_zooms()[: data.ndim])
    if not all(math.isfinite(s) and s > 0 for s in spacing):
        raise InputError(f"{path}: header voxel spacing {spacing} is not positive")
    return mask, spacing, np.asarray(image.affine, dtype=float), data.shape


def _summary(rows: list[dict], metrics: list[str], tolerances: list[float]) -> dict:
    """Per-case records plus mean/std over finite values; NaN and inf are counted, never averaged away."""
    summary = {
        "per_case": [],
        "mean": {},
        "std": {},
        "n": {},
        "n_nan": {},
        "n_inf": {},
        "tolerances_mm": tolerances,
    }
    summary["per_case"] = [dict(row) for row in rows]
    for metric in metrics:
        values = np.array([row[metric] for row in rows], dtype=float)
        finite = values[np.isfinite(values)]
        summary["n"][metric] = int(finite.size)
        summary["n_nan"][metric] = int(np.isnan(values).sum())
        summary["n_inf"][metric] = int(np.isinf(values).sum())
        summary["mean"][metric] = float(finite.mean()) if finite.size else None
        summary["std"][metric] = float(finite.std(ddof=1)) if finite.size > 1 else None
    return summary


def evaluate_paths(
    gt: str | os.PathLike,
    pred: str | os.PathLike,
    *,
    tolerances_mm: Sequence[float] = (1.0,),
    out_dir: str | os.PathLike | None = None,
    label: int | None = None,
    num_threads: int | None = None,
    progress: bool = True,
) -> dict:
    """Score every prediction against its ground truth and return the summary (also written to `out_dir`).

    `gt` / `pred` are NIfTI files or folders whose files are matched by case id (`case_id`: CC359 `_ss`,
    `_brain`, `_mask` and nnU-Net `_0000` suffixes are ignored). Each pair must share shape and affine;
    masks are binarised (> 0, or == `label`) and scored with the header spacing by `score_case`.
    Writes `metrics.csv` (case, dice, surface_dice_<tol>mm..., hd95_mm, assd_mm) and `summary.json`
    (per_case, mean, std, n, n_nan, n_inf per metric; mean/std over the finite values; NaN/inf written as
    null) when `out_dir` is given; the returned dict keeps them as floats. Raises InputError with a one-line message on bad input.
    """
    tolerances = [float(t) for t in tolerances_mm]
    if not tolerances or not all(t >= 0 and math.isfinite(t) for t in tolerances):
        raise InputError(f"--tolerance values must be finite and >= 0, got {tolerances_mm!r}")
    pairs = match_cases(gt, pred)
    metrics = ["dice"] + [surface_dice_key(t) for t in tolerances] + ["hd95_mm", "assd_mm"]
    iterator = pairs
    if progress and len(pairs) > 1:
        from tqdm import tqdm

        iterator = tqdm(pairs, desc="scoring", unit="case", leave=False)
    rows = []
    for cid, gt_path, pred_path in iterator:
        gt_mask, spacing, gt_affine, gt_shape = load_mask(gt_path, label)
        pred_mask, _, pred_affine, pred_shape = load_mask(pred_path, label)
        if gt_shape != pred_shape:
            raise InputError(f"{gt_path} and {pred_path}: shapes differ {gt_shape} vs {pred_shape}")
        if not np.allclose(gt_affine, pred_affine, rtol=1e-5, atol=1e-5):
            raise InputError(f"{gt_path} and {pred_path}: affines differ (not on the same grid)")
        scores = score_case(
            gt_mask, pred_mask, spacing_mm=spacing, tolerances_mm=tolerances, num_threads=num_threads
        )
        rows.append({"case": cid, **{m: float(scores[m]) for m in metrics}})
    summary = _summary(rows, metrics, tolerances)
    gt_path = Path(gt)
    summary["n_gt_unscored"] = (len(_index_folder(gt_path, "--gt")) - len(rows)) if gt_path.is_dir() else 0
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        with open(out / "metrics.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["case"] + metrics)
            for row in rows:
                writer.writerow([row["case"]] + [repr(row[m]) for m in metrics])
        write_text_atomic(out / "summary.json",
                          json.dumps(_json_safe(summary), indent=2, sort_keys=True, allow_nan=False) + "\n")
    return summary


def _json_safe(value):
    """NaN / inf -> None, so summary.json is strict JSON (counts of each stay in n_nan / n_inf)."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def format_table(summary: dict, max_rows: int = 20) -> str:
    """Plain-text table: one row per case (up to `max_rows`), then 'mean ± std (n, NaN/inf counts)' per metric."""
    metrics = list(summary["mean"])
    cases = summary["per_case"]
    width = max([len("case")] + [len(r["case"]) for r in cases[:max_rows]] + [len("mean ± std")])
    header = "case".ljust(width) + "".join(f"  {m:>20}" for m in metrics)
    lines = [header, "-" * len(header)]
    for row in cases[:max_rows]:
        cells = "".join(f"  {_fmt(row[m]):>20}" for m in metrics)
        lines.append(row["case"].ljust(width) + cells)
    if len(cases) > max_rows:
        lines.append(f"... {len(cases) - max_rows} more case(s)")
    lines.append("-" * len(header))
    cells = []
    for m in metrics:
        mean, std = summary["mean"][m], summary["std"][m]
        cells.append(f"  {_fmt(mean) + (' ± ' + _fmt(std) if std is not None else ''):>20}")
    lines.append("mean ± std".ljust(width) + "".join(cells))
    notes = []
    for m in metrics:
        bad = [
            f"{summary[k][m]} {label}" for k, label in (("n_nan", "NaN"), ("n_inf", "inf")) if summary[k][m]
        ]
        if bad:
            notes.append(f"{m}: n={summary['n'][m]}, " + ", ".join(bad))
    if summary.get("n_gt_unscored"):
        notes.append(f"{summary['n_gt_unscored']} ground-truth case(s) without a prediction not scored")
    lines.append(f"n = {len(cases)} case(s)" + ("; " + "; ".join(notes) if notes else ""))
    return "\n".join(lines)


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.4f}"
