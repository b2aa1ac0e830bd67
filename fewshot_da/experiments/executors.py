"""Where a grid's runs execute: local worker slots (one per GPU, or CPU threads split) or SLURM job arrays.

Both executors only call `grid.execute_run` on run specs; what is finished is read from the run folders, so
a grid can be interrupted anywhere (Ctrl-C, kill -9, a preempted job) and re-run to completion. Local slot
workers end with their parent, even after kill -9; SIGTERM or Ctrl-C stops them and exits with 128 + signal.
"""

from __future__ import annotations

import math
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

from ..errors import InputError
from ..lifetime import end_with_parent
from ..threads import resolve_threads
from . import grid as grid_mod

# ---- progress ---------------------------------------------------------------------------------------------


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return (
        f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
        if seconds >= 3600
        else f"{seconds // 60}m{seconds % 60:02d}s"
    )


class GridProgress:
    """Runs done / total with an ETA: a bar on a terminal, and one log line per finished or failed run."""

    def __init__(self, total: int, done: int, *, log: Callable = print, bar: bool = False):
        self.total, self.done, self.start_done = total, done, done
        self.failed = 0
        self.log = log
        self.t0 = time.perf_counter()
        self.bar = None
        if bar:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=done, unit="run", desc="grid", file=sys.stderr)

    def eta_s(self) -> float:
        finished = self.done + self.failed - self.start_done
        remaining = self.total - self.done - self.failed
        return (time.perf_counter() - self.t0) / finished * remaining if finished else float("nan")

    def update(self, result: dict) -> None:
        status = result["status"]
        if status in ("done", "skipped"):
            self.done += 1
        elif status == "failed":
            self.failed += 1
        elif status == "busy":  # not failed: another grid process holds the run
            self.log(f"[held] {result['run']}: {result.get('error', 'held by another process')}")
            return
        else:
            return
        eta = self.eta_s()
        line = (
            f"[{self.done + self.failed}/{self.total}] {status} {result['run']} "
            f"({result.get('seconds', 0):.1f} s)"
            + (f" ETA {_duration(eta)}" if math.isfinite(eta) else "")
        )
        if result.get("resumed"):
            line += f", {result['resumed']}"
        if status == "failed":
            line += f": {result.get('error', '')}"
        if self.bar is not None:  # every line stays above the bar, so a terminal keeps one line per run
            self.bar.update(1)
            self.bar.set_postfix_str(f"failed {self.failed}" if self.failed else "")
            self.bar.write(line, file=sys.stderr)
        else:
            self.log(line)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# ---- local slots ------------------------------------------------------------------------------------------


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _visible_gpus() -> list:
    """GPU indices this process may use (CUDA_VISIBLE_DEVICES or every device torch sees)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [g for g in visible.split(",") if g.strip() and g.strip() != "-1"]
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except Exception:  # no usable CUDA runtime
        return []


def slot_environments(slots: int, gpus: Sequence[str], cpus: int, threads: int | None = None) -> list:
    """Per slot: the environment of its worker and its thread count. With GPUs slot i sees GPU i mod n;
    without, the CPU cores are split evenly (at least one thread each); `threads` (--num-threads or
    OMP_NUM_THREADS, resolved) sets each slot's count instead."""
    threads = int(threads) if threads else max(1, cpus // max(1, slots))
    out = []
    for i in range(slots):
        env = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        env["CUDA_VISIBLE_DEVICES"] = gpus[i % len(gpus)] if gpus else ""
        out.append((env, threads))
    return out


def _resume_note(folder: Path, had_checkpoint: bool) -> str:
    """'resumed after epoch E' when a run went on from the checkpoint an interrupted attempt left, else ''."""
    if not had_checkpoint:
        return ""
    try:
        lines = (folder / "log.txt").read_text(errors="replace").splitlines()
    except OSError:
        return ""
    notes = [line for line in lines if "resumed after epoch" in line]
    return notes[-1][notes[-1].index("resumed after epoch") :].strip() if notes else ""


def _execute(grid_dir, spec: dict, context: dict, num_threads: Optional[int]) -> dict:
    """grid.execute_run, plus `resumed` ('resumed after epoch E') when the run went on from a checkpoint."""
    folder = grid_mod.run_dir(grid_dir, spec["run_id"])
    had_checkpoint = (folder / "checkpoint.pt").is_file() and not (folder / "summary.json").is_file()
    result = grid_mod.execute_run(grid_dir, spec, context, num_threads=num_threads)
    if result.get("status") == "done":
        note = _resume_note(folder, had_checkpoint)
        if note:
            result = dict(result, resumed=note)
    return result


def _slot_main(slot: int, env: dict, threads: int, tasks, results, parent_pid: Optional[int] = None) -> None:
    """A worker process: run specs from `tasks` until None, report each result on `results`.

    It ends with its parent (kill -9 included: lifetime.end_with_parent) and leaves Ctrl-C to the parent, which
    stops its workers itself, so the terminal's SIGINT to the whole group prints no worker traceback.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parent_pid = os.getppid() if parent_pid is None else parent_pid
    end_with_parent(parent_pid)
    os.environ.update(env)
    import torch

    torch.set_num_threads(threads)
    while True:
        try:
            item = tasks.get(timeout=1.0)
        except queue.Empty:  # the parent-pid watch ends the process; this only keeps the loop responsive
            continue
        if item is None:
            return
        grid_dir, spec, context = item
        try:
            result = _execute(grid_dir, spec, context, threads)
        except Exception as exc:  # execute_run catches run errors; this is a bug or a broken folder
            result = {
                "run": spec["run_id"],
                "status": "failed",
                "seconds": 0.0,
                "error": f"{type(exc).__name__}: {exc}",
            }
        results.put((slot, result))


class GridInterrupted(BaseException):
    """SIGTERM or SIGINT reached the grid process. Its workers were stopped; finished runs stay finished, a run
    cut mid-way has no summary and is re-run (from its last checkpoint) on resume. A BaseException, like
    KeyboardInterrupt, so that no `except Exception` around a run swallows it."""

    def __init__(self, signum: int):
        self.signum = int(signum)
        self.name = signal.Signals(self.signum).name
        super().__init__(self.name)


@contextmanager
def stop_on_signals():
    """While inside: SIGTERM and SIGINT raise GridInterrupted once in the main thread (a second signal during
    the clean-up is ignored, so the clean-up finishes). A no-op outside the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    raised = []

    def handler(signum, frame):
        if not raised:
            raised.append(signum)
            raise GridInterrupted(signum)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _stop_workers(workers: dict, *, now: bool) -> None:
    """End the slot workers: after their current run (None on each queue), or `now` (SIGTERM, then SIGKILL)."""
    if not now:
        for worker in workers.values():
            if worker["proc"].is_alive():
                worker["tasks"].put(None)
        for worker in workers.values():
            worker["proc"].join(timeout=10)
    for worker in workers.values():
        if worker["proc"].is_alive():
            worker["proc"].terminate()
    for worker in workers.values():
        worker["proc"].join(timeout=5)
        if worker["proc"].is_alive():
            worker["proc"].kill()
            worker["proc"].join(timeout=5)
        worker["tasks"].cancel_join_thread()  # exiting never waits to flush a queue nobody reads


class LocalExecutor:
    """`slots` worker processes on this machine (0: run in this process, for debugging and measurements)."""

    def __init__(self, slots: Optional[int] = None, num_threads: int | None = None):
        self.num_threads = resolve_threads(num_threads)  # per slot; None: the cores split between the slots
        self.gpus = _visible_gpus()
        self.slots = (len(self.gpus) or 1) if slots is None else int(slots)
        if self.slots < 0:
            raise InputError(f"--slots {slots}: must be >= 0")

    def describe(self) -> str:
        if self.slots == 0:
            return "local executor, in this process"
        env = slot_environments(self.slots, self.gpus, _cpu_count(), self.num_threads)
        where = (
            f"GPUs {', '.join(e['CUDA_VISIBLE_DEVICES'] for e, _ in env)}"
            if self.gpus
            else f"{env[0][1]} CPU thread(s) each"
        )
        return f"local executor, {self.slots} slot(s), {where}"

    def run(self, grid_dir, context: dict, specs: Sequence, progress: GridProgress) -> dict:
        """Run `specs` (dependency order) respecting parents; returns {run id: result}."""
        done = {s.run_id for s in specs if grid_mod.is_done(grid_dir, s.run_id)}
        todo = [s for s in specs if s.run_id not in done]
        if self.slots == 0:
            return self._inline(grid_dir, context, todo, progress, done)
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")  # fresh interpreters: CUDA and threads are safe
        results = ctx.Queue()
        workers = {}

        def start(slot):
            env, threads = slot_environments(self.slots, self.gpus, _cpu_count(), self.num_threads)[slot]
            tasks = ctx.Queue()
            proc = ctx.Process(
                target=_slot_main,
                args=(slot, env, threads, tasks, results, os.getpid()),
                name=f"fewshot-da-slot{slot}",
            )
            proc.start()
            workers[slot] = {"proc": proc, "tasks": tasks, "spec": None}

        for slot in range(self.slots):
            start(slot)
        outcome, failed = {}, set()
        pending = list(todo)
        interrupted = True  # until the loop ends normally: any exception (GridInterrupted) stops workers now
        try:
            while pending or any(w["spec"] for w in workers.values()):
                for slot, worker in workers.items():
                    if worker["spec"] is not None:
                        continue
                    spec = self._next_ready(pending, done, failed, outcome, progress)
                    if spec is None:
                        break
                    worker["spec"] = spec
                    worker["tasks"].put((str(grid_dir), spec.to_dict(), context))
                if not any(w["spec"] for w in workers.values()):
                    if pending:  # nothing runnable: parents outside this grid never finished
                        for spec in pending:
                            self._fail(
                                spec, f"parent {spec.parent} is not finished", outcome, failed, progress
                            )
                        pending.clear()
                    break
                try:
                    slot, result = results.get(timeout=0.5)
                except queue.Empty:
                    for slot, worker in list(workers.items()):
                        if worker["spec"] is not None and not worker["proc"].is_alive():
                            spec = worker["spec"]
                            self._fail(
                                spec,
                                f"worker died (exit code {worker['proc'].exitcode})",
                                outcome,
                                failed,
                                progress,
                            )
                            start(slot)
                    continue
                spec = workers[slot]["spec"]
                workers[slot]["spec"] = None
                outcome[spec.run_id] = result  # busy: another grid process holds it (not failed)
                (done if result["status"] in ("done", "skipped") else failed).add(spec.run_id)
                progress.update(result)
            interrupted = False
        finally:
            _stop_workers(workers, now=interrupted)
        return outcome

    @staticmethod
    def _fail(spec, message, outcome, failed, progress):
        result = {"run": spec.run_id, "status": "failed", "seconds": 0.0, "error": message}
        outcome[spec.run_id] = result
        failed.add(spec.run_id)
        progress.update(result)

    def _next_ready(self, pending, done, failed, outcome, progress):
        """Pop the first pending spec whose parent is finished; specs whose parent failed fail too, those whose
        parent another process holds are held (busy) too."""
        for spec in list(pending):
            if spec.parent and spec.parent in failed:
                pending.remove(spec)
                held = outcome.get(spec.parent, {}).get("status") == "busy"
                if held:
                    outcome[spec.run_id] = grid_mod.held_result(spec.run_id, outcome[spec.parent])
                    progress.update(outcome[spec.run_id])
                else:
                    self._fail(spec, f"parent {spec.parent} failed", outcome, failed, progress)
                failed.add(spec.run_id)
                continue
            if not spec.parent or spec.parent in done:
                pending.remove(spec)
                return spec
        return None

    def _inline(self, grid_dir, context, todo, progress, done) -> dict:
        outcome, failed = {}, set()
        for spec in todo:
            if spec.parent and spec.parent not in done:
                if outcome.get(spec.parent, {}).get("status") == "busy":
                    outcome[spec.run_id] = grid_mod.held_result(spec.run_id, outcome[spec.parent])
                    progress.update(outcome[spec.run_id])
                    continue
                self._fail(spec, f"parent {spec.parent} is not finished", outcome, failed, progress)
                continue
            result = _execute(grid_dir, spec.to_dict(), context, self.num_threads)
            outcome[spec.run_id] = result
            (done if result["status"] in ("done", "skipped") else failed).add(spec.run_id)
            progress.update(result)
        return outcome


# ---- SLURM via submitit -----------------------------------------------------------------------------------


def _submitit():
    try:
        import submitit
    except ImportError:
        raise InputError(
            "--executor slurm needs submitit: pip install 'fewshot-da[slurm]' (or pip install submitit)"
        ) from None
    return submitit


try:  # submitit is an extra: without it the SLURM executor refuses to start, everything else works
    from submitit.helpers import Checkpointable as _Checkpointable
except ImportError:  # pragma: no cover - exercised where submitit is absent
    _Checkpointable = object


class GridTask(_Checkpointable):
    """One array task: run a chunk of specs in sequence. A submitit Checkpointable: on timeout or preemption
    submitit pickles it with its arguments and requeues the task; the requeued task re-runs its chunk, where
    finished runs are skipped and interrupted ones resume from their checkpoints."""

    def __call__(self, grid_dir: str, specs: list, context: dict, threads: int) -> list:
        import torch

        torch.set_num_threads(threads)
        return [grid_mod.execute_run(grid_dir, spec, context, num_threads=threads) for spec in specs]


def chunks(specs: Sequence, runs_per_task: int) -> list:
    """Consecutive groups of `runs_per_task` specs (one group per array task)."""
    return [list(specs[i : i + runs_per_task]) for i in range(0, len(specs), runs_per_task)]


def _squeue_ids(array_ids: Sequence[str]) -> Optional[set]:
    """Job ids (array_task form) still queued or running, or None when squeue cannot be asked."""
    try:
        out = subprocess.run(
            ["squeue", "-h", "-r", "-o", "%i", "-j", ",".join(array_ids)],
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return set() if "Invalid job id" in out.stderr else None
    return {line.strip() for line in out.stdout.split() if line.strip()}


class SlurmExecutor:
    """Two job arrays through submitit: sources + oracles, then (afterany) baselines + adapted runs.

    Each array task runs `runs_per_task` runs in sequence; `array_parallelism` caps tasks running at once.
    Requeue: submitit's USR2 handler checkpoints the GridTask and requeues the task on timeout or preemption.
    """

    def __init__(
        self,
        *,
        partition: Optional[str] = None,
        time_min: int = 60,
        gpus_per_task: int = 0,
        cpus_per_task: Optional[int] = None,
        mem_gb: Optional[float] = None,
        array_parallelism: int = 64,
        runs_per_task: int = 4,
        signal_delay_s: int = 90,
        poll_s: float = 2.0,
        additional_parameters: Optional[dict] = None,
        num_threads: int | None = None,
    ):
        if time_min < 1 or runs_per_task < 1 or array_parallelism < 1:
            raise InputError("--time, --runs-per-task and --array-parallelism must be >= 1")
        self.partition, self.time_min, self.gpus_per_task = partition, int(time_min), int(gpus_per_task)
        self.cpus_per_task, self.mem_gb = cpus_per_task, mem_gb
        self.array_parallelism, self.runs_per_task = int(array_parallelism), int(runs_per_task)
        self.signal_delay_s, self.poll_s = int(signal_delay_s), poll_s
        self.additional_parameters = dict(additional_parameters or {})
        self.num_threads = resolve_threads(num_threads)  # per task; None: --cpus-per-task (or 1)
        self.jobs = []

    def describe(self) -> str:
        return (
            f"slurm executor: partition {self.partition or '(default)'}, {self.time_min} min, "
            f"{self.gpus_per_task} GPU(s)/task, {self.runs_per_task} run(s)/task, at most "
            f"{self.array_parallelism} tasks at once"
        )

    def _executor(self, grid_dir):
        submitit = _submitit()
        folder = Path(grid_dir) / "slurm" / "%j"
        executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
        package_root = str(Path(__file__).resolve().parents[2])
        params = dict(
            timeout_min=self.time_min,
            slurm_array_parallelism=self.array_parallelism,
            slurm_signal_delay_s=self.signal_delay_s,
            name="fewshot-da-grid",
            slurm_setup=[f"export PYTHONPATH={package_root}:${{PYTHONPATH:-}}"],
        )
        if self.partition:
            params["slurm_partition"] = self.partition
        if self.gpus_per_task:
            params["slurm_gpus_per_task"] = self.gpus_per_task
        if self.cpus_per_task:
            params["cpus_per_task"] = int(self.cpus_per_task)
        if self.mem_gb:
            params["mem_gb"] = float(self.mem_gb)
        executor.update_parameters(**params)
        return executor

    def submit(self, grid_dir, context: dict, specs: Sequence) -> list:
        """Submit the not-finished specs as (at most) two arrays; returns the submitit jobs."""
        todo = [s for s in specs if not grid_mod.is_done(grid_dir, s.run_id)]
        waves = [[s for s in todo if not s.parent], [s for s in todo if s.parent]]
        executor = self._executor(grid_dir)
        _submitit()
        task = GridTask()
        threads = int(self.num_threads or self.cpus_per_task or 1)
        jobs, previous = [], None
        for wave in waves:
            if not wave:
                continue
            extra = dict(self.additional_parameters)
            if previous:
                extra["dependency"] = f"afterany:{previous}"
            executor.update_parameters(slurm_additional_parameters=extra)
            groups = chunks(wave, self.runs_per_task)
            with executor.batch():
                batch = [
                    executor.submit(task, str(grid_dir), [s.to_dict() for s in g], context, threads)
                    for g in groups
                ]
            jobs.extend(batch)
            previous = batch[0].job_id.split("_")[0]
        self.jobs = jobs
        return jobs

    def run(self, grid_dir, context: dict, specs: Sequence, progress: GridProgress) -> dict:
        """Submit, then follow the run folders until every array task has ended; returns {run id: result}."""
        todo = [s for s in specs if not grid_mod.is_done(grid_dir, s.run_id)]
        jobs = self.submit(grid_dir, context, todo)
        array_ids = sorted({j.job_id.split("_")[0] for j in jobs})
        progress.log(f"submitted {len(jobs)} array task(s) in job(s) {', '.join(array_ids)}")
        reported, outcome = set(), {}
        while True:
            for spec in todo:
                if spec.run_id not in reported and grid_mod.is_done(grid_dir, spec.run_id):
                    reported.add(spec.run_id)
                    result = {
                        "run": spec.run_id,
                        "status": "done",
                        "seconds": _run_seconds(grid_dir, spec.run_id),
                    }
                    outcome[spec.run_id] = result
                    progress.update(result)
            live = _squeue_ids(array_ids)
            # result pickles, not job.done(): that asks sacct, which clusters without accounting lack
            finished = all(j.paths.result_pickle.exists() for j in jobs) or live == set()
            if finished:
                break
            time.sleep(self.poll_s)
        for job in jobs:
            try:
                results = job.result() if job.paths.result_pickle.exists() else []
            except Exception as exc:  # the task itself failed (e.g. not requeued after too many timeouts)
                results = []
                progress.log(f"array task {job.job_id} failed: {str(exc).strip().splitlines()[-1]}")
            for result in results or []:
                if result["status"] == "failed" and result["run"] not in outcome:
                    outcome[result["run"]] = result
                    progress.update(result)
        for spec in todo:
            if spec.run_id not in outcome and not grid_mod.is_done(grid_dir, spec.run_id):
                result = {
                    "run": spec.run_id,
                    "status": "failed",
                    "seconds": 0.0,
                    "error": grid_mod.run_failure(
                        grid_dir, spec.run_id, "its array task ended without finishing it (see DIR/slurm/ logs)"
                    ),
                }
                outcome[spec.run_id] = result
                progress.update(result)
        return outcome


def _run_seconds(grid_dir, run_id: str) -> float:
    import json

    path = grid_mod.run_dir(grid_dir, run_id) / "grid_timing.json"
    try:
        return float(json.loads(path.read_text())["wall_s"])
    except (OSError, ValueError, KeyError):
        return 0.0


# ---- the command ------------------------------------------------------------------------------------------


def make_executor(name: str = "local", **options):
    """`local` (slots) or `slurm` (partition, time_min, gpus_per_task, ...); None options are ignored."""
    options = {k: v for k, v in options.items() if v is not None}
    if name == "local":
        unknown = set(options) - {"slots", "num_threads"}
        if unknown:
            raise InputError(f"--{sorted(unknown)[0].replace('_', '-')} applies to --executor slurm only")
        return LocalExecutor(**options)
    if name == "slurm":
        options.pop("slots", None)
        return SlurmExecutor(**options)
    raise InputError(f"--executor {name!r}: choose local or slurm")


def _rewrite_results(out: Path, specs: Sequence, log: Optional[Callable] = None) -> Path:
    """DIR/results.csv rewritten in canonical order from the finished runs, as grid.finish_results, but never
    as a header without rows (while only source runs, which have no rows, are finished): the next append would
    then write a second header under it, and every later read of the table fails."""
    path = Path(out) / grid_mod.RESULTS
    if not grid_mod.collect_results(out, specs):
        return path
    return grid_mod.finish_results(out, specs, log=log)


def _report_interrupted(name: str, out: Path, specs: Sequence, stop: GridInterrupted, log: Callable,
                        runner=None) -> None:
    """After SIGTERM/SIGINT: results.csv rewritten from the finished runs, and one line saying what is kept."""
    results = _rewrite_results(out, specs, log=log)
    n_done = sum(grid_mod.is_done(out, s.run_id) for s in specs)
    cut = sum(
        (grid_mod.run_dir(out, s.run_id) / "checkpoint.pt").is_file() and not grid_mod.is_done(out, s.run_id)
        for s in specs
    )
    jobs = sorted({j.job_id.split("_")[0] for j in getattr(runner, "jobs", None) or []})
    still = (f"; its SLURM job(s) {', '.join(jobs)} keep running (scancel them to stop)" if jobs else "")
    log(
        f"experiment {name}: interrupted by {stop.name}; {n_done}/{len(specs)} runs finished and kept, the "
        f"other {len(specs) - n_done} are re-run by the same command ({cut} resume from a checkpoint); {results}"
        + still
    )


def run_experiment(
    plan,
    out,
    *,
    executor="local",
    data=None,
    splits=None,
    dry_run: bool = False,
    progress: bool = False,
    log: Callable = print,
    **executor_options,
) -> dict:
    """Run (or resume) the grid of `plan` in folder `out`; returns {total, done, failed, results, seconds}.

    plan: a preset name, a YAML path or a dict (plans.load_plan). Finished runs are skipped; results.csv is
    appended as runs finish and rewritten in canonical order at the end. SIGTERM or SIGINT while runs execute
    stops the workers, rewrites results.csv from the finished runs, logs one line and raises GridInterrupted.
    """
    from ..data.splits import read_splits
    from .plan_checks import budget_warnings, check_plan_data
    from .plans import load_plan, plan_origin

    t0 = time.perf_counter()
    where = plan_origin(plan)
    plan = load_plan(plan, data=data, splits=splits)
    runner = (
        make_executor(executor, **executor_options)
        if not isinstance(executor, (LocalExecutor, SlurmExecutor))
        else executor
    )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    # the plan against its data before any spec is made: prepare_data is idempotent (open_grid asks it again)
    check_plan_data(plan, read_splits(grid_mod.prepare_data(plan, out, log=log)["splits"]), where)
    opened = grid_mod.open_grid(plan, out, log=log)
    specs, context = opened["specs"], opened["context"]
    done = sum(grid_mod.is_done(out, s.run_id) for s in specs)
    kinds = {k: sum(s.kind == k for s in specs) for k in grid_mod.KINDS}
    log(
        f"experiment {plan['name']}: {len(specs)} runs "
        f"({', '.join(f'{v} {k}' for k, v in kinds.items() if v)}), "
        f"{done} already finished; {runner.describe()}; folder {out}"
    )
    workers = max(1, getattr(runner, "slots", 1) or 1)
    if dry_run:
        for line in budget_warnings(specs, context, num_workers=workers):
            log(line)
        return {"total": len(specs), "done": done, "failed": 0, "results": None, "seconds": 0.0}
    domains = sorted({s.source for s in specs} | {s.target for s in specs} - {""})
    grid_mod.preprocess_all(context, domains, num_workers=workers, progress=progress)
    for line in budget_warnings(specs, context):
        log(line)
    bar = GridProgress(len(specs), done, log=log, bar=progress)
    try:
        with stop_on_signals():
            outcome = runner.run(out, context, specs, bar)
    except GridInterrupted as stop:
        bar.close()
        _report_interrupted(plan["name"], out, specs, stop, log, runner)
        raise
    finally:
        bar.close()
    results = _rewrite_results(out, specs, log=log)
    n_done = sum(grid_mod.is_done(out, s.run_id) for s in specs)
    failed = [r for r in outcome.values() if r["status"] == "failed"]
    held = [r for r in outcome.values() if r["status"] == "busy"]
    seconds = time.perf_counter() - t0
    log(
        f"experiment {plan['name']}: {n_done}/{len(specs)} runs finished, {len(failed)} failed, "
        + (f"{len(held)} held by another process, " if held else "")
        + f"{_duration(seconds)}; {results}"
    )
    return {
        "total": len(specs),
        "done": n_done,
        "failed": len(failed),
        "results": str(results),
        "seconds": seconds,
        "outcome": outcome,
    }
