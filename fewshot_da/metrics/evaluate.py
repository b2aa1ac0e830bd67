"""Score predicted masks against ground truth: files or folders matched by case id -> metrics.csv, summary.json."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from fewshot_da.atomic import write_csv_atomic, write_json_atomic
from fewshot_da.data.datasets import CC359_NAME, MASK_SUFFIXES
from fewshot_da.data.io import IMAGE2D_SUFFIXES, NIFTI_SUFFIXES, is_image2d, strip_suffix
from fewshot_da.errors import InputError
from fewshot_da.metrics.masks import binarize, read_mask_file
from fewshot_da.metrics.scoring import DEFAULT_METRICS, check_metrics, check_tolerances, result_keys, score_case
from fewshot_da.metrics.summary import summarize

MASK_FILE_SUFFIXES = NIFTI_SUFFIXES + IMAGE2D_SUFFIXES
# nnU-Net's first-channel suffix, dropped like the data layer's mask suffixes
_CHANNEL_SUFFIX = "_0000"
_STRIPPED = sorted((s for s in MASK_SUFFIXES if s), key=len, reverse=True) + [_CHANNEL_SUFFIX]


def case_id(path: str | os.PathLike) -> str:
    """Case id of a mask file name, by the data layer's rules: a CC359 name gives its id (`CC0001`); otherwise
    the image suffix and one mask suffix (`_mask`, `_brain`, `_ss`, ... or nnU-Net's `_0000`) are removed."""
    name = Path(path).name
    cc359 = CC359_NAME.match(name)
    if cc359:
        return cc359.group(1)
    stem = strip_suffix(name)
    for suffix in _STRIPPED:
        if stem.endswith(suffix) and len(stem) > len(suffix):
            return stem[: -len(suffix)]
    return stem


_MASK_NAMED = [s for s in _STRIPPED if s != _CHANNEL_SUFFIX]
# whole words of a file stem, delimited by _ - . space or the stem's ends
_IMAGE_WORD = re.compile(r"(?:^|[_\-. ])(?:images?|imgs?)(?:$|[_\-. ])", re.IGNORECASE)
_MASK_WORD = re.compile(r"(?:^|[_\-. ])(?:masks?|segs?|labels?|gt)(?:$|[_\-. ])", re.IGNORECASE)
IMAGE_RULE = ("a file is an image when another one names its case as a mask (<case>, <case>_0000 or "
              "<case>_<tag with a letter> beside <case>_mask/_brain/_seg/_ss/_label; nnU-Net's <case>_0000 beside "
              "<case>), or when its name holds the word image or img beside mask-named files")


def _name_kind(path: Path) -> tuple[str, str]:
    """(case id, 'mask' | 'channel' | 'plain'): named as a mask (a mask suffix or CC359's _ss), as an nnU-Net
    channel file (_0000), or neither."""
    cc359 = CC359_NAME.match(path.name)
    if cc359:
        return cc359.group(1), "mask" if cc359.group(6) else "plain"
    stem = strip_suffix(path.name)
    for suffix in _MASK_NAMED:
        if stem.endswith(suffix) and len(stem) > len(suffix):
            return stem[: -len(suffix)], "mask"
    if stem.endswith(_CHANNEL_SUFFIX) and len(stem) > len(_CHANNEL_SUFFIX):
        return stem[: -len(_CHANNEL_SUFFIX)], "channel"
    return stem, "plain"


def image_files(files: Sequence[Path]) -> list[Path]:
    """The files of a ground-truth folder that are images lying beside the masks, by IMAGE_RULE (names only)."""
    kinds = {path: _name_kind(path) for path in files}
    masked = {cid for cid, kind in kinds.values() if kind == "mask"}
    plain = {cid for cid, kind in kinds.values() if kind == "plain"}
    mask_worded = bool(masked) or any(_MASK_WORD.search(strip_suffix(p.name)) for p in files)
    images = []
    for path, (cid, kind) in kinds.items():
        if kind == "mask":
            continue
        stem = strip_suffix(path.name)
        head, _, tag = cid.rpartition("_")
        tagged = bool(head) and head in masked and re.search("[A-Za-z]", tag) is not None  # _t1, _flair; not _2
        if (cid in masked or (kind == "channel" and cid in plain) or tagged
                or (mask_worded and _IMAGE_WORD.search(stem) and not _MASK_WORD.search(stem))):
            images.append(path)
    return images


def _index_folder(folder: Path, option: str, *, skip_images: bool = False) -> tuple[dict[str, Path], list[Path]]:
    """({case id: mask file}, image files skipped): `skip_images` drops the images of `image_files`."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.name.lower().endswith(MASK_FILE_SUFFIXES))
    skipped = image_files(files) if skip_images else []
    cases: dict[str, Path] = {}
    for path in files:
        if path in skipped:
            continue
        cid = case_id(path)
        if cid in cases:
            raise InputError(
                f"{option} {folder}: {cases[cid].name} and {path.name} both map to case id {cid!r}"
            )
        cases[cid] = path
    return cases, skipped


def match_cases(gt: str | os.PathLike, pred: str | os.PathLike) -> list[tuple[str, Path, Path]]:
    """(case id, gt file, pred file) pairs: two files, or two folders matched by case id (all gt cases needed);
    images lying beside the ground-truth masks are skipped (`image_files`)."""
    return _match_cases(gt, pred)[0]


def _match_cases(gt, pred) -> tuple[list[tuple[str, Path, Path]], dict[str, Path], list[Path]]:
    """(pairs, all gt cases, gt image files skipped)."""
    gt, pred = Path(gt), Path(pred)
    for option, path in (("--gt", gt), ("--pred", pred)):
        if not path.exists():
            raise InputError(f"{option} {path}: no such file or folder")
    if gt.is_file() and pred.is_file():
        return [(case_id(gt), gt, pred)], {case_id(gt): gt}, []
    if gt.is_dir() != pred.is_dir():
        raise InputError(f"--gt {gt} and --pred {pred} must both be files or both be folders")
    (gt_cases, skipped), (pred_cases, _) = _index_folder(gt, "--gt", skip_images=True), _index_folder(pred, "--pred")
    if not gt_cases:
        images = f"; {len(skipped)} file(s) there are images, not masks ({skipped[0].name})" if skipped else ""
        raise InputError(f"--gt {gt}: no mask files (.nii / .nii.gz / .png ...){images}")
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
    return [(cid, gt_cases[cid], pred_cases[cid]) for cid in common], gt_cases, skipped


def load_mask(path: Path, label: int | None = None, threshold: float | None = None, *, ground_truth: bool = False):
    """(binary mask, spacing_mm, affine, shape) of a 2D/3D NIfTI or 2D image; binarised by `masks.binarize`."""
    mask_file = read_mask_file(path)
    mask = binarize(mask_file.data, path, label=label, threshold=threshold, ground_truth=ground_truth)
    return mask, mask_file.spacing_mm, mask_file.affine, mask_file.data.shape


def _foreground_values(path: Path, limit: int = 6) -> list:
    """Up to `limit` distinct values > 0 of a mask file (for messages naming the labels it holds)."""
    values = np.unique(read_mask_file(path).data)
    return [float(v) if v != int(v) else int(v) for v in values[values > 0][:limit]]


def _without_singletons(shape) -> tuple:
    return tuple(n for n in shape if n != 1)


def _score_pair(pair, *, tolerances, metrics, label, threshold, num_threads) -> tuple[dict, dict]:
    """(row, flags) of one case. The threshold binarises the prediction only: the ground truth is a label
    mask. flags: `absent` (the label is in neither mask), `gt_empty` (empty ground truth after binarising),
    `label_only_in_pred` (the label is in the prediction but not in the ground truth)."""
    cid, gt_path, pred_path = pair
    gt_mask, spacing, gt_affine, gt_shape = load_mask(gt_path, label, None, ground_truth=True)
    pred_mask, _, pred_affine, pred_shape = load_mask(pred_path, label, threshold)
    if gt_shape != pred_shape:
        if _without_singletons(gt_shape) != _without_singletons(pred_shape):
            raise InputError(f"{gt_path} and {pred_path}: shapes differ {gt_shape} vs {pred_shape}")
        # a 2D image's mask against its one-slice NIfTI prediction (predict writes (H, W, 1)): the same grid
        spacing = tuple(s for s, n in zip(spacing, gt_shape) if n != 1) if len(gt_shape) > 2 else spacing
        gt_mask, pred_mask = np.squeeze(gt_mask), np.squeeze(pred_mask)
    if not np.allclose(gt_affine, pred_affine, rtol=1e-5, atol=1e-5):
        raise InputError(f"{gt_path} and {pred_path}: affines differ (not on the same grid)")
    gt_empty, pred_empty = not gt_mask.any(), not pred_mask.any()
    flags = {"absent": label is not None and gt_empty and pred_empty, "gt_empty": gt_empty,
             "label_only_in_pred": label is not None and gt_empty and not pred_empty}
    scores = score_case(
        gt_mask, pred_mask, spacing_mm=spacing, tolerances_mm=tolerances, num_threads=num_threads,
        metrics=metrics,
    )
    return {"case": cid, **{k: float(v) for k, v in scores.items()}}, flags


def _check_label_in_gt(results, pairs, label) -> None:
    """Refuse a --label that no ground-truth mask holds while a prediction does (a label numbering mismatch:
    every score would be that of an empty ground truth)."""
    if label is None or not results or not all(flags["gt_empty"] for _, flags in results):
        return
    only_pred = [pair for pair, (_, flags) in zip(pairs, results) if flags["label_only_in_pred"]]
    if not only_pred:
        return
    _, gt_path, pred_path = only_pred[0]
    held = _foreground_values(gt_path)
    raise InputError(
        f"--label {label}: no ground-truth mask holds it, but {len(only_pred)} prediction(s) do (first "
        f"{pred_path.name}); {gt_path.name} holds "
        f"{'labels ' + ', '.join(str(v) for v in held) if held else 'no foreground'}; check the label numbering"
    )


def _summary(rows: list[dict], keys: list[str], tolerances: list[float]) -> dict:
    """Per-case records plus `summarize` of every metric: mean/sd over finite values, NaN and inf counted."""
    summary = {"per_case": [dict(row) for row in rows], "mean": {}, "sd": {}, "n": {}, "n_nan": {}, "n_inf": {},
               "tolerances_mm": tolerances}
    for key in keys:
        stats = summarize(row[key] for row in rows)
        for field in ("mean", "sd", "n", "n_nan", "n_inf"):
            summary[field][key] = stats[field]
    return summary


def evaluate_paths(
    gt: str | os.PathLike,
    pred: str | os.PathLike,
    *,
    tolerances_mm: Sequence[float] = (1.0,),
    out_dir: str | os.PathLike | None = None,
    label: int | None = None,
    threshold: float | None = None,
    metrics: Sequence[str] | None = None,
    workers: int = 1,
    num_threads: int | None = None,
    progress: bool = False,
) -> dict:
    """Score every prediction against its ground truth and return the summary (also written to `out_dir`).

    `gt` / `pred` are mask files (NIfTI, or 2D images such as PNG with 1 mm pixels) or folders of them
    matched by `case_id`; image files beside the ground-truth masks are skipped by IMAGE_RULE (listed in
    `gt_images_skipped`). Each pair must share shape and affine. Masks must hold integers (binary, or a
    label map whose labels > 0 are merged), else pass `threshold` (prediction foreground = value >
    threshold; the ground truth is never thresholded) or `label` (value == label, in both; a label held by
    no ground truth but by a prediction is refused). `metrics` names what is computed (scoring.METRICS; default dice, sdsc, hd95,
    assd, plus pixel_error and ari when the masks are 2D images). `workers` cases are scored at once in
    threads (decoding and kernels release the GIL; each case then uses one kernel thread unless
    `num_threads` says otherwise). Writes `metrics.csv` and `summary.json` (per_case, and mean, sd, n,
    n_nan, n_inf per metric from `summarize`; NaN/inf as null; n_label_absent, n_gt_empty,
    n_label_only_in_pred, each with its cases; n_gt_unscored, gt_images_skipped) when
    `out_dir` is given. Raises InputError with a one-line message on bad input.
    """
    tolerances = list(check_tolerances(tolerances_mm))
    if label is not None and threshold is not None:
        raise InputError("--label and --threshold exclude each other (a label map or a probability map)")
    if threshold is not None and not math.isfinite(float(threshold)):
        raise InputError(f"--threshold must be finite, got {threshold!r}")
    if int(workers) != workers or workers < 1:
        raise InputError(f"--workers must be a positive integer, got {workers!r}")
    pairs, gt_cases, gt_images = _match_cases(gt, pred)
    if metrics is None:
        two_d = any(is_image2d(g) or is_image2d(p) for _, g, p in pairs)
        metrics = DEFAULT_METRICS + (("pixel_error", "ari") if two_d else ())
    metrics = check_metrics(metrics)
    keys = result_keys(metrics, tolerances)
    threads = num_threads if num_threads is not None or workers == 1 else 1
    score = lambda pair: _score_pair(
        pair, tolerances=tolerances, metrics=metrics, label=label, threshold=threshold, num_threads=threads
    )
    bar = None
    if progress and len(pairs) > 1:
        from tqdm import tqdm

        bar = tqdm(total=len(pairs), desc="scoring", unit="case", leave=False)
    results = []
    if workers == 1 or len(pairs) == 1:
        for pair in pairs:
            results.append(score(pair))
            if bar is not None:
                bar.update()
    else:
        with ThreadPoolExecutor(max_workers=min(int(workers), len(pairs))) as pool:
            futures = [pool.submit(score, pair) for pair in pairs]
            try:
                for future in futures:
                    results.append(future.result())
                    if bar is not None:
                        bar.update()
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)
                raise
    if bar is not None:
        bar.close()
    _check_label_in_gt(results, pairs, label)
    rows = [row for row, _ in results]
    summary = _summary(rows, keys, tolerances)
    summary["metrics"] = list(metrics)
    summary["label"] = label
    summary["threshold"] = threshold
    for flag, count, cases in (("absent", "n_label_absent", "label_absent_cases"),
                               ("gt_empty", "n_gt_empty", "gt_empty_cases"),
                               ("label_only_in_pred", "n_label_only_in_pred", "label_only_in_pred_cases")):
        summary[count] = sum(flags[flag] for _, flags in results)
        summary[cases] = [row["case"] for row, flags in results if flags[flag]]
    summary["n_gt_unscored"] = len(gt_cases) - len(rows)
    summary["gt_images_skipped"] = [p.name for p in gt_images]
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        write_csv_atomic(out / "metrics.csv", [{"case": row["case"], **{k: row[k] for k in keys}} for row in rows],
                         ["case"] + keys)
        write_json_atomic(out / "summary.json", summary)  # strict JSON: NaN/inf -> null, counted in n_nan/n_inf
    return summary


def format_table(summary: dict, max_rows: int = 20) -> str:
    """Plain-text table: one row per case (up to `max_rows`), then 'mean ± sd (n, NaN/inf counts)' per metric."""
    metrics = list(summary["mean"])
    cases = summary["per_case"]
    width = max([len("case")] + [len(r["case"]) for r in cases[:max_rows]] + [len("mean ± sd")])
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
        mean, sd = summary["mean"][m], summary["sd"][m]
        cells.append(f"  {_fmt(mean) + (' ± ' + _fmt(sd) if sd is not None else ''):>20}")
    lines.append("mean ± sd".ljust(width) + "".join(cells))
    notes = []
    for m in metrics:
        bad = [
            f"{summary[k][m]} {label}" for k, label in (("n_nan", "NaN"), ("n_inf", "inf")) if summary[k][m]
        ]
        if bad:
            notes.append(f"{m}: n={summary['n'][m]}, " + ", ".join(bad))
    if summary.get("n_gt_unscored"):
        notes.append(f"{summary['n_gt_unscored']} ground-truth case(s) without a prediction not scored")
    if summary.get("n_label_absent"):
        notes.append(f"label {summary['label']} absent from both masks in {summary['n_label_absent']} case(s)")
    empty = summary.get("n_gt_empty", 0) - summary.get("n_label_absent", 0)
    if empty:
        notes.append(f"ground truth empty in {empty} more case(s)" if summary.get("n_label_absent")
                     else f"ground truth empty in {empty} case(s)")
    lines.append(f"n = {len(cases)} case(s)" + ("; " + "; ".join(notes) if notes else ""))
    return "\n".join(lines)


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.4f}"
