"""The local slots executor on a real process tree: kill -9, SIGTERM and Ctrl-C of `fewshot-da experiment run`
leave no process behind (slot workers, multiprocessing's resource_tracker), and the grid resumes to completion.

Descendants are found by scanning /proc (ppid links), recorded with their start time so a reused pid is not
mistaken for a survivor.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import cli_script

from fewshot_da.experiments.executors import GridProgress
from tests.grid_plans import tiny_plan

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="needs /proc (Linux)")



def _stat(pid: int):
    """(ppid, state, start time in clock ticks) of a live process, or None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()  # after "pid (comm) "
    return int(fields[1]), fields[0], int(fields[19])


def _descendants(root: int) -> dict:
    """{pid: start time} of every live process below `root`."""
    table = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            info = _stat(int(entry))
            if info is not None:
                table[int(entry)] = info
    out, frontier = {}, [root]
    while frontier:
        parent = frontier.pop()
        for pid, (ppid, _, start) in table.items():
            if ppid == parent and pid not in out:
                out[pid] = start
                frontier.append(pid)
    return out


def _alive(pid: int, start: int) -> bool:
    info = _stat(pid)
    return info is not None and info[2] == start and info[1] != "Z"


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return "?"


def _start_grid(tmp_path: Path, name: str):
    plan = tmp_path / "tiny.yaml"
    plan.write_text(yaml.safe_dump(tiny_plan()))
    out = tmp_path / name
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.Popen(
        [sys.executable, "-c", cli_script(ROOT), "experiment", "run", str(plan), "--out", str(out),
         "--slots", "2", "--quiet"],
        cwd=str(ROOT),
        env=env,
        start_new_session=True,  # its own process group: the test can always clean up after itself
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    return proc, plan, out


def _wait_mid_grid(proc, out: Path, timeout_s: float = 300.0) -> dict:
    """Wait until a run has finished, another is between its checkpoints and both slot workers are up;
    returns the descendants of the grid process at that moment."""
    deadline = time.monotonic() + timeout_s
    runs = out / "runs"
    while time.monotonic() < deadline and proc.poll() is None:
        if runs.is_dir():
            partial = [p for p in runs.rglob("checkpoint.pt") if not (p.parent / "summary.json").exists()]
            if partial and any(runs.rglob("summary.json")):
                below = _descendants(proc.pid)
                workers = [pid for pid in below if "multiprocessing" in _cmdline(pid)]
                if len(workers) >= 2:
                    return below
        time.sleep(0.02)
    raise AssertionError(f"the grid never got mid-way (rc {proc.poll()}): {proc.stderr.read()[-800:]}")


def _survivors(recorded: dict, within_s: float) -> list:
    deadline = time.monotonic() + within_s
    while True:
        alive = [pid for pid, start in recorded.items() if _alive(pid, start)]
        if not alive or time.monotonic() > deadline:
            return [f"{pid}: {_cmdline(pid)}" for pid in alive]
        time.sleep(0.1)


def _cleanup(proc, recorded: dict) -> None:
    for pid, start in recorded.items():
        if _alive(pid, start):
            os.kill(pid, signal.SIGKILL)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def _resume(plan: Path, out: Path):
    """The same command again (quiet); returns (rc, stdout)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    done = subprocess.run(
        [sys.executable, "-c", cli_script(ROOT), "experiment", "run", str(plan), "--out", str(out),
         "--slots", "2", "--quiet"],
        cwd=str(ROOT), env=env, capture_output=True, text=True, timeout=600, check=False,
    )
    return done.returncode, done.stdout + done.stderr


def test_the_progress_bar_keeps_one_line_per_finished_run_and_says_resumed(capsys):
    """On a terminal the bar used to swallow every finished run's line (only failures were written)."""
    lines = []
    bar = GridProgress(3, 1, log=lines.append, bar=True)
    bar.update({"run": "adapt/x", "status": "done", "seconds": 1.0, "resumed": "resumed after epoch 1"})
    bar.update({"run": "adapt/y", "status": "done", "seconds": 2.0})
    bar.close()
    err = capsys.readouterr().err
    assert "[2/3] done adapt/x (1.0 s)" in err and "resumed after epoch 1" in err
    assert "[3/3] done adapt/y (2.0 s)" in err
    quiet = GridProgress(2, 0, log=lines.append)
    quiet.update({"run": "adapt/x", "status": "done", "seconds": 1.0, "resumed": "resumed after epoch 1"})
    assert lines[-1].startswith("[1/2] done adapt/x (1.0 s)") and lines[-1].endswith(", resumed after epoch 1")


def test_kill9_of_the_grid_leaves_no_worker_and_the_grid_resumes(tmp_path):
    proc, plan, out = _start_grid(tmp_path, "killed")
    recorded = {}
    try:
        recorded = _wait_mid_grid(proc, out)
        assert any("resource_tracker" in _cmdline(pid) for pid in recorded), "no resource_tracker seen"
        os.kill(proc.pid, signal.SIGKILL)  # the grid process only, as `kill -9 PID` does
        proc.wait(timeout=30)
        survivors = _survivors(recorded, within_s=10.0)
    finally:
        _cleanup(proc, recorded)
    assert not survivors, f"alive 10 s after kill -9 of the grid: {survivors}"
    rc, output = _resume(plan, out)
    assert rc == 0, output
    assert "9/9 runs finished, 0 failed" in output
    # a real run warns about the degenerate budget as --dry-run does (tests/experiments/test_plan_checks.py)
    assert "warning: budget 1/4 of ge15 is degenerate" in output


def _signal_mid_grid(tmp_path, name, send) -> tuple:
    """Start a grid, `send(pid)` a signal while its workers run, wait up to 30 s for it to exit; (plan, out, rc,
    stdout, stderr, descendants still alive 10 s later)."""
    proc, plan, out = _start_grid(tmp_path, name)
    recorded = {}
    try:
        recorded = _wait_mid_grid(proc, out)
        send(proc.pid)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        survivors = _survivors(recorded, within_s=10.0)
        rc = proc.poll()
        stdout, stderr = proc.communicate(timeout=5) if rc is not None else ("", "")
    finally:
        _cleanup(proc, recorded)
    return plan, out, rc, stdout, stderr, survivors


def test_sigterm_stops_the_workers_and_exits_cleanly_and_the_cut_run_is_rerun(tmp_path):
    # a scheduler's or a user's `kill PID`
    plan, out, rc, stdout, stderr, survivors = _signal_mid_grid(tmp_path, "terminated",
                                                                lambda pid: os.kill(pid, signal.SIGTERM))
    assert rc is not None, "the grid did not exit within 30 s of SIGTERM"
    assert not survivors, f"alive 10 s after SIGTERM of the grid: {survivors}"
    assert rc == 128 + signal.SIGTERM, (rc, stdout, stderr)
    assert "Traceback" not in stderr, stderr
    last = stdout.strip().splitlines()[-1]
    assert "interrupted by SIGTERM" in last and "re-run" in last, stdout
    finished = {str(p.parent.relative_to(out / "runs")) for p in (out / "runs").rglob("summary.json")}
    assert 0 < len(finished) < 9
    rc, output = _resume(plan, out)
    assert rc == 0, output
    assert "9/9 runs finished, 0 failed" in output
    assert f"{len(finished)} already finished" in output  # nothing cut mid-way was counted as done
    # one line per run that finished in this resume, and the interrupted run says it resumed
    done_lines = [line for line in output.splitlines() if line.startswith("[") and " done " in line]
    assert len(done_lines) == 9 - len(finished), output
    assert any("resumed after epoch" in line for line in done_lines), output


def test_ctrl_c_of_the_group_stops_everything_without_tracebacks(tmp_path):
    # Ctrl-C: the terminal signals the whole foreground group
    _, out, rc, stdout, stderr, survivors = _signal_mid_grid(tmp_path, "interrupted",
                                                             lambda pid: os.killpg(pid, signal.SIGINT))
    assert rc is not None, "the grid did not exit within 30 s of Ctrl-C"
    assert not survivors, f"alive 10 s after Ctrl-C: {survivors}"
    assert rc == 128 + signal.SIGINT, (rc, stdout, stderr)
    assert "Traceback" not in stderr, stderr
    assert "interrupted by SIGINT" in stdout.strip().splitlines()[-1], stdout


PREPROCESS = """
import sys
sys.path.insert(0, sys.argv[1])
from fewshot_da.data.phantoms import write_phantom_dataset
from fewshot_da.data.preprocess import preprocess_options
from fewshot_da.data.cache import preprocess_manifest

if __name__ == "__main__":
    records = write_phantom_dataset(sys.argv[2], domains=["siemens3", "ge15"], scans_per_domain=12,
                                    shape=[96, 96, 64], seed=0)
    preprocess_manifest(records, sys.argv[2] + "/cache", preprocess_options("paper"), num_workers=2,
                        progress=False)
"""


def test_kill9_during_preprocessing_leaves_no_pool_worker(tmp_path):
    """The grid preprocesses every scan in a process pool first; its workers end with the killed parent too."""
    script = tmp_path / "preprocess.py"  # a file, not -c: spawned workers re-import the main module
    script.write_text(PREPROCESS)
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, str(script), str(ROOT), str(tmp_path / "data")], env=env,
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    recorded = {}
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            below = _descendants(proc.pid)
            if sum("spawn_main" in _cmdline(pid) for pid in below) >= 2 and (tmp_path / "data/cache").is_dir():
                recorded = below
                break
            time.sleep(0.05)
        assert recorded, f"the pool never started (rc {proc.poll()}): {proc.stderr.read()[-800:]}"
        time.sleep(1.0)  # the workers are past their start and inside a scan
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        survivors = _survivors(recorded, within_s=10.0)
    finally:
        _cleanup(proc, recorded)
    assert not survivors, f"alive 10 s after kill -9 during preprocessing: {survivors}"


def test_a_grid_stopped_with_only_sources_finished_leaves_an_appendable_results_table(tmp_path):
    """SIGTERM after the source runs only (they have no results rows): the table is not rewritten as a bare
    header, which the next run's append would follow with a second header (every later read then failed with
    "'NoneType' object has no attribute 'startswith'")."""
    import json

    from fewshot_da.experiments import executors
    from fewshot_da.experiments import grid as grid_mod
    from fewshot_da.experiments.results import append_results, read_results

    source = grid_mod.RunSpec("source/dart20/a", "source", "dart20", source="a", target="a")
    oracle = grid_mod.RunSpec("oracle/dart20/b/f0", "oracle", "dart20", source="b", target="b", fold=0)
    folder = grid_mod.run_dir(tmp_path, source.run_id)
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps({"spec": {"kind": "train"}, "scores": [{"id": "x", "dice": 1}]}))
    lines = []
    stop = executors.GridInterrupted(signal.SIGTERM)
    executors._report_interrupted("g", tmp_path, [source, oracle], stop, lines.append)
    assert "interrupted by SIGTERM; 1/2 runs finished" in lines[0]
    append_results(tmp_path / "results.csv", [{"run": oracle.run_id, "case": "y", "dice": 0.5}])
    rows = read_results(tmp_path / "results.csv")
    assert [(r["run"], r["dice"]) for r in rows] == [(oracle.run_id, 0.5)]
