"""--num-threads: one option for every computing verb; OMP_NUM_THREADS respected unless the flag says otherwise;
a one-line note when busy cores leave fewer free than the threads asked for."""
import re

import click
import numpy as np
import pytest

from fewshot_da import threads as threads_mod
from fewshot_da.errors import InputError
from fewshot_da.experiments.executors import make_executor, slot_environments

VERBS = (["train"], ["adapt"], ["predict"], ["eval"], ["recommend"], ["demo"], ["shift-map"], ["experiment", "run"])


def _option_help(cli_runner, cli_app, verb, name):
    text = cli_runner.invoke(cli_app, [*verb, "--help"], terminal_width=400).output
    lines = [line for line in text.splitlines() if line.strip().startswith(name)]
    assert lines, f"{' '.join(verb)} has no {name}"
    return " ".join(lines[0].split())


def test_every_computing_verb_takes_the_same_num_threads(cli_runner, cli_app):
    helps = {" ".join(v): _option_help(cli_runner, cli_app, v, "--num-threads") for v in VERBS}
    assert len(set(helps.values())) == 1, helps
    assert "OMP_NUM_THREADS" in helps["train"]


def test_eval_uses_the_shared_tolerance(cli_runner, cli_app):
    assert _option_help(cli_runner, cli_app, ["eval"], "--tolerance") == \
        _option_help(cli_runner, cli_app, ["train"], "--tolerance")


def _probe_command():
    from fewshot_da_cli import options

    @click.command()
    @options.num_threads
    def probe(num_threads):
        click.echo(f"threads={num_threads}")

    return probe


@pytest.mark.parametrize("env, flag, expected", [(None, None, "None"), ("3", None, "3"), ("3", "2", "2"),
                                                 (None, "1", "1")])
def test_flag_then_omp_num_threads_then_all_cores(cli_runner, monkeypatch, env, flag, expected):
    if env is None:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    else:
        monkeypatch.setenv("OMP_NUM_THREADS", env)
    result = cli_runner.invoke(_probe_command(), [] if flag is None else ["--num-threads", flag])
    assert result.exit_code == 0 and result.output.strip() == f"threads={expected}"


def test_bad_thread_counts_are_one_line_errors(cli_runner, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "lots")
    result = cli_runner.invoke(_probe_command(), [])
    assert result.exit_code != 0 and "OMP_NUM_THREADS='lots' is not a positive integer" in result.output
    assert "Traceback" not in result.output
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert cli_runner.invoke(_probe_command(), ["--num-threads", "0"]).exit_code != 0
    with pytest.raises(InputError, match="--num-threads 0"):
        threads_mod.resolve_threads(0)


def test_experiment_slots_respect_the_flag_and_omp_num_threads(monkeypatch):
    """`experiment run` had no --num-threads and ignored OMP_NUM_THREADS ("2 CPU thread(s) each")."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert [t for _, t in slot_environments(2, [], 4)] == [2, 2]  # default: the cores split between slots
    assert [e["OMP_NUM_THREADS"] for e, _ in slot_environments(2, [], 4, 1)] == ["1", "1"]
    monkeypatch.setattr("fewshot_da.experiments.executors._visible_gpus", list)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert make_executor("local", slots=1).describe().endswith("1 slot(s), 1 CPU thread(s) each")
    assert make_executor("local", slots=1, num_threads=3).describe().endswith("3 CPU thread(s) each")
    assert make_executor("slurm", num_threads=2).num_threads == 2


def test_busy_cores_note():
    note = threads_mod.busy_cores_note(2, load=1.0, cores=2)
    assert note is not None and "\n" not in note and note.endswith("use --num-threads 1")
    assert "load average 1.0 on 2 cores" in note
    assert threads_mod.busy_cores_note(2, load=0.2, cores=2) is None  # idle enough
    assert threads_mod.busy_cores_note(1, load=7.0, cores=2) is None  # nothing fewer to suggest
    assert threads_mod.busy_cores_note(4, workers=2, load=2.0, cores=4).endswith("--num-threads 1 per worker")


def test_the_note_is_one_line_of_a_verb(cli_runner, cli_app, tmp_path, monkeypatch):
    import nibabel as nib

    mask = np.zeros((8, 8, 8), np.uint8)
    mask[2:6, 2:6, 2:6] = 1
    nib.save(nib.Nifti1Image(mask, np.eye(4)), tmp_path / "a.nii.gz")
    from fewshot_da_cli import options as cli_options

    monkeypatch.setattr(cli_options, "stderr_is_terminal", lambda: True)  # the note is for a person at a terminal
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads_mod, "cpu_cores", lambda: 4)
    monkeypatch.setattr(threads_mod.os, "getloadavg", lambda: (3.0, 3.0, 3.0))
    args = ["eval", "--gt", str(tmp_path / "a.nii.gz"), "--pred", str(tmp_path / "a.nii.gz")]
    result = cli_runner.invoke(cli_app, args)
    assert result.exit_code == 0, result.output
    notes = [line for line in result.output.splitlines() if line.startswith("note: load average")]
    assert len(notes) == 1 and re.search(r"use --num-threads 1$", notes[0])
    quiet = cli_runner.invoke(cli_app, [*args, "--num-threads", "1"])
    assert quiet.exit_code == 0 and "note: load average" not in quiet.output
