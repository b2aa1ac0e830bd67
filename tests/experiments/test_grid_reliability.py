"""Grid state under hostile re-runs (issue 22): other data in a finished grid folder, a truncated summary.json,
half-written and concurrent results.csv appends, changed tolerances, a run held by another process, a corrupt
grid.json, the identity refusal's wording and the CPU thread count of resumed grids."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from fewshot_da.errors import InputError
from fewshot_da.experiments import grid as grid_mod
from fewshot_da.experiments.executors import run_experiment
from fewshot_da.experiments.results import append_results, read_results
from fewshot_da.experiments.run_folder import claim, identity_of
from tests.grid_plans import tiny_plan
from tests.experiments.test_slurm import slurm  # noqa: F401  (the real local SLURM fixture; skips with a reason without it)

ROOT = Path(__file__).resolve().parents[2]
ADAPT = "runs/adapt/dart20/siemens3-ge15/all/1/s0"


def small_plan(**changes) -> dict:
    """1 source + 1 baseline + 1 adapted run (no oracles): the least grid with a parent and children."""
    return tiny_plan(strategies=["all"], budgets=["1"], oracles=False, **changes)


def _quiet(_line):
    pass


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("reliability") / "grid"
    summary = run_experiment(small_plan(), out, slots=0, log=_quiet)
    assert summary["failed"] == 0 and summary["done"] == summary["total"] == 3
    return out


@pytest.fixture
def grid_copy(finished, tmp_path):
    """A private copy of the finished grid, to damage."""
    out = tmp_path / "grid"
    shutil.copytree(finished, out)
    return out


def _manifest_grid(tmp_path, finished) -> tuple:
    """A grid prepared (dry run) from --data manifest.csv (a copy of the phantoms' manifest)."""
    manifest = tmp_path / "manifest.csv"
    lines = (finished / "data" / "manifest.csv").read_text().splitlines()
    rows = [lines[0]]
    for line in lines[1:]:  # the image and mask paths made absolute, so the copy reads the same files
        cells = line.split(",")
        cells[1:3] = [str((finished / "data" / c).resolve()) for c in cells[1:3]]
        rows.append(",".join(cells))
    manifest.write_text("\n".join(rows) + "\n")
    out = tmp_path / "from-manifest"
    run_experiment(small_plan(), out, data=str(manifest), dry_run=True, log=_quiet)
    return manifest, out


# ---- Bad 1: other data in a finished grid folder ------------------------------------------------------------


def test_a_plan_whose_data_changed_is_refused_naming_the_key(grid_copy):
    before = (grid_copy / "grid.json").read_bytes()
    changed = small_plan(data={"domains": ["siemens3", "ge15"], "scans_per_domain": 6, "shape": [24, 24, 8],
                               "seed": 7})
    with pytest.raises(InputError, match=r"made from other data \(data\.seed: grid 0, now 7\)"):
        run_experiment(changed, grid_copy, slots=0, log=_quiet)
    assert (grid_copy / "grid.json").read_bytes() == before  # grid.json still names the grid's own data


def test_another_data_manifest_with_the_same_ids_is_refused(tmp_path, finished):
    manifest, out = _manifest_grid(tmp_path, finished)
    other = tmp_path / "other.csv"  # same ids, other images (other intensities)
    images = tmp_path / "brighter"
    images.mkdir()
    lines = manifest.read_text().splitlines()
    rows = [lines[0]]
    for line in lines[1:]:
        cells = line.split(",")
        shutil.copy(cells[1], images / Path(cells[1]).name)
        cells[1] = str(images / Path(cells[1]).name)
        rows.append(",".join(cells))
    other.write_text("\n".join(rows) + "\n")
    with pytest.raises(InputError, match=r"made from other data \(data\.manifest: grid '.*manifest\.csv', "
                                         r"now '.*other\.csv'\)"):
        run_experiment(small_plan(), out, data=str(other), dry_run=True, log=_quiet)


def test_a_manifest_edited_in_place_is_refused(tmp_path, finished):
    manifest, out = _manifest_grid(tmp_path, finished)
    manifest.write_text(manifest.read_text().replace("siemens3,", "siemens3,", 1) + "\n")
    with pytest.raises(InputError, match=r"manifest\.csv: the grid's manifest file changed since the grid was "
                                         r"made \(its sha256 differs\)"):
        run_experiment(small_plan(), out, data=str(manifest), dry_run=True, log=_quiet)


def test_finished_runs_made_from_other_data_are_refused_by_name(grid_copy):
    """data/ removed and made again from other data: each finished run's own record refuses the folder."""
    shutil.rmtree(grid_copy / "data")
    changed = small_plan(data={"domains": ["siemens3", "ge15"], "scans_per_domain": 6, "shape": [24, 24, 8],
                               "seed": 7})
    with pytest.raises(InputError) as caught:
        run_experiment(changed, grid_copy, slots=0, dry_run=True, log=_quiet)
    message = str(caught.value)
    assert "runs/source/dart20/siemens3: holds a run made from other data" in message
    assert "its plan data, manifest path, split file path" in message  # the copy's data/ is new
    assert "and 2 more run folder(s)" in message
    assert "\n" not in message


# ---- Bad 3: a truncated summary.json --------------------------------------------------------------------------


def test_a_truncated_summary_is_run_again_and_no_row_is_lost(grid_copy):
    before = (grid_copy / "results.csv").read_bytes()
    summary = grid_copy / ADAPT / "summary.json"
    summary.write_text(summary.read_text()[:200])
    assert not grid_mod.is_done(grid_copy, ADAPT.removeprefix("runs/"))
    lines = []
    again = run_experiment(small_plan(), grid_copy, slots=0, log=lines.append)
    assert again["failed"] == 0 and again["done"] == 3, lines
    assert again["outcome"][ADAPT.removeprefix("runs/")]["status"] == "done"  # it was run again
    assert json.loads(summary.read_text())["scores"]
    assert (grid_copy / "results.csv").read_bytes() == before


def test_a_truncated_summary_whose_rerun_fails_keeps_its_rows_and_is_named(grid_copy, monkeypatch):
    from fewshot_da.experiments import stages

    before = read_results(grid_copy / "results.csv")
    summary = grid_copy / ADAPT / "summary.json"
    summary.write_text(summary.read_text()[:200])

    def broken(**kwargs):
        raise RuntimeError("disk went away")

    monkeypatch.setattr(stages, "adapt", broken)
    lines = []
    again = run_experiment(small_plan(), grid_copy, slots=0, log=lines.append)
    assert again["failed"] == 1
    run_id = ADAPT.removeprefix("runs/")
    assert any(f"failed {run_id}" in line and "disk went away" in line for line in lines)
    assert any("damaged summary.json" in line and run_id in line for line in lines)
    after = read_results(grid_copy / "results.csv")
    assert len(after) == len(before)
    assert sorted(r["run"] for r in after) == sorted(r["run"] for r in before)


# ---- Bad 6: whole lines under a lock; the reader names a malformed line ----------------------------------------


def _rows(run: str, n: int, width: int = 1) -> list:
    return [{"run": run, "arch": "dart20", "source": "s", "target": "t", "strategy": "freeze", "layers": "all",
             "budget": "1", "seed": 0, "fold": "", "case": f"c{i:03d}", "dice": 0.5 + i / 1000,
             **{f"surface_dice_{t}mm": 0.25 for t in range(1, width + 1)}} for i in range(n)]


def test_an_append_after_a_half_written_line_cuts_it_and_the_reader_names_it(tmp_path):
    path = tmp_path / "results.csv"
    append_results(path, _rows("a", 2))
    whole = path.read_bytes()
    with open(path, "ab") as f:  # what a task cancelled mid-append leaves
        f.write(b"b,dart20,s,t,fre")
    problems = []
    assert len(read_results(path, log=problems.append)) == 2
    assert problems == [f"{path} line 4: a half-written row (no line end); line skipped"]
    logged = []
    append_results(path, _rows("c", 2), log=logged.append)  # crashed with AttributeError before
    assert logged == [f"{path} line 4: a half-written row (its writer was killed) was removed"]
    assert path.read_bytes().startswith(whole)
    problems.clear()
    assert [r["run"] for r in read_results(path, log=problems.append)] == ["a", "a", "c", "c"]
    assert problems == []


def test_the_reader_skips_and_names_a_malformed_middle_line(tmp_path):
    path = tmp_path / "results.csv"
    append_results(path, _rows("a", 3))
    lines = path.read_text().splitlines()
    lines[2] = lines[2].rsplit(",", 3)[0]  # a row missing its last cells
    path.write_text("\n".join(lines) + "\n")
    problems = []
    rows = read_results(path, log=problems.append)
    assert [r["case"] for r in rows] == ["c000", "c002"]
    header = lines[0].split(",")
    short = len(header) - 3
    assert problems == [f"{path} line 3: {short} fields, the header has {len(header)}; line skipped"]
    with pytest.warns(UserWarning, match=rf"results\.csv line 3: {short} fields"):
        read_results(path)


def test_a_run_appended_again_replaces_its_rows(tmp_path):
    """A cancelled task that finishes its run after the re-run did appends the run's rows again: kept once,
    the later ones."""
    path = tmp_path / "results.csv"
    append_results(path, _rows("a", 2) + _rows("b", 1))
    again = [dict(r, dice=0.75) for r in _rows("a", 3)]
    append_results(path, again)
    rows = read_results(path)
    assert sorted((r["run"], r["case"]) for r in rows) == [("a", "c000"), ("a", "c001"), ("a", "c002"),
                                                           ("b", "c000")]
    assert [r["dice"] for r in rows if r["run"] == "a"] == [0.75] * 3


_APPENDER = textwrap.dedent("""
    import sys
    sys.path.insert(0, sys.argv[1])
    from fewshot_da.experiments.results import append_results
    from tests.experiments.test_grid_reliability import _rows
    path, name, batches = sys.argv[2], sys.argv[3], int(sys.argv[4])
    for b in range(batches):
        append_results(path, _rows(f"{name}-{b}", 7, width=1 + b % 3))  # a wider header now and then
""")


def test_concurrent_appends_from_a_process_tree_keep_every_row_whole(tmp_path):
    """Six appender processes at once (and two more killed mid-way): every row of the survivors is in the
    file once, whole; nothing malformed is left once another append has run."""
    path = tmp_path / "results.csv"
    script = tmp_path / "appender.py"
    script.write_text(_APPENDER)
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")

    def start(name, batches):
        return subprocess.Popen([sys.executable, str(script), str(ROOT), str(path), name, str(batches)],
                                env=env, stderr=subprocess.PIPE)

    victims = [start(f"k{i}", 100000) for i in range(2)]
    workers = [start(f"p{i}", 12) for i in range(6)]
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # kill the victims once each has appended, while the others append
        text = path.read_text() if path.exists() else ""
        if all(f"\nk{i}-" in text for i in range(len(victims))) and sum(f"\np{i}-" in text for i in range(6)) >= 3:
            break
        time.sleep(0.01)
    for proc in victims:
        proc.send_signal(signal.SIGKILL)
    for proc in workers + victims:
        code = proc.wait(timeout=300)
        error = proc.stderr.read().decode()[-800:]
        proc.stderr.close()
        assert code == (0 if proc in workers else -signal.SIGKILL), error
    append_results(path, _rows("last", 1))
    problems = []
    rows = read_results(path, log=problems.append)
    assert problems == []
    keys = [(r["run"], r["case"]) for r in rows]
    assert len(keys) == len(set(keys))
    for i in range(6):
        for b in range(12):
            assert sum(1 for run, _ in keys if run == f"p{i}-{b}") == 7, (i, b)
    assert all(r["dice"] >= 0.5 and r["surface_dice_1mm"] == 0.25 for r in rows)
    assert {"surface_dice_2mm", "surface_dice_3mm"} <= set(rows[0])
    killed = {run.rsplit("-", 1)[0] for run, _ in keys if run.startswith("k")}
    assert killed, "the killed appenders wrote nothing before the kill: the test proves less than it says"


# ---- weak: tolerances, a held run, grid.json, the identity message, thread counts -------------------------------


def test_changed_tolerances_on_a_finished_grid_are_refused(grid_copy):
    with pytest.raises(InputError, match=r"scored at tolerances_mm 1 mm, the plan asks 1, 2 mm"):
        run_experiment(small_plan(tolerances_mm=[1.0, 2.0]), grid_copy, slots=0, log=_quiet)


_HOLDER = textwrap.dedent("""
    import fcntl, os, socket, sys, time
    handle = open(sys.argv[1], "a+")
    fcntl.flock(handle, fcntl.LOCK_EX)
    handle.seek(0); handle.truncate()
    handle.write(f"pid {os.getpid()} on {socket.gethostname()}\\n"); handle.flush()
    print("held", flush=True)
    time.sleep(120)
""")


def test_a_run_held_by_another_process_is_not_failed(grid_copy):
    run_id = ADAPT.removeprefix("runs/")
    (grid_copy / ADAPT / "summary.json").unlink()
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(grid_copy / ADAPT / ".grid-lock")],
                              stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline().strip() == b"held"
        lines = []
        summary = run_experiment(small_plan(), grid_copy, slots=0, log=lines.append)
    finally:
        holder.kill()
        holder.wait()
    assert summary["failed"] == 0 and summary["outcome"][run_id]["status"] == "busy"
    held = f"held by another process (pid {holder.pid} on {socket.gethostname()})"
    assert any(line.startswith(f"[held] {run_id}: {held}") for line in lines), lines
    assert "2/3 runs finished, 0 failed, 1 held by another process" in lines[-1]


def test_a_corrupt_grid_json_names_the_file(grid_copy, cli_runner, cli_app):
    (grid_copy / "grid.json").write_text('{"plan": {"name": ')
    result = cli_runner.invoke(cli_app, ["experiment", "status", str(grid_copy)])
    assert result.exit_code != 0
    assert result.output.startswith(f"Error: {grid_copy / 'grid.json'}: not valid JSON")
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1


def test_the_identity_refusal_names_the_differing_config_keys(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text("id,image,mask,domain\na,a.nii.gz,am.nii.gz,x\n")
    spec = {"kind": "train", "source": "x"}
    run = tmp_path / "run"
    claim(run, spec, identity_of(spec, {"lr": 0.01, "epochs": 3}, [manifest]))
    (run / "checkpoint.pt").write_bytes(b"x")
    with pytest.raises(InputError) as caught:
        claim(run, spec, identity_of(spec, {"lr": 0.001, "epochs": 3}, [manifest]))
    assert "holds another run (its config.lr differs)" in str(caught.value)
    assert "its its" not in str(caught.value)
    manifest.write_text("id,image,mask,domain\na,a.nii.gz,am.nii.gz,z\n")
    with pytest.raises(InputError, match=r"its data file contents \(manifest or split file\) differs"):
        claim(run, spec, identity_of(spec, {"lr": 0.01, "epochs": 3}, [manifest]))


def test_a_grid_resumed_with_another_thread_count_warns_naming_runs_and_threads(grid_copy):
    import torch

    run_id = ADAPT.removeprefix("runs/")
    assert json.loads((grid_copy / ADAPT / "grid_timing.json").read_text())["threads"] == 1
    assert json.loads((grid_copy / ADAPT / "grid_run.json").read_text())["threads"] == 1
    (grid_copy / ADAPT / "summary.json").unlink()
    threads = torch.get_num_threads()
    try:
        lines = []
        run_experiment(small_plan(), grid_copy, slots=0, num_threads=2, log=lines.append)
    finally:
        torch.set_num_threads(threads)
    warnings = [line for line in lines if "different CPU thread counts" in line]
    assert len(warnings) == 1
    assert "1 thread(s): 2 run(s)" in warnings[0] and f"2 thread(s): 1 run(s), e.g. {run_id}" in warnings[0]


# ---- SLURM: scancel mid-way, re-run: results.csv whole and complete -------------------------------------------

def test_slurm_grid_cancelled_mid_way_then_rerun_is_whole_and_complete(slurm, tmp_path):  # noqa: F811
    from fewshot_da.experiments.executors import SlurmExecutor

    # the adapted run long enough (90 steps) that the watcher catches it running, whatever the machine's load
    plan = small_plan(schedules={"source": {"epochs": 2, "iters_per_epoch": 4, "batch_size": 4, "crop": 24},
                                 "finetune": {"epochs": 3, "iters_per_epoch": 30, "batch_size": 4, "crop": 24}})
    local = tmp_path / "local"
    assert run_experiment(plan, local, slots=0, log=_quiet)["failed"] == 0
    out = tmp_path / "slurm"
    executor = SlurmExecutor(time_min=10, runs_per_task=1, cpus_per_task=1, poll_s=0.5)
    cancelled = {}

    def cancel_mid_way():
        deadline = time.monotonic() + 300
        adapt = out / ADAPT
        while time.monotonic() < deadline and not cancelled:
            if len(executor.jobs) > 1 and (adapt / ".grid-lock").exists() and not (adapt / "summary.json").exists():
                arrays = sorted({j.job_id.split("_")[0] for j in executor.jobs})
                subprocess.run(["scancel", *arrays], capture_output=True, check=False)
                cancelled["arrays"] = arrays
            time.sleep(0.05)

    import threading

    watcher = threading.Thread(target=cancel_mid_way, daemon=True)
    watcher.start()
    lines = []
    first = run_experiment(plan, out, executor=executor, log=lines.append)
    watcher.join(timeout=10)
    assert cancelled, f"the grid ended before its adapted run was caught running: {lines}"
    assert first["failed"] >= 1 and not (out / ADAPT / "summary.json").exists()
    failure = next(line for line in lines if f"failed {ADAPT.removeprefix('runs/')} " in line)
    assert "its array task ended without finishing it (see DIR/slurm/ logs); it was interrupted" in failure
    again = run_experiment(plan, out, executor=SlurmExecutor(time_min=10, runs_per_task=1, cpus_per_task=1,
                                                                     poll_s=0.5), log=lines.append)
    assert again["failed"] == 0 and again["done"] == 3, lines
    problems = []
    assert len(read_results(out / "results.csv", log=problems.append)) == len(read_results(local / "results.csv"))
    assert problems == []
    assert (out / "results.csv").read_bytes() == (local / "results.csv").read_bytes()
