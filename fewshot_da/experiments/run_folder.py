"""The run-folder protocol: a lock, an identity, run.yaml (provenance), and summary.json written last.

A folder with summary.json is finished. Its run.yaml records what the run is (`spec`) and an `identity` hash over
the spec, the training config and the content of its data files (manifest, split file) and parent run, so a
re-run into the same folder with other data or settings is refused instead of resuming the wrong checkpoint.
While a run writes its folder it holds `.lock` (an flock, released by the kernel even after kill -9, with the pid
and host written inside for the message).
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

import yaml

from ..atomic import write_json_atomic, write_text_atomic
from ..errors import InputError

SUMMARY = "summary.json"
RUN_FILE = "run.yaml"
LOCK = ".lock"


def finished_summary(run_dir) -> Optional[dict]:
    """The summary of a finished run folder, or None when it has not finished."""
    path = Path(run_dir) / SUMMARY
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise InputError(f"{path}: not valid JSON; delete it to re-score the run") from None


def read_run(run_dir) -> dict:
    """run.yaml of a run folder (what the run is); one-line error when `run_dir` is not a run."""
    path = Path(run_dir) / RUN_FILE
    if not path.is_file():
        raise InputError(f"{run_dir}: not a fewshot-da run folder (no {RUN_FILE}); pass the --out of `fewshot-da train`")
    try:
        info = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError):
        raise InputError(f"{path}: not valid YAML") from None
    if not isinstance(info, dict):
        raise InputError(f"{path}: not a run description")
    return info


def file_digest(path) -> str:
    """sha256 of a file's bytes (identity of a manifest or split file)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class Identity(str):
    """A run's identity hash (a str), carrying the parts it was made from (`parts`: config, data digests,
    parent identity) so a refusal can name what differs."""


def identity_of(spec: dict, config: Optional[dict], data_files=(), parent: Optional[str] = None) -> Identity:
    """Stable hash of what determines a run's result: spec, config (device excluded), data file contents, parent."""
    parts = {
        "spec": spec,
        "config": {k: v for k, v in (config or {}).items() if k != "device"},
        "data": [file_digest(p) for p in data_files],
        "parent": read_run(parent).get("identity") if parent else None,
    }
    identity = Identity(hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16])
    identity.parts = json.loads(json.dumps({k: v for k, v in parts.items() if k != "spec"}, default=str))
    return identity


def _differences(old: dict, new: dict, prefix: str = "") -> list:
    """Keys whose values differ, in the new record's order (nested dicts as `config.lr`)."""
    out = []
    for key in dict.fromkeys([*new, *old]):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}")
    return out


def _what_differs(old: dict, spec: dict, identity: str) -> str:
    """'its source differs (also train_ids)', 'its config.lr differs', 'its data file contents ... differs'."""
    keys = _differences(old.get("spec") or {}, spec)
    parts, saved = getattr(identity, "parts", None), old.get("parts")
    if not keys and parts and isinstance(saved, dict):
        keys = _differences(saved.get("config") or {}, parts.get("config") or {}, "config.")
        if saved.get("data") != parts.get("data"):
            keys.append("data file contents (manifest or split file)")
        if saved.get("parent") != parts.get("parent"):
            keys.append("parent run")
    if not keys:
        return "its data files, training config or parent run differ"
    also = ", ".join(keys[1:5]) + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")
    return f"its {keys[0]} differs" + (f" (also {also})" if also else "")


def check_claim(run_dir, spec: dict, identity: str) -> bool:
    """Read-only: True when `run_dir` already holds this run, False when it holds none (or an unstarted one);
    a one-line error when it holds another run that has started (a checkpoint or a summary)."""
    run_dir = Path(run_dir)
    if not (run_dir / RUN_FILE).is_file():
        return False
    old = read_run(run_dir)
    if old.get("identity") == identity:
        return True
    if (run_dir / SUMMARY).exists() or (run_dir / "checkpoint.pt").exists():
        raise InputError(f"{run_dir}: holds another run ({_what_differs(old, spec, identity)}); "
                         f"use a new --out folder or delete this one")
    return False


def claim(run_dir, spec: dict, identity: str) -> None:
    """Write run.yaml for a new run, or check that an existing one is the same run (else a one-line error)."""
    if not check_claim(run_dir, spec, identity):
        record = {"identity": str(identity), "spec": spec}
        if getattr(identity, "parts", None):
            record["parts"] = identity.parts  # what the identity hashes, to name a difference later
        write_text_atomic(Path(run_dir) / RUN_FILE, yaml.safe_dump(record, sort_keys=False))


def write_summary(run_dir, summary: dict) -> dict:
    """summary.json, strict JSON, written last and atomically; returns the summary as read back (NaN -> None)."""
    path = write_json_atomic(Path(run_dir) / SUMMARY, summary)
    return json.loads(path.read_text())


def clean_leftovers(run_dir) -> list:
    """Remove temporary files and folders a killed writer left (`*.tmp<pid>`, `.tmp-*`); returns their names."""
    run_dir = Path(run_dir)
    removed = []
    if not run_dir.is_dir():
        return removed
    for entry in run_dir.iterdir():
        if entry.name.startswith(".tmp-") or entry.suffix.startswith(".tmp"):
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
            removed.append(entry.name)
    return removed


@contextmanager
def locked(run_dir, *, wait: bool = False, poll_s: float = 1.0) -> Iterator[Path]:
    """Hold the folder's lock while the block runs. Another holder -> one-line error naming its pid and host, or
    (wait=True) block until it is released. A lock left by a killed process is free (the kernel drops flocks)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK
    handle = open(path, "a+")
    try:
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not wait:
                    handle.seek(0)
                    holder = handle.read().strip() or "another process"
                    raise InputError(f"{run_dir}: another run is writing this folder ({holder}); wait for it "
                                     f"(--wait) or use a new --out") from None
                time.sleep(poll_s)
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        handle.flush()
        clean_leftovers(run_dir)
        yield run_dir
    finally:
        handle.close()


@contextmanager
def open_run(run_dir, spec: dict, identity: str, *, wait: bool = False) -> Iterator[Optional[dict]]:
    """Refuse a folder holding another run (before touching it), hold its lock, claim it; yields the finished
    summary (the run is done: skip it) or None (work to do)."""
    check_claim(run_dir, spec, identity)
    with locked(run_dir, wait=wait):
        claim(run_dir, spec, identity)
        yield finished_summary(run_dir)
