"""Atomic file writes: write a temporary file beside the target, then rename it over the target.

A reader, a parallel run or a kill -9 at any moment sees the old file or the new one, never half of one.
"""
from __future__ import annotations

import errno
import os
import re
import time
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

# Below this many free bytes after a failed write, the failure is taken to be a full disk (torch.save
# reports ENOSPC as a RuntimeError "unexpected pos ..." / "file write failed", without the errno).
_NEARLY_FULL_BYTES = 1 << 20
# A temporary file of a dead pid older than this (seconds) is a kill's leftover and is removed.
_STALE_TMP_AGE_S = 60


class DiskFullError(OSError):
    """No space left on the device (or quota) while writing `filename`; str() is that one line."""

    def __str__(self) -> str:
        return f"no space left on device writing {self.filename}"


def is_disk_full(exc: BaseException, path) -> bool:
    """Whether `exc`, raised while writing `path`, means the file system is full."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    if not isinstance(exc, (OSError, RuntimeError)):
        return False
    folder = Path(path).parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        stat = os.statvfs(folder)
    except OSError:
        return False
    return stat.f_bavail * stat.f_frsize < _NEARLY_FULL_BYTES


def _remove_stale_temporaries(path: Path) -> None:
    """Remove `<name>.tmp<pid>` files beside `path` left by killed writers (dead pid, older than a minute)."""
    pattern = re.compile(re.escape(path.name) + r"\.tmp(\d+)$")
    try:
        candidates = [p for p in path.parent.iterdir() if p.name.startswith(path.name + ".tmp")]
    except OSError:
        return
    for candidate in candidates:
        match = pattern.match(candidate.name)
        if not match or int(match[1]) == os.getpid():
            continue
        try:
            os.kill(int(match[1]), 0)
            continue  # the writer is alive
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        try:
            if time.time() - candidate.stat().st_mtime > _STALE_TMP_AGE_S:
                candidate.unlink()
        except OSError:
            pass


@contextmanager
def atomic_path(path) -> Iterator[Path]:
    """Yield a temporary path beside `path` to write to; on success it replaces `path`, on error it is removed.

    A full disk while writing raises DiskFullError naming `path` ("no space left on device writing ...").
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        if is_disk_full(exc, path):
            raise DiskFullError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) from None
        raise
    _remove_stale_temporaries(path)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    except Exception as exc:
        if not is_disk_full(exc, tmp):
            raise
        # torch.save's failed writer keeps the file open from its frame's locals, so the deleted temporary
        # would hold its disk space as long as the exception lives: drop those locals first.
        chained = exc
        while chained is not None:
            traceback.clear_frames(chained.__traceback__)
            chained = chained.__cause__ or chained.__context__
        full = DiskFullError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
    else:
        full = None
    finally:
        if tmp.exists():
            tmp.unlink()
    if full is not None:
        raise full


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
    """One CSV cell: floats in their shortest exact form ('nan' and 'inf' kept, never dropped), the rest as str."""
    if isinstance(value, float):
        return repr(float(value))
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
