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
