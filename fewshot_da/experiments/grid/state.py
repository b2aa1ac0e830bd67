"""A grid folder as a whole: opened (grid.json, the existing runs checked), results.csv collected and finished,
the state of every run."""
from __future__ import annotations

import fcntl
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Optional

from ...atomic import write_json_atomic
from ...errors import InputError
from ..results import read_results, rewrite_results
from .data import _plain, data_digests, prepare_data
from .runs import CORRUPT, SUMMARY, _read_summary, check_existing, is_done, result_rows, run_dir
from .specs import GRID_FILE, GRID_LOCK, KINDS, RESULTS, RunSpec, build_specs


def open_grid(plan: dict, grid_dir, *, num_workers: int = 2, log=print) -> dict:
    """Prepare data, expand the plan and write DIR/grid.json; returns {context, specs}."""
    grid_dir = Path(grid_dir)
    grid_dir.mkdir(parents=True, exist_ok=True)
    from ...data import splits as splits_mod

    data = prepare_data(plan, grid_dir, num_workers=num_workers, log=log)
    splits = splits_mod.read_splits(data["splits"])
    specs = build_specs(plan, splits)
    context = {
        "manifest": data["manifest"],
        "splits": data["splits"],
        "sha256": data_digests(data),
        "data": _plain(plan["data"]),
        "cache": str((grid_dir / "cache").resolve()),
        "preset": plan["preset"],
        "preprocess": plan["preprocess"],
        "tolerances_mm": plan["tolerances_mm"],
        "keep_checkpoints": bool(plan["keep_checkpoints"]),
    }
    check_existing(grid_dir, specs, context)
    write_json_atomic(
        grid_dir / GRID_FILE, {"plan": plan, "context": context, "specs": [s.to_dict() for s in specs]}
    )
    return {"context": context, "specs": specs}


def load_grid(grid_dir) -> dict:
    """{plan, context, specs} of a grid folder made by `open_grid`."""
    path = Path(grid_dir) / GRID_FILE
    if not path.is_file():
        raise InputError(
            f"{grid_dir}: not an experiment grid folder (no {GRID_FILE}); run `fewshot-da experiment`"
        )
    again = f"run `fewshot-da experiment PLAN --out {grid_dir}` again to rewrite it"
    try:
        data = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not valid JSON ({exc}); {again}") from None
    try:
        return {"plan": data["plan"], "context": data["context"], "specs": [RunSpec(**s) for s in data["specs"]]}
    except (KeyError, TypeError):
        raise InputError(f"{path}: not a grid description (plan, context and specs); {again}") from None


def collect_results(grid_dir, specs: Sequence[RunSpec]) -> list:
    """results.csv rows of every finished run of `specs`, read from their summaries."""
    rows = []
    for spec in specs:
        summary = _read_summary(run_dir(grid_dir, spec.run_id) / SUMMARY)
        if summary is not None:
            rows.extend(result_rows(spec, summary))
    return rows


def finish_results(grid_dir, specs: Sequence[RunSpec], *, log: Optional[Callable] = None) -> Path:
    """Rewrite DIR/results.csv in canonical order from the finished runs (an interrupted grid converges).

    A run whose summary.json is damaged (does not parse, or was set aside and its re-run did not finish) keeps
    the rows results.csv already holds for it, and is named through `log`; malformed lines are named too."""
    log = log or (lambda line: None)
    path = Path(grid_dir) / RESULTS
    rows = collect_results(grid_dir, specs)
    damaged = [s.run_id for s in specs if not is_done(grid_dir, s.run_id)
               and any((run_dir(grid_dir, s.run_id) / n).exists() for n in (SUMMARY, CORRUPT))]
    if damaged:
        old = read_results(path, log=log) if path.is_file() and path.stat().st_size else []
        kept = [r for r in old if r["run"] in set(damaged)]
        rows += kept
        log(f"warning: {len(damaged)} run(s) have a damaged summary.json and are not finished "
            f"({', '.join(damaged[:3])}{', ...' if len(damaged) > 3 else ''}); results.csv keeps their "
            f"{len(kept)} earlier row(s)")
    warning = thread_warning(grid_dir, specs)
    if warning:
        log(warning)
    return rewrite_results(path, rows)


def thread_warning(grid_dir, specs: Sequence[RunSpec]) -> Optional[str]:
    """One warning line when the finished CPU runs of the grid ran with different thread counts (CPU numerics
    depend on it, so a grid resumed with another count mixes them), else None."""
    by_threads = {}
    for spec in specs:
        timing = _read_summary(run_dir(grid_dir, spec.run_id) / "grid_timing.json")
        if timing and timing.get("threads") and is_done(grid_dir, spec.run_id):
            by_threads.setdefault(int(timing["threads"]), []).append(spec.run_id)
    if len(by_threads) < 2:
        return None
    parts = "; ".join(f"{n} thread(s): {len(ids)} run(s), e.g. {ids[0]}" for n, ids in sorted(by_threads.items()))
    return (f"warning: the finished runs used different CPU thread counts ({parts}); CPU results depend on the "
            "thread count, so this grid mixes numerics")


def run_state(grid_dir, spec: RunSpec) -> str:
    """done, running (a worker holds its lock), failed (error.txt), interrupted (a checkpoint), pending."""
    folder = run_dir(grid_dir, spec.run_id)
    if (folder / "summary.json").is_file():
        return "done"
    lock_path = folder / GRID_LOCK
    if lock_path.is_file():
        with open(lock_path, "a") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                fcntl.flock(lock, fcntl.LOCK_UN)
            except BlockingIOError:
                return "running"
    if (folder / "error.txt").is_file():
        return "failed"
    if (folder / "checkpoint.pt").is_file():
        return "interrupted"
    return "pending"


STATES = ("done", "running", "failed", "interrupted", "pending")


def grid_status(grid_dir) -> dict:
    """{counts: {kind: {state: n}}, failed: [(run id, error line)], total, results_rows}."""
    grid = load_grid(grid_dir)
    counts = {kind: dict.fromkeys(STATES, 0) for kind in KINDS}
    failed = []
    for spec in grid["specs"]:
        state = run_state(grid_dir, spec)
        counts[spec.kind][state] += 1
        if state == "failed":
            failed.append((spec.run_id, (run_dir(grid_dir, spec.run_id) / "error.txt").read_text().strip()))
    results = Path(grid_dir) / RESULTS
    skipped = []
    n_rows = len(read_results(results, log=skipped.append)) if results.is_file() and results.stat().st_size else 0
    return {
        "counts": {k: v for k, v in counts.items() if sum(v.values())},
        "failed": failed,
        "total": len(grid["specs"]),
        "results_rows": n_rows,
        "results_problems": skipped,
    }


def format_status(status: dict) -> str:
    lines = [f"{'kind':<10}" + "".join(f"{s:>13}" for s in STATES) + f"{'total':>8}"]
    totals = dict.fromkeys(STATES, 0)
    for kind, counts in status["counts"].items():
        lines.append(
            f"{kind:<10}" + "".join(f"{counts[s]:>13}" for s in STATES) + f"{sum(counts.values()):>8}"
        )
        for s in STATES:
            totals[s] += counts[s]
    lines.append(f"{'all':<10}" + "".join(f"{totals[s]:>13}" for s in STATES) + f"{status['total']:>8}")
    lines.append(f"results.csv: {status['results_rows']} rows")
    lines += status.get("results_problems", [])[:5]
    for run_id, error in status["failed"][:20]:
        lines.append(f"failed {run_id}: {error}")
    return "\n".join(lines)
