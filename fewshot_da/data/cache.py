"""The preprocessing cache: one folder per (scan, options, file identity) with slice-major image.npy / mask.npy and
meta.json, written under a temporary name and renamed, CRC-checked when opened, rebuilt when damaged; and
`preprocess_manifest`, which fills it (in parallel) and opens the entries by memory map.

Layout, keys and integrity are described in `fewshot_da.data.preprocess`.
"""
from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import os
import re
import shutil
import socket
import sys
import threading
import time
import uuid
import zlib
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from fewshot_da.atomic import DiskFullError, is_disk_full, write_text_atomic
from fewshot_da.data.checks import spacing_disagreement
from fewshot_da.data.io import is_image2d
from fewshot_da.data.manifest import Record
from fewshot_da.data.preprocess import CACHE_VERSION, PRESETS, PreprocessOptions, preprocess_record
from fewshot_da.errors import InputError




class CorruptCacheError(InputError):
    """A cache entry that fails its checks; str() names the file. `preprocess_manifest` rebuilds it."""


@dataclass(frozen=True)
class CachedVolume:
    """A preprocessed scan. `image` (S, H, W) float32/float16 and `mask` (S, H, W) uint8 0/1 are slice-major
    memory maps; `spacing_mm` is in the same (S, H, W) order. `affine` maps the preprocessed grid in its
    array-axis order (the file's order, or RAS order when reoriented; use `to_array_order`) to world mm; `original_affine`/`original_shape`
    describe the source file's grid.
    """

    id: str
    domain: str
    image: np.ndarray
    mask: np.ndarray
    spacing_mm: tuple
    affine: np.ndarray
    slice_axis: int
    original_affine: np.ndarray
    original_shape: tuple
    reoriented: bool
    path: str

    @property
    def n_slices(self) -> int:
        return int(self.image.shape[0])

    def to_array_order(self, x: np.ndarray) -> np.ndarray:
        """Slice-major (S, H, W) -> the preprocessed grid's array order (matches `affine`)."""
        return np.moveaxis(np.asarray(x), 0, self.slice_axis)

    def to_slice_major(self, x: np.ndarray) -> np.ndarray:
        return np.moveaxis(np.asarray(x), self.slice_axis, 0)


def _file_identity(path: str, mode: str) -> str:
    p = Path(path)
    if mode == "content":
        digest = hashlib.sha1()
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        return digest.hexdigest()
    st = p.stat()
    return f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}"


def cache_key(record: Record, options: PreprocessOptions) -> str:
    """16 hex digits identifying (record files, options); raises InputError for a missing file."""
    for path in filter(None, (record.image, record.mask)):
        if not Path(path).is_file():
            raise InputError(f"{path}: file not found (scan {record.id})")
    # resize/histogram are left out while unset, so entries cached before they existed keep their keys
    fields = {k: v for k, v in dataclasses.asdict(options).items() if v is not None or k not in ("resize", "histogram")}
    parts = [json.dumps(fields, sort_keys=True), str(CACHE_VERSION),
             _file_identity(record.image, options.cache_key),
             _file_identity(record.mask, options.cache_key) if record.mask else "no mask"]
    if record.spacing_mm is not None and is_image2d(record.image):
        parts.append(f"pixel spacing {record.spacing_mm}")  # the manifest sets a 2D image's geometry
    if options.histogram is not None:
        from fewshot_da.data.harmonize import histogram_digest

        parts.append(f"histogram {histogram_digest(options.histogram)}")
    return hashlib.sha1("\n".join(parts).encode()).hexdigest()[:16]


def _safe_name(scan_id: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in scan_id)


def _entry_dir(cache_dir: Path, record: Record, options: PreprocessOptions) -> Path:
    return cache_dir / f"{_safe_name(record.id)}-{cache_key(record, options)}"


_HOST = socket.gethostname().replace("@", "_")


_TMP_NAME = re.compile(r"^\.tmp-.*@(?P<host>[^@]*)@(?P<pid>\d+)-[0-9a-f]{8}$")


# Temporary folders in another format, or from another host, are removed once this old (seconds).
_FOREIGN_TMP_AGE_S = 24 * 3600


def _tmp_dir(cache_dir: Path, name: str) -> Path:
    """A temporary folder name carrying host and pid, so the next run can tell a dead writer's leftovers."""
    return cache_dir / f".tmp-{name}@{_HOST}@{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale_temporaries(cache_dir) -> list[Path]:
    """Remove `.tmp-*` folders of killed writers (same host and a dead pid; others after 24 h); returns them."""
    removed = []
    for path in Path(cache_dir).glob(".tmp-*"):
        match = _TMP_NAME.match(path.name)
        if match and match["host"] == _HOST:
            stale = not _pid_alive(int(match["pid"]))
        else:
            try:
                stale = time.time() - path.stat().st_mtime > _FOREIGN_TMP_AGE_S
            except FileNotFoundError:
                continue
        if stale:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _crc32(array: np.ndarray) -> int:
    return zlib.crc32(memoryview(np.ascontiguousarray(array)).cast("B"))


def _write_file(path: Path, write, shown: Path) -> None:
    """Run write(path); a full disk becomes DiskFullError naming `shown` (the file's place in the entry)."""
    try:
        write(path)
    except Exception as exc:
        if is_disk_full(exc, path):
            raise DiskFullError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(shown)) from None
        raise


def _write_entry(record: Record, options: PreprocessOptions, cache_dir: str) -> str:
    """Preprocess one record into its cache folder unless it is there already; returns the folder."""
    cache_dir = Path(cache_dir)
    final = _entry_dir(cache_dir, record, options)
    if (final / "meta.json").is_file():
        return str(final)
    image, mask, meta = preprocess_record(record, options)
    axis = options.slice_axis
    image = np.ascontiguousarray(np.moveaxis(image, axis, 0))
    mask = np.ascontiguousarray(np.moveaxis(mask, axis, 0))
    meta["dtype"] = {"image": str(image.dtype), "mask": str(mask.dtype)}
    meta["crc32"] = {"image": _crc32(image), "mask": _crc32(mask)}
    tmp = _tmp_dir(cache_dir, final.name)
    try:
        _write_file(tmp, lambda p: p.mkdir(parents=True), final)
        _write_file(tmp / "image.npy", lambda p: np.save(p, image), final / "image.npy")
        _write_file(tmp / "mask.npy", lambda p: np.save(p, mask), final / "mask.npy")
        _write_file(tmp / "meta.json", lambda p: p.write_text(json.dumps(meta, indent=1)), final / "meta.json")
        try:
            os.rename(tmp, final)
        except OSError:  # another process finished the same entry first
            if not (final / "meta.json").is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return str(final)


def _read_meta(folder: Path) -> dict:
    meta_path = folder / "meta.json"
    if not meta_path.is_file():
        raise CorruptCacheError(f"{meta_path}: missing; not a complete preprocessed cache entry")
    try:
        meta = json.loads(meta_path.read_text())
        for key in ("id", "domain", "spacing_mm", "shape", "affine", "slice_axis", "original_affine",
                    "original_shape", "reoriented"):
            meta[key]
    except (ValueError, KeyError, TypeError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        reason = f"no {exc}" if isinstance(exc, KeyError) else str(exc).splitlines()[0]
        raise CorruptCacheError(f"{meta_path}: unreadable cache metadata ({reason})") from None
    return meta


# np.load parses each .npy header with ast.literal_eval, and CPython 3.11 can raise a spurious "SystemError: AST
# constructor recursion depth mismatch" when threads parse at the same time (the AST state's depth counter is
# shared; CPython gh-106905). The threaded cache opening of `preprocess_manifest` hit it once in a 135-run grid
# on 3.11.7, so headers are parsed one at a time.
_NPY_HEADER_LOCK = threading.Lock()


def _load_array(path: Path, mode, shape, dtype, crc):
    try:
        with _NPY_HEADER_LOCK:  # mmap mode: only the header is read here; the CRC pass below runs in parallel
            array = np.load(path, mmap_mode=mode, allow_pickle=False)
    except FileNotFoundError:
        raise CorruptCacheError(f"{path}: missing from its cache entry") from None
    except (ValueError, OSError, EOFError) as exc:  # truncated data or header
        raise CorruptCacheError(f"{path}: unreadable cache array ({str(exc).splitlines()[0]})") from None
    if tuple(array.shape) != tuple(shape) or (dtype is not None and str(array.dtype) != dtype):
        raise CorruptCacheError(f"{path}: holds {array.dtype} {tuple(array.shape)}, meta.json says "
                                f"{dtype or 'an array of'} {tuple(shape)}")
    if crc is not None and _crc32(array) != crc:
        raise CorruptCacheError(f"{path}: CRC-32 mismatch (the file changed after it was written)")
    return array


def open_cached(folder, *, mmap: bool = True, verify: bool = True) -> CachedVolume:
    """Open a cache folder written by `preprocess_manifest` (memory-mapped, read-only).

    verify: check shapes, dtypes and the CRC-32 of both arrays (reads them once, ~0.2 ms per MiB).
    Raises CorruptCacheError naming the file when a check fails.
    """
    folder = Path(folder)
    meta = _read_meta(folder)
    mode = "r" if mmap else None
    shape = tuple(meta["shape"])
    dtypes, crcs = meta.get("dtype", {}), (meta.get("crc32", {}) if verify else {})
    image = _load_array(folder / "image.npy", mode, shape, dtypes.get("image"), crcs.get("image"))
    mask = _load_array(folder / "mask.npy", mode, shape, dtypes.get("mask", "uint8"), crcs.get("mask"))
    try:
        volume = CachedVolume(
            id=meta["id"], domain=meta["domain"], image=image, mask=mask,
            spacing_mm=tuple(meta["spacing_mm"]), affine=np.array(meta["affine"], dtype=np.float64),
            slice_axis=int(meta["slice_axis"]), original_affine=np.array(meta["original_affine"], dtype=np.float64),
            original_shape=tuple(meta["original_shape"]), reoriented=bool(meta["reoriented"]), path=str(folder),
        )
    except (ValueError, TypeError) as exc:
        raise CorruptCacheError(f"{folder / 'meta.json'}: unreadable cache metadata ({exc})") from None
    if verify and "crc32" not in meta:  # an entry from before checksums: add them now
        meta["dtype"] = {"image": str(image.dtype), "mask": str(mask.dtype)}
        meta["crc32"] = {"image": _crc32(image), "mask": _crc32(mask)}
        try:
            write_text_atomic(folder / "meta.json", json.dumps(meta, indent=1))
        except OSError:
            pass  # a read-only cache stays usable, unverified
    return volume


def _remove_entry(folder: Path) -> None:
    """Move an entry aside under a temporary name (atomic), then delete it."""
    doomed = _tmp_dir(folder.parent, folder.name)
    try:
        os.rename(folder, doomed)
    except FileNotFoundError:  # another process removed it first
        return
    shutil.rmtree(doomed, ignore_errors=True)


def _open_or_error(folder: Path):
    """(open_cached(folder), None), or (None, the CorruptCacheError)."""
    try:
        return open_cached(folder), None
    except CorruptCacheError as exc:
        return None, exc


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def preprocess_manifest(records: Sequence[Record], cache_dir, options: PreprocessOptions = PRESETS["paper"], *,
                        num_workers: int = 2, progress: bool = True, log=_warn) -> list[CachedVolume]:
    """Preprocess every record into `cache_dir` (skipping cached ones) and return them opened, in order.

    Parallel over files with `num_workers` processes (<= 1: in this process). Workers are spawned (safe
    next to torch/loader threads), so a script calling this with workers needs the usual
    `if __name__ == "__main__":` guard. Bad input raises InputError naming the file (shape/affine
    mismatch, non-binary mask, NaN, 4D, unreadable); entries finished before the error stay cached.
    Cached entries are verified when opened; a corrupt one is reported through `log` and rebuilt.
    A full disk raises DiskFullError naming the file being written.
    """
    from tqdm.auto import tqdm

    cache_dir = Path(cache_dir)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"{cache_dir}: cannot create the cache folder ({exc.strerror or exc})") from None
    clean_stale_temporaries(cache_dir)
    records = list(records)
    for record in records:  # before any work: a manifest spacing the NIfTI header contradicts is refused
        disagreement = spacing_disagreement(record)
        if disagreement:
            raise InputError(disagreement)
    _ensure_open_file_limit(2 * len(records) + 256)
    opened: dict[int, CachedVolume] = {}
    entries = {i: _entry_dir(cache_dir, r, options) for i, r in enumerate(records)}
    existing = [i for i, entry in entries.items() if entry.is_dir()]
    # Verifying reads every byte once (CRC-32 releases the GIL): threads spread it over the cores.
    with ThreadPoolExecutor(max_workers=max(1, min(len(existing), os.cpu_count() or 1, 8))) as pool:
        checked = list(pool.map(_open_or_error, [entries[i] for i in existing]))
    for i, (volume, error) in zip(existing, checked):
        if error is None:
            opened[i] = volume
        else:
            log(f"{error}; rebuilding the cache entry")
            _remove_entry(entries[i])
    todo = [i for i in range(len(records)) if i not in opened]
    bar = tqdm(total=len(records), initial=len(records) - len(todo), desc="preprocess", unit="scan",
               disable=not progress)
    try:
        if num_workers <= 1 or len(todo) <= 1:
            for i in todo:
                _write_entry(records[i], options, str(cache_dir))
                bar.update(1)
        else:
            import multiprocessing

            # spawn: safe when the caller already runs threads (torch, the slice loader).
            context = multiprocessing.get_context("spawn")
            from ..lifetime import end_with_parent  # workers must not outlive a killed parent

            with ProcessPoolExecutor(max_workers=min(num_workers, len(todo)), mp_context=context,
                                     initializer=end_with_parent, initargs=(os.getpid(),)) as pool:
                futures = [pool.submit(_write_entry, records[i], options, str(cache_dir)) for i in todo]
                for future in futures:
                    future.result()
                    bar.update(1)
    finally:
        bar.close()
    for i in todo:
        opened[i] = open_cached(_entry_dir(cache_dir, records[i], options))
    return [opened[i] for i in range(len(records))]


def _ensure_open_file_limit(needed: int) -> None:
    """Each memory map keeps a file descriptor: raise the soft limit (often 1024) toward the hard one."""
    try:
        import resource
    except ImportError:  # not on POSIX
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            pass
