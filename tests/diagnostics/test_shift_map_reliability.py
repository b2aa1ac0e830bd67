"""`fewshot-da shift-map`: the run-folder protocol on --out (lock, identity) and one-line errors for a foreign
checkpoint, a bad --max-scans and a --units prefix naming no module (issue 22)."""
import json
import subprocess
import sys
import time

import pytest
import torch


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """Two phantom domains of three scans and a dart20 source run of two SGD steps (its BN statistics need not
    settle: these tests check the folder protocol and the errors, not the scores)."""
    from fewshot_da.data.datasets import index_cc359
    from fewshot_da.data.manifest import write_manifest
    from fewshot_da.data.phantoms import write_phantom_dataset
    from fewshot_da.data.splits import write_splits
    from fewshot_da.experiments import stages

    root = tmp_path_factory.mktemp("shiftmap-reliability")
    write_phantom_dataset(root / "data", domains=("siemens15", "ge15"), scans_per_domain=3, shape=(32, 32, 8))
    records = index_cc359(root / "data")
    write_manifest(records, root / "manifest.csv")
    write_splits(records, root / "splits.json")
    stages.train(manifest=root / "manifest.csv", splits=root / "splits.json",
                 ids=[r.id for r in records if r.domain == "siemens15"], eval_ids=[], out=root / "source",
                 progress=False, overrides={"epochs": 1, "iters_per_epoch": 2, "batch_size": 2, "crop": 32,
                                            "lr_steps": {}})
    return root


def _args(project, out, *extra):
    return ["shift-map", "--model", str(project / "source"), "--data", str(project / "manifest.csv"),
            "--out", str(out), "--domain", "ge15", "--max-slices", "4", *map(str, extra)]


def _error_line(result):
    lines = result.output.strip().splitlines()
    assert result.exit_code != 0 and len(lines) == 1 and lines[0].startswith("Error:"), result.output
    return lines[0]


def test_a_second_writer_on_one_out_is_refused_naming_the_holder(project, tmp_path, cli_runner, cli_app):
    out = tmp_path / "map"
    code = ("import sys, time\nfrom fewshot_da.experiments.run_folder import locked\n"
            "with locked(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(60)\n")
    holder = subprocess.Popen([sys.executable, "-c", code, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        line = _error_line(cli_runner.invoke(cli_app, _args(project, out)))
        assert "another run is writing this folder" in line and f"pid {holder.pid}" in line
        assert not (out / "summary.json").exists()
    finally:
        holder.kill()
        holder.wait()
    result = cli_runner.invoke(cli_app, _args(project, out))  # the kernel dropped the killed holder's lock
    assert result.exit_code == 0, result.output


def test_same_call_reuses_the_map_and_other_settings_are_refused(project, tmp_path, cli_runner, cli_app):
    out = tmp_path / "map"
    first = cli_runner.invoke(cli_app, _args(project, out))
    assert first.exit_code == 0, first.output
    written = (out / "shift_map.csv").stat().st_mtime_ns
    assert "identity" in (out / "run.yaml").read_text()
    time.sleep(0.01)
    again = cli_runner.invoke(cli_app, _args(project, out))
    assert again.exit_code == 0, again.output
    assert (out / "shift_map.csv").stat().st_mtime_ns == written  # finished: not made again
    line = _error_line(cli_runner.invoke(cli_app, _args(project, out, "--divergence", "skl")))
    assert "holds another run" in line and "divergence" in line
    assert json.loads((out / "summary.json").read_text())["divergence"] == "w2"  # the first map is kept


def test_foreign_checkpoint_is_named(project, tmp_path, cli_runner, cli_app):
    import shutil

    fake = tmp_path / "fake-run"
    shutil.copytree(project / "source", fake)
    torch.save({"state_dict": {"w": torch.zeros(1)}, "epoch": 3}, fake / "checkpoint.pt")
    args = _args(project, tmp_path / "map")
    args[args.index("--model") + 1] = str(fake)
    line = _error_line(cli_runner.invoke(cli_app, args))
    assert "fake-run/checkpoint.pt: not a fewshot-da checkpoint" in line and "'state_dict'" in line


@pytest.mark.parametrize("option, value", [("--max-scans", "-1"), ("--max-slices", "-3"), ("--batch-size", "0")])
def test_negative_counts_are_refused(project, tmp_path, cli_runner, cli_app, option, value):
    line = _error_line(cli_runner.invoke(cli_app, _args(project, tmp_path / "map", option, value)))
    assert f"{option} {value}: must be a whole number >= 1" in line
    assert not (tmp_path / "map").exists()


def test_units_prefix_naming_no_module_is_refused(project, tmp_path, cli_runner, cli_app):
    units = tmp_path / "units.yaml"
    units.write_text("first: [init_path]\ndeep: [down9]\n")
    line = _error_line(cli_runner.invoke(cli_app, _args(project, tmp_path / "map", "--units", units)))
    assert "units.yaml: unit 'deep': prefix 'down9' names no module" in line and "init_path" in line
