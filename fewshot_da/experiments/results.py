"""The study's long table, results.csv: one row per run x test case, built from finished run folders.

Every finished run folder's `summary.json` carries `spec` (what the run is: kind, arch, source, target, strategy,
layers, budget, seed, fold) and `scores` (one dict per test case). A results row is the spec's identifying
fields plus one case's metrics. The grid appends rows as runs finish (`append_results`) and writes the final
table in canonical order (`write_results`), so a grid interrupted and re-run gives the same file.
"""
from __future__ import annotations

import csv
import fcntl
import io
import json
import os
import warnings
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

from ..atomic import format_cell, write_csv_atomic
from ..data.manifest import BINARY_FOREGROUND
from ..errors import InputError

ID_COLUMNS = ("run", "arch", "source", "target", "strategy", "layers", "budget", "seed", "fold", "case", "label")
METRIC_ORDER = ("dice", "surface_dice_*", "hd95_mm", "assd_mm", "pixel_error_pct", "ari")
_SCORE_RENAMES = {"id": "case", "adjusted_rand_index": "ari"}  # pixel_error_pct keeps its unit in its name


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
    strategy='baseline') and one row per scored case and label (`label`: for a binary run, its foreground's name)."""
    spec = dict(summary.get("spec") or {})
    spec.update(overrides)
    base = {"run": run}
    for column in ID_COLUMNS[1:-2]:
        value = spec.get(column)
        base[column] = "" if value is None else value
    labels = list(summary.get("labels") or spec.get("labels") or {})  # a label set's names, background first
    rows = []
    for score in summary.get("scores") or []:
        row = dict(base)
        for key, value in score.items():
            if key == "domain":
                continue
            row[_SCORE_RENAMES.get(key, key)] = value
        row.setdefault("label", labels[1] if len(labels) == 2 else BINARY_FOREGROUND)
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


def _lock(path: Path):
    """The exclusive lock of results.csv (an flock on `results.csv.lock`, dropped by the kernel on kill -9)."""
    handle = open(path.with_name(path.name + ".lock"), "a")
    fcntl.flock(handle, fcntl.LOCK_EX)
    return handle


def _drop_partial_tail(path: Path) -> Optional[int]:
    """Cut a half-written last row (no line end: its writer was killed mid-line) off `path`; returns the cut
    row's 1-based line number, or None when the file ends with a whole line. Call it under the lock."""
    with open(path, "rb+") as f:
        size = f.seek(0, os.SEEK_END)
        if not size:
            return None
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return None
        f.seek(0)
        data = f.read()
        keep = data.rfind(b"\n") + 1
        f.truncate(keep)
        f.flush()
        os.fsync(f.fileno())
        return data.count(b"\n", 0, keep) + 1


def _lines(rows: Sequence[dict], columns: Sequence[str], header: bool) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    if header:
        writer.writerow(columns)
    for row in rows:
        writer.writerow([format_cell(row.get(c)) for c in columns])
    return buffer.getvalue().encode("utf-8")


def _header_and_keys(path: Path) -> tuple:
    """(header, {(run, case)} of the rows already in the file)."""
    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        reader = csv.reader(f)
        header = next(reader, [])
        if "run" not in header or "case" not in header:
            return header, set()
        run, case = header.index("run"), header.index("case")
        return header, {(r[run], r[case]) for r in reader if len(r) == len(header)}


def append_results(path, rows: Sequence[dict], *, log: Optional[Callable] = None) -> Path:
    """Append rows as whole lines under an exclusive lock (several slots, array tasks or grids may finish at
    once); the header is written once, and a run appended again replaces its earlier rows (never twice).
    All rows go down in one write() on an O_APPEND descriptor, so a kill leaves at most one half-written last
    line, which the next append cuts off (the grid rewrites every finished run's rows from its summary at the
    end). A new metric column rewrites the file, widened."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _lock(path):
        if path.is_file():
            cut = _drop_partial_tail(path)
            if cut is not None and log is not None:
                log(f"{path} line {cut}: a half-written row (its writer was killed) was removed")
        header, have = _header_and_keys(path) if path.is_file() and path.stat().st_size else ([], set())
        again = {str(r.get("run")) for r in rows if (str(r.get("run")), str(r.get("case"))) in have}
        columns = _columns([dict.fromkeys(header)] + list(rows)) if header else _columns(rows)
        if header and (columns != header or again):  # a wider header, or a run appended again: rewrite
            existing = [r for r in read_results(path, log=log) if r["run"] not in again]
            write_csv_atomic(path, existing + list(rows), _columns(existing + list(rows)))
            return path
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            data = _lines(rows, columns, header=not header)
            while data:
                data = data[os.write(fd, data):]
            os.fsync(fd)
        finally:
            os.close(fd)
    return path


def rewrite_results(path, rows: Sequence[dict]) -> Path:
    """write_results under the lock of `append_results` (no append lands on a file being replaced)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _lock(path):
        return write_results(path, rows)


def read_results(path, *, log: Optional[Callable] = None) -> list:
    """Rows of a results.csv as dicts; metric cells as floats (NaN kept), id cells as strings.

    A malformed line (a field count other than the header's, or a last line without its line end: a row
    whose writer was killed) is skipped and named, file and line number, through `log` (default: a warning).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: results table not found")
    report = log if log is not None else (lambda message: warnings.warn(message, stacklevel=3))
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{path}: not UTF-8 text") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader, None)
    if not header or "case" not in header:
        raise InputError(f"{path}: not a results table (no 'case' column)")
    rows, whole = [], text.endswith("\n")
    last_line = text.count("\n") + (0 if whole else 1)
    while True:
        start = reader.line_num + 1
        try:
            fields = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            report(f"{path} line {start}: not CSV ({exc}); line skipped")
            continue
        if not fields:
            continue
        if not whole and reader.line_num == last_line:
            report(f"{path} line {start}: a half-written row (no line end); line skipped")
            continue
        if len(fields) != len(header):
            report(f"{path} line {start}: {len(fields)} fields, the header has {len(header)}; line skipped")
            continue
        row = {k: (v if k in ID_COLUMNS else _float(v)) for k, v in zip(header, fields)}
        row.setdefault("label", BINARY_FOREGROUND)  # tables written before the column: binary runs
        rows.append(row)
    return rows


def _float(text):
    try:
        return float(text)
    except (TypeError, ValueError):
        return float("nan")
