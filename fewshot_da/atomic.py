"""Atomic file writes: write a temporary file beside the target, then rename it over the target.

A reader, a parallel run or a kill -9 at any moment sees the old file or the new one, never half of one.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def atomic_path(path) -> Iterator[Path]:
    """Yield a temporary path beside `path` to write to; on success it replaces `path`, on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text_atomic(path, text: str) -> Path:
    """Write `text` to `path` atomically; returns `path`."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def to_strict_json(value):
    """`value` with NaN/inf floats as None and NumPy scalars/arrays and paths as plain Python (strict JSON)."""
    import math

    import numpy as np

    if isinstance(value, dict):
        return {str(k): to_strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_strict_json(v) for v in value]
    if isinstance(value, np.ndarray):
        return to_strict_json(value.tolist())
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, Path):
        return str(value)
    return value


def write_json_atomic(path, data) -> Path:
    """Strict JSON (NaN -> null, sorted keys, 2-space indent), written atomically; returns `path`."""
    import json

    return write_text_atomic(path, json.dumps(to_strict_json(data), indent=2, sort_keys=True, allow_nan=False) + "\n")


def format_cell(value) -> str:
    """One CSV cell: floats with 6 significant decimals ('nan' kept, never dropped), the rest as str."""
    import math

    if isinstance(value, float):
        return f"{value:.6f}" if math.isfinite(value) else ("nan" if math.isnan(value) else str(value))
    return "" if value is None else str(value)


def write_csv_atomic(path, rows, columns=None) -> Path:
    """CSV of dict rows (columns: given, else the union in first-seen order), written atomically; returns `path`."""
    import csv
    import io

    columns = list(columns) if columns is not None else list(dict.fromkeys(k for row in rows for k in row))
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([format_cell(row.get(c)) for c in columns])
    return write_text_atomic(path, buffer.getvalue())
