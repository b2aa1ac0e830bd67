"""The study's long table, results.csv: one row per run x test case, built from finished run folders.

Every finished run folder's `summary.json` carries `spec` (what the run is: kind, arch, source, target, strategy,
layers, budget, seed, fold) and `scores` (one dict per test case). A results row is the spec's identifying
fields plus one case's metrics. The grid appends rows as runs finish (`append_results`) and writes the final
table in canonical order (`write_results`), so a grid interrupted and re-run gives the same file.
"""
from __future__ import annotations

import csv
import fcntl
import json
import os
from fractions import Fraction
from pathlib import Path
from typing import Iterable, Optional, Sequence

from ..atomic import format_cell, write_csv_atomic
from ..errors import InputError

ID_COLUMNS = ("run", "arch", "source", "target", "strategy", "layers", "budget", "seed", "fold", "case")
METRIC_ORDER = ("dice", "surface_dice_*", "hd95_mm", "assd_mm", "pixel_error_pct", "ari")
_SCORE_RENAMES = {"id": "case", "adjusted_rand_index": "ari"}  # pixel_error_pct keeps its unit in its name


def budget_label(scans: Optional[int] = None, slices_k: Optional[int] = None, images: bool = False) -> str:
    """'3', '1' (scans or images), '1/48' (1/k of one scan's slices) or '' (no target labels)."""
    if scans is None:
        return ""
    if slices_k and slices_k > 1:
        return f"{int(scans)}/{int(slices_k)}" if scans != 1 else f"1/{int(slices_k)}"
    return str(int(scans))


def budget_scans(label: str) -> float:
    """A budget label as a number of scans (1/48 -> 0.0208); '' (no labels) -> 0."""
    label = str(label).strip()
    if not label:
        return 0.0
    try:
        return float(Fraction(label))
    except (ValueError, ZeroDivisionError):
        raise InputError(f"budget {label!r} is not N or 1/k") from None


def metric_columns(columns: Iterable[str]) -> list:
    """Metric columns in the table's canonical order (dice, surface Dice by tolerance, HD95, ASSD, 2D metrics)."""
    columns = [c for c in dict.fromkeys(columns) if c not in ID_COLUMNS and c != "domain"]

    def key(c):
        if c.startswith("surface_dice_"):
            tol = c[len("surface_dice_"):].removesuffix("mm")
            return (1, float(tol) if tol.replace(".", "", 1).isdigit() else 0.0, c)
        return (METRIC_ORDER.index(c) if c in METRIC_ORDER else len(METRIC_ORDER), 0.0, c)

    return sorted(columns, key=key)


def rows_from_summary(summary: dict, run: str, **overrides) -> list:
    """Results rows of one finished run: its spec's identifying fields (overridden by `overrides`, e.g.
    strategy='baseline') and one row per scored case."""
    spec = dict(summary.get("spec") or {})
    spec.update(overrides)
    base = {"run": run}
    for column in ID_COLUMNS[1:-1]:
        value = spec.get(column)
        base[column] = "" if value is None else value
    rows = []
    for score in summary.get("scores") or []:
        row = dict(base)
        for key, value in score.items():
            if key == "domain":
                continue
            row[_SCORE_RENAMES.get(key, key)] = value
        rows.append(row)
    return rows


def collect_runs(run_dirs: Sequence, **overrides) -> list:
    """Results rows of finished run folders (named by their folder name); an unfinished folder is an error."""
    rows = []
    for run_dir in run_dirs:
        path = Path(run_dir) / "summary.json"
        if not path.is_file():
            raise InputError(f"{run_dir}: not a finished run folder (no summary.json)")
        try:
            summary = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InputError(f"{path}: not valid JSON ({exc})") from None
        rows.extend(rows_from_summary(summary, Path(run_dir).name, **overrides))
    return rows


def _columns(rows) -> list:
    return list(ID_COLUMNS) + metric_columns(k for row in rows for k in row)


def _sort_key(row):
    return tuple(str(row.get(c, "")) for c in ID_COLUMNS)


def write_results(path, rows: Sequence[dict]) -> Path:
    """results.csv in canonical order (sorted by the id columns), written atomically."""
    return write_csv_atomic(path, sorted(rows, key=_sort_key), _columns(rows))


def append_results(path, rows: Sequence[dict]) -> Path:
    """Append rows under an exclusive lock (several slots may finish at once); the header is written once.

    A new metric column appearing later rewrites the file with the widened header.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        existing = read_results(path) if path.is_file() and path.stat().st_size else []
        columns = _columns(existing + list(rows))
        if existing and columns != list(existing[0].keys()):
            write_csv_atomic(path, existing + list(rows), columns)
            return path
        with open(path, "a", newline="") as f:
            writer = csv.writer(f, lineterminator="\n")
            if not existing:
                writer.writerow(columns)
            for row in rows:
                writer.writerow([format_cell(row.get(c)) for c in columns])
            f.flush()
            os.fsync(f.fileno())
    return path


def read_results(path) -> list:
    """Rows of a results.csv as dicts; metric cells as floats (NaN kept), id cells as strings."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: results table not found")
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames is None or "case" not in reader.fieldnames:
                raise InputError(f"{path}: not a results table (no 'case' column)")
            rows = []
            for row in reader:
                rows.append({k: (v if k in ID_COLUMNS else _float(v)) for k, v in row.items()})
    except UnicodeDecodeError:
        raise InputError(f"{path}: not UTF-8 text") from None
    return rows


def _float(text):
    try:
        return float(text)
    except (TypeError, ValueError):
        return float("nan")
