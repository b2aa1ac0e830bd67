"""The run-folder protocol: lock (pid and host, stale after a kill), identity over data and settings, leftovers."""
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from fewshot_da.errors import InputError
from fewshot_da.experiments.run_folder import (claim, clean_leftovers, finished_summary, identity_of, locked,
                                               read_run, write_summary)


def test_second_writer_is_refused_with_holder_named(tmp_path):
    with locked(tmp_path / "run"):
        with pytest.raises(InputError, match=r"another run is writing this folder \(pid \d+ on "):
            with locked(tmp_path / "run"):
                pass
    with locked(tmp_path / "run"):  # released on exit
        pass


def test_lock_of_a_killed_process_is_stale_and_wait_blocks(tmp_path):
    script = textwrap.dedent(f"""
        import time
        from fewshot_da.experiments.run_folder import locked
        with locked({str(tmp_path / 'run')!r}):
            print('held', flush=True)
            time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    with pytest.raises(InputError, match=f"pid {proc.pid}"):
        with locked(tmp_path / "run"):
            pass
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    t0 = time.perf_counter()
    with locked(tmp_path / "run", wait=True, poll_s=0.05):  # the kernel dropped the dead holder's flock
        assert time.perf_counter() - t0 < 5


def test_identity_covers_data_and_refuses_another_run(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text("id,image,mask,domain\na,a.nii.gz,am.nii.gz,x\n")
    spec = {"kind": "train", "source": "x"}
    run = tmp_path / "run"
    first = identity_of(spec, {"lr": 0.1, "device": "cpu"}, [manifest])
    assert first == identity_of(spec, {"lr": 0.1, "device": "cuda"}, [manifest])  # the device is not identity
    claim(run, spec, first)
    (run / "checkpoint.pt").write_bytes(b"x")  # the run has started
    claim(run, spec, first)  # the same run resumes
    with pytest.raises(InputError, match="its source differs"):
        claim(run, {"kind": "train", "source": "y"}, identity_of({"kind": "train", "source": "y"}, {}, [manifest]))
    manifest.write_text("id,image,mask,domain\na,a.nii.gz,am.nii.gz,z\n")
    with pytest.raises(InputError, match="holds another run"):
        claim(run, spec, identity_of(spec, {"lr": 0.1}, [manifest]))
    assert read_run(run)["identity"] == first


def test_unstarted_folder_is_reclaimed_and_summary_is_strict_json(tmp_path):
    claim(tmp_path, {"a": 1}, "one")
    claim(tmp_path, {"a": 2}, "two")  # nothing computed yet: a corrected command takes the folder
    assert read_run(tmp_path)["identity"] == "two"
    summary = write_summary(tmp_path, {"x": float("nan")})
    assert summary == {"x": None} == finished_summary(tmp_path)


def test_leftovers_of_a_kill_are_removed(tmp_path):
    (tmp_path / "checkpoint.pt.tmp123").write_bytes(b"partial")
    (tmp_path / ".tmp-cache").mkdir()
    (tmp_path / "metrics.csv").write_text("epoch\n")
    assert sorted(clean_leftovers(tmp_path)) == [".tmp-cache", "checkpoint.pt.tmp123"]
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.csv"]
