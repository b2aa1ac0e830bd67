"""Checks of a results.csv before a report reads it: every line whole, the id fields present, each score in the
range of its metric, no run key twice. A problem is one InputError naming the file and the line."""
from __future__ import annotations

import csv
import math
from pathlib import Path

from ..errors import InputError
from ..data.budgets import budget_scans
from ..experiments.results import ID_COLUMNS

# id fields every row needs (layers, budget, seed and fold may be empty)
REQUIRED = ("run", "arch", "source", "target", "strategy", "case")


def metric_range(column: str):
    """(low, high) allowed for a metric column (NaN is always allowed: an empty mask), or None when unknown.

    Dice, surface Dice: [0, 1]; distances in mm: [0, inf]; pixel_error: [0, 100] (a fraction or a percent);
    adjusted Rand index: [-1, 1]."""
    if column == "dice" or column.startswith("surface_dice_"):
        return 0.0, 1.0
    if column.endswith("_mm"):
        return 0.0, math.inf
    if column == "pixel_error":
        return 0.0, 100.0
    if column == "ari":
        return -1.0, 1.0
    return None


def validate_results_file(path) -> None:
    """InputError '<path>:<line>: <problem>' for the first bad line of results.csv `path`; None when all are good.

    Lines are counted as in an editor (the header is line 1)."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None:
                return
            # known metrics only: another column (a flag, a label) is the scorer's business
            ranges = {c: metric_range(c) for c in header if c not in ID_COLUMNS and metric_range(c) is not None}
            seen = {}
            start = reader.line_num + 1
            for fields in reader:
                line, start = start, reader.line_num + 1
                if not fields:
                    continue
                where = f"{path}:{line}"
                if len(fields) != len(header):
                    raise InputError(f"{where}: {len(fields)} fields where the header has {len(header)} (a "
                                     "truncated or broken line); repair or delete the line, or re-run the grid")
                row = dict(zip(header, fields))
                missing = [c for c in REQUIRED if c in row and not row[c].strip()]
                if missing:
                    raise InputError(f"{where}: empty {missing[0]!r} (every row needs {', '.join(REQUIRED)})")
                if "budget" in row:
                    try:
                        budget_scans(row["budget"])
                    except InputError:
                        raise InputError(f"{where}: budget {row['budget']!r} is not N, N/k or empty") from None
                for column, limits in ranges.items():
                    _check_score(where, column, row[column], limits)
                key = tuple(row.get(c, "") for c in ID_COLUMNS)
                if key in seen:
                    raise InputError(f"{where}: run {row.get('run')!r} case {row.get('case')!r} repeats line "
                                     f"{seen[key]} (a duplicate row)")
                seen[key] = line
    except UnicodeDecodeError:
        raise InputError(f"{path}: not UTF-8 text") from None
    except csv.Error as exc:
        raise InputError(f"{path}: not a CSV table ({exc})") from None


def _check_score(where: str, column: str, text: str, limits) -> None:
    text = text.strip()
    if text.lower() in ("", "nan"):
        return
    try:
        value = float(text)
    except ValueError:
        raise InputError(f"{where}: {column} {text!r} is not a number") from None
    if math.isnan(value):
        return
    low, high = limits
    if not low <= value <= high:
        raise InputError(f"{where}: {column} {text} is outside [{low:g}, {high:g}]")
