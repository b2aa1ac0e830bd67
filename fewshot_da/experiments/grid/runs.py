"""One grid run: its folder, identity check, execution through a stage, results rows and failure line."""
from __future__ import annotations

import fcntl
import json
import os
import socket
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

from ...atomic import write_json_atomic
from ...errors import InputError
from ..results import append_results, rows_from_summary
from .data import _plain
from .specs import GRID_LOCK, RESULTS, RunSpec


def run_dir(grid_dir, run_id: str) -> Path:
    return Path(grid_dir) / "runs" / run_id


def _run_spec(spec: RunSpec, context: dict, grid_dir, num_threads: Optional[int]) -> dict:
    """The one adapter between the grid and the stages: run `spec` into its folder and return its summary."""
    from ...data import splits as splits_mod
    from .. import stages

    out = run_dir(grid_dir, spec.run_id)
    overrides = json.loads(spec.overrides)
    tolerances = tuple(context["tolerances_mm"])
    common = dict(
        arch=spec.arch,
        preset=context["preset"],
        preprocess=context["preprocess"],
        cache=context["cache"],
        overrides=overrides,
        tolerances_mm=tolerances,
        num_threads=num_threads,
        progress=False,
    )
    if spec.kind == "source":
        return stages.train(
            manifest=context["manifest"], splits=context["splits"], source=spec.source, out=out, **common
        )
    split = splits_mod.read_splits(context["splits"])
    if spec.kind == "oracle":
        fold = splits_mod.oracle_fold(split, spec.target, spec.fold)
        return stages.train(
            manifest=context["manifest"],
            splits=context["splits"],
            ids=fold["train"],
            eval_ids=fold["test"],
            out=out,
            **common,
        )
    parent = run_dir(grid_dir, spec.parent)
    if spec.kind == "baseline":  # the source model on the pair's test scans: strategy `none`
        strategy, options = "none", {}
        scans = json.loads(spec.options)["test_scans_of_budget"]
    else:
        strategy, options = spec.strategy, json.loads(spec.options)
        scans = spec.scans
        if strategy == "freeze":
            options = dict(options, layers=spec.layers)
    return stages.adapt(
        model=parent,
        target=spec.target,
        out=out,
        strategy=strategy,
        strategy_options=options,
        scans=scans,
        folds=spec.folds,
        fold=spec.fold if spec.folds else None,
        slices=spec.slices,
        preset=context["preset"],
        overrides=overrides,
        tolerances_mm=tolerances,
        num_threads=num_threads,
        progress=False,
    )


def result_rows(spec: RunSpec, summary: dict) -> list:
    """results.csv rows of a finished run (none for source models: they are scored on their own val scans)."""
    if spec.kind == "source":
        return []
    fields = dict(
        arch=spec.arch,
        source=spec.source,
        target=spec.target,
        strategy=spec.strategy,
        layers=spec.layers,
        budget=spec.budget,
        seed=spec.seed,
        fold="" if spec.fold is None else spec.fold,
    )
    return rows_from_summary(summary, spec.run_id, **fields)


def _read_summary(path: Path) -> Optional[dict]:
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return summary if isinstance(summary, dict) else None


SUMMARY = "summary.json"
CORRUPT = "summary.json.corrupt"  # a summary that did not parse, set aside when its run is done again
RUN_IDENTITY = "grid_run.json"  # what a grid run was made from: data digests, preset, preprocess, tolerances


def is_done(grid_dir, run_id: str) -> bool:
    """A run is finished when its summary.json exists and parses (a truncated one is not finished)."""
    return _read_summary(run_dir(grid_dir, run_id) / SUMMARY) is not None


def run_identity(spec: RunSpec, context: dict) -> dict:
    """What a grid run is made from, beyond its spec: the grid's manifest and splits (paths and content
    digests), preset and preprocessing (refused when they differ), and the scoring tolerances."""
    return _plain({
        "run": spec.run_id,
        "data": context.get("data"),
        "manifest": context["manifest"],
        "splits": context["splits"],
        "sha256": context.get("sha256"),
        "preset": context["preset"],
        "preprocess": context["preprocess"],
        "tolerances_mm": [float(t) for t in context["tolerances_mm"]],
    })


IDENTITY_KEYS = ("data", "manifest", "splits", "sha256", "preset", "preprocess")
_IDENTITY_WORDS = {"data": "plan data", "manifest": "manifest path", "splits": "split file path",
                   "sha256": "manifest or split file content (sha256)", "preset": "preset",
                   "preprocess": "preprocessing"}


def _identity_problem(folder: Path, spec: RunSpec, context: dict) -> Optional[str]:
    """Why `folder` holds a run made from other data or settings than `context` (None when it does not): the
    grid's own record (grid_run.json), else the stage's run.yaml (its manifest and split file paths)."""
    if not any((folder / name).exists() for name in (SUMMARY, CORRUPT, "checkpoint.pt")):
        return None  # not started: the run will be made afresh from the grid's data
    want = run_identity(spec, context)
    saved = _read_summary(folder / RUN_IDENTITY)
    if saved is not None:
        differ = [k for k in IDENTITY_KEYS if saved.get(k) != want.get(k)]
        if differ:
            words = ", ".join(_IDENTITY_WORDS[k] for k in differ)
            key = next((k for k in differ if k not in ("sha256", "data")), None)
            detail = f": was {saved.get(key)!r}, now {want.get(key)!r}" if key else ""
            return f"its {words} {'differs' if len(differ) == 1 else 'differ'}{detail}"
        if spec.kind != "source" and _read_summary(folder / SUMMARY) is not None:  # sources make no rows
            old_tol = [float(t) for t in saved.get("tolerances_mm") or []]
            if old_tol and old_tol != want["tolerances_mm"]:
                return (f"it was scored at tolerances_mm {_mm(old_tol)}, the plan asks {_mm(want['tolerances_mm'])}; "
                        "a finished grid run keeps no predictions to score again (set tolerances_mm back, or "
                        "use a new --out)")
        return None
    run_file = folder / "run.yaml"
    if run_file.is_file():
        from ..run_folder import read_run

        old = read_run(folder).get("spec") or {}
        for key in ("manifest", "splits"):
            if old.get(key) and Path(str(old[key])).resolve() != Path(str(context[key])).resolve():
                return f"its {key} differs (was {old[key]}, now {context[key]})"
    return None


def _mm(values) -> str:
    return ", ".join(f"{v:g}" for v in values) + " mm"


def _check_spec_file(folder: Path, spec: RunSpec) -> None:
    path = folder / "spec.json"
    if path.is_file():
        saved = _read_summary(path)
        if saved is not None and saved != spec.to_dict():
            diff = sorted(k for k in spec.to_dict() if saved.get(k) != spec.to_dict()[k])
            raise InputError(
                f"{folder}: made by a different plan ({', '.join(diff)} differ); "
                "use a new --out folder or delete this run"
            )
    else:
        write_json_atomic(path, spec.to_dict())


def check_existing(grid_dir, specs: Sequence[RunSpec], context: Optional[dict] = None) -> None:
    """InputError when a run folder of `specs` already holds a run of a different spec, or (with `context`)
    one made from other data or settings (named: the run, how many runs, what differs)."""
    bad = []
    for spec in specs:
        folder = run_dir(grid_dir, spec.run_id)
        if (folder / "spec.json").is_file():
            _check_spec_file(folder, spec)
        if context is not None and folder.is_dir():
            problem = _identity_problem(folder, spec, context)
            if problem:
                bad.append((folder, problem))
    if bad:
        folder, problem = bad[0]
        more = f" (and {len(bad) - 1} more run folder(s))" if len(bad) > 1 else ""
        raise InputError(f"{folder}: holds a run made from other data or settings: {problem}{more}; use a new "
                         "--out folder, or delete those runs")


def _threads() -> int:
    import torch

    return int(torch.get_num_threads())


def _held_by(lock_path: Path) -> str:
    try:
        text = lock_path.read_text().strip()
    except OSError:
        text = ""
    return text or "another process"


def execute_run(grid_dir, spec: dict, context: dict, num_threads: Optional[int] = None) -> dict:
    """Run one spec (a dict) unless it is finished or held by another worker; append its results rows.

    Returns {run, status: done|skipped|busy|failed, seconds, error}. Errors are caught and written to the
    run's error.txt (one line); busy names the holder (pid and host); SystemExit/KeyboardInterrupt (a
    preemption, a kill) propagate. A summary.json that does not parse is set aside (summary.json.corrupt)
    and the run is done again.
    """
    spec = RunSpec(**spec)
    folder = run_dir(grid_dir, spec.run_id)
    if is_done(grid_dir, spec.run_id):
        return {"run": spec.run_id, "status": "skipped", "seconds": 0.0}
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / GRID_LOCK, "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return {"run": spec.run_id, "status": "busy", "seconds": 0.0,
                    "error": f"held by another process ({_held_by(folder / GRID_LOCK)})"}
        lock.seek(0)
        lock.truncate()
        lock.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        lock.flush()
        if is_done(grid_dir, spec.run_id):
            return {"run": spec.run_id, "status": "skipped", "seconds": 0.0}
        _check_spec_file(folder, spec)
        if (folder / SUMMARY).exists():  # it does not parse (a truncated write): not finished, set it aside
            os.replace(folder / SUMMARY, folder / CORRUPT)
        threads = int(num_threads) if num_threads else _threads()
        write_json_atomic(folder / RUN_IDENTITY, dict(run_identity(spec, context), threads=threads))
        (folder / "error.txt").unlink(missing_ok=True)
        (folder / "error_traceback.txt").unlink(missing_ok=True)
        start = time.perf_counter()
        try:
            summary = _run_spec(spec, context, grid_dir, num_threads)
        except Exception as exc:  # one failed run must not stop the grid; the error is kept with the run
            message = (
                f"{type(exc).__name__}: {exc}".splitlines()[0]
                if not isinstance(exc, InputError)
                else str(exc)
            )
            (folder / "error.txt").write_text(message + "\n")
            if not isinstance(exc, InputError):  # an unexpected error: keep where it came from, for a bug report
                (folder / "error_traceback.txt").write_text(traceback.format_exc())
            return {
                "run": spec.run_id,
                "status": "failed",
                "seconds": time.perf_counter() - start,
                "error": message,
            }
        seconds = time.perf_counter() - start
        (folder / CORRUPT).unlink(missing_ok=True)
        write_json_atomic(
            folder / "grid_timing.json",
            {"wall_s": seconds, "host": socket.gethostname(), "pid": os.getpid(), "threads": threads},
        )
        rows = result_rows(spec, summary)
        if rows:  # the run is finished either way: finish_results rewrites every row from the summaries
            try:
                append_results(Path(grid_dir) / RESULTS, rows)
            except (OSError, InputError) as exc:
                (folder / "append_error.txt").write_text(f"{type(exc).__name__}: {exc}\n")
        if spec.kind in ("adapt", "baseline") and not context.get("keep_checkpoints"):
            (folder / "checkpoint.pt").unlink(missing_ok=True)
    return {"run": spec.run_id, "status": "done", "seconds": seconds}


def run_failure(grid_dir, run_id: str, default: str) -> str:
    """What became of a run that did not finish: the one-line error it left (error.txt), else `default` (e.g.
    where its logs are) with how far it got (interrupted with a checkpoint, or never started)."""
    folder = run_dir(grid_dir, run_id)
    try:
        text = (folder / "error.txt").read_text().strip()
    except OSError:
        text = ""
    if text:
        return text.splitlines()[0]
    if (folder / "checkpoint.pt").is_file():
        return f"{default}; it was interrupted mid-run (checkpoint.pt kept: a re-run resumes it)"
    if (folder / CORRUPT).is_file() or (folder / SUMMARY).is_file():
        return f"{default}; its summary.json is damaged (a re-run does it again)"
    return f"{default}; it was interrupted before its first checkpoint (a re-run starts it again)"


# ---- the grid as a whole ----------------------------------------------------------------------------------


def held_result(run_id: str, parent: dict) -> dict:
    """The result of a run whose parent another grid process holds: busy (held) too, not failed."""
    return {"run": run_id, "status": "busy", "seconds": 0.0,
            "error": f"its parent {parent['run']} is {parent.get('error', 'held by another process')}"}
