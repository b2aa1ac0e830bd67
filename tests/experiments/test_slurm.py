"""The SLURM executor on a real single-node SLURM on localhost (.ci/slurm-setup): submitit job arrays, one
task preempted with USR2 mid-run (submitit checkpoints and requeues it), the same results.csv as the local
executor. Skipped with a reason where slurm or submitit is missing."""

import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

from fewshot_da.experiments.executors import SlurmExecutor, run_experiment
from tests.grid_plans import tiny_plan

ROOT = Path(__file__).resolve().parents[2]


def _slurm_up() -> bool:
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and any(s in out.stdout for s in ("idle", "mixed", "allocated"))


@pytest.fixture(scope="module")
def slurm():
    pytest.importorskip("submitit", reason="submitit not installed (pip install 'fewshot-da[slurm]')")
    if not shutil.which("slurmctld") or not shutil.which("sbatch"):
        pytest.skip("slurm-wlm is not installed; run .ci/slurm-setup as root to install and start it")
    if not _slurm_up():
        if os.geteuid() != 0:
            pytest.skip("slurm is installed but not running, and starting it needs root (.ci/slurm-setup)")
        setup = subprocess.run(
            [str(ROOT / ".ci" / "slurm-setup")], capture_output=True, text=True, timeout=600
        )
        if setup.returncode != 0 or not _slurm_up():
            pytest.skip(f"could not start slurm on localhost: {(setup.stdout + setup.stderr).strip()[-300:]}")


def _squeue(array_id: str) -> list:
    out = subprocess.run(
        ["squeue", "-h", "-r", "-j", array_id, "-o", "%i %T %r"], capture_output=True, text=True
    )
    return [line.split() for line in out.stdout.splitlines() if line.strip()]


class _Preempter(threading.Thread):
    """Sends USR2 (what SLURM sends before a time limit or a preemption) to the adaptation array once one of
    its runs is between checkpoints; then lets the requeued tasks start at once (SLURM holds a requeued job
    back for 120 s by default)."""

    def __init__(self, executor: SlurmExecutor, out: Path):
        super().__init__(daemon=True)
        self.executor, self.out = executor, out
        self.signalled, self.partial, self.stop = None, [], False

    def run(self):
        deadline = time.monotonic() + 600
        while not self.stop and time.monotonic() < deadline:
            adapt = self.out / "runs" / "adapt"
            if self.signalled is None and adapt.is_dir() and len(self.executor.jobs) > 1:
                partial = [
                    p.parent for p in adapt.rglob("checkpoint.pt") if not (p.parent / "summary.json").exists()
                ]
                if partial:
                    array_id = self.executor.jobs[-1].job_id.split("_")[0]
                    # refused when the array finished meanwhile: keep watching for another run in flight
                    if subprocess.run(["scancel", "--signal=USR2", array_id], capture_output=True).returncode == 0:
                        self.signalled, self.partial = array_id, partial
            elif self.signalled is not None:
                for job_id, state, *reason in _squeue(self.signalled):
                    if state == "PENDING" and reason and reason[0] == "BeginTime":
                        subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"])
            time.sleep(0.05)


def test_slurm_grid_with_a_requeued_task_matches_local(slurm, tmp_path, monkeypatch):
    # adapted runs of 3 x 30 steps, long enough between checkpoints for the preempter to catch one on any load
    plan = tiny_plan(schedules={"source": {"epochs": 2, "iters_per_epoch": 4, "batch_size": 4, "crop": 24},
                                "finetune": {"epochs": 3, "iters_per_epoch": 30, "batch_size": 4, "crop": 24}})
    local = tmp_path / "local"
    assert run_experiment(plan, local, slots=2, log=lambda _: None)["failed"] == 0

    out = tmp_path / "slurm"
    executor = SlurmExecutor(time_min=10, runs_per_task=2, cpus_per_task=1, poll_s=0.5)
    preempter = _Preempter(executor, out)
    preempter.start()
    lines = []
    try:
        summary = run_experiment(plan, out, executor=executor, log=lines.append)
    finally:
        preempter.stop = True
        preempter.join(timeout=5)
    assert summary["failed"] == 0 and summary["done"] == 9, lines
    assert preempter.signalled, "no adaptation run was caught between checkpoints"
    logs = "".join(p.read_text() for p in sorted((out / "slurm").rglob("*_log.*")))
    assert "Caught signal SIGUSR2" in logs and "Requeued job" in logs
    assert any("resumed after epoch" in (p / "log.txt").read_text() for p in preempter.partial)
    # two arrays: sources + oracles, then baselines + adapted runs (after the first), 2 runs per task
    assert len(executor.jobs) == 2 + 3
    assert (out / "results.csv").read_bytes() == (local / "results.csv").read_bytes()
