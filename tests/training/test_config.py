"""The lr schedule: a drop applies after its 0-based epoch and must fire; a preset's drop follows the epochs chosen."""
import csv
import re

import pytest
import yaml

from fewshot_da.data.datasets import index_cc359
from fewshot_da.data.manifest import write_manifest
from fewshot_da.data.phantoms import write_phantom_dataset
from fewshot_da.data.splits import make_splits, source_train_ids, write_splits
from fewshot_da.errors import InputError
from fewshot_da.training.config import PRESETS, STAGES, TrainConfig, lr_at, preset_config, scale_lr_steps

TINY = ["--iters-per-epoch", "1", "--batch-size", "2", "--crop", "16", "--num-threads", "1", "--quiet"]


def _lrs(config):
    return [lr_at(e, config) for e in range(config.epochs)]


# ------------------------------------------------------------------------- one rule: accepted <=> it fires
@pytest.mark.parametrize("epochs", [1, 2, 3, 5])
def test_every_accepted_drop_fires_and_every_refused_one_would_not(epochs):
    for epoch in range(-1, epochs + 1):
        try:
            config = TrainConfig(arch="dsa", epochs=epochs, lr=1.0, lr_steps={epoch: 0.1})
        except InputError as exc:
            assert str(exc).startswith(f"--lr-steps {epoch}:0.1: ")
            assert not 0 <= epoch <= epochs - 2
            continue
        lrs = _lrs(config)
        # the drop applies from the epoch after E on, and that epoch exists
        assert lrs[: epoch + 1] == [1.0] * (epoch + 1) and lrs[epoch + 1] == pytest.approx(0.1), (epochs, epoch)


def test_drop_after_the_last_epoch_is_refused_in_one_line():
    """Issue 22 bad 4: `--epochs 3 --lr-steps 2:0.1` trained at one lr throughout."""
    with pytest.raises(InputError, match=r"^--lr-steps 2:0.1: a drop after epoch 2 never fires with --epochs 3 "
                                         r".*give an epoch from 0 to 1$"):
        TrainConfig(arch="dsa", epochs=3, lr_steps={2: 0.1})
    with pytest.raises(InputError, match="with --epochs 1 no drop can fire"):
        TrainConfig(arch="dsa", epochs=1, lr_steps={0: 0.1})


def test_help_states_the_rule(cli_runner, cli_app):
    for verb in ("train", "adapt", "recommend"):
        text = " ".join(cli_runner.invoke(cli_app, [verb, "--help"]).output.split())
        assert "after 0-based epoch EPOCH, i.e. from epoch EPOCH+1 on; 0 <= EPOCH <= epochs - 2" in text, verb


def test_presets_keep_their_effective_schedules():
    """The rule did not move: each preset's lr per epoch is what it was (81/100, 16/20, 46/60 at the full lr)."""
    full = {("paper", "source"): 81, ("paper", "finetune"): 16, ("dart20-code", "source"): 81,
            ("dart20-code", "finetune"): 16, ("dsa-code", "source"): 81, ("dsa-code", "finetune"): 46}
    for preset in PRESETS:
        for stage in STAGES:
            config = preset_config(preset, stage)
            lrs = _lrs(config)
            n = full[preset, stage]
            assert lrs[:n] == [config.lr] * n and lrs[n:] == [pytest.approx(config.lr * 0.1)] * (config.epochs - n)


def test_demo_schedules_keep_their_lr_per_epoch():
    """The demo's fine-tune drop after its last epoch was a no-op: it is dropped, the lr per epoch is unchanged."""
    from fewshot_da.demo import _schedule

    for (epochs, drop), expected in {(8, 6): [1.0] * 7 + [0.1], (4, 3): [1.0] * 4, (2, 1): [1.0] * 2,
                                     (1, 0): [1.0]}.items():
        config = TrainConfig(arch="dsa", **{**_schedule((epochs, 1), 1.0, drop, 2, 16, 0), "device": "cpu"})
        assert _lrs(config) == pytest.approx(expected)


def test_recommend_quick_drop_fires():
    """recommend chose {epochs // 2: 0.1}, a no-op at --epochs 2."""
    from fewshot_da.recommend.run import quick_overrides

    for epochs in (2, 3, 4, 5):
        config = TrainConfig(arch="dsa", **quick_overrides({"epochs": epochs}))
        lrs = _lrs(config)
        assert lrs[-1] < lrs[0], (epochs, config.lr_steps)
    assert quick_overrides({})["lr_steps"] == {2: 0.1}  # the default 4-epoch schedule is unchanged


# ------------------------------------------------------------------------- a preset's drop follows --epochs
def test_preset_drop_scales_with_the_epochs():
    """Issue 23 §3: `--epochs 3` without --lr-steps failed on the preset's drop after epoch 80."""
    short = preset_config("paper", "source", epochs=3)
    assert short.lr_steps == {1: 0.1} and _lrs(short) == pytest.approx([1e-2, 1e-2, 1e-3])
    assert preset_config("paper", "source", epochs=20).lr_steps == {15: 0.1}  # as the fine-tuning preset
    assert preset_config("paper", "finetune", epochs=1).lr_steps == {}
    assert preset_config("paper", "finetune", epochs=2).lr_steps == {0: 0.1}
    assert preset_config("paper", "source", epochs=100).lr_steps == {80: 0.1}
    # the drops given with the epochs are kept as given (and checked)
    assert preset_config("paper", "source", epochs=3, lr_steps={0: 0.5}).lr_steps == {0: 0.5}
    assert preset_config("paper", "source", epochs=3, lr_steps={}).lr_steps == {}
    with pytest.raises(InputError, match="--lr-steps 80:0.1"):
        preset_config("paper", "source", epochs=50, lr_steps={80: 0.1})
    assert scale_lr_steps({1: 0.5, 2: 0.5}, 4, 2) == {0: 0.25}


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """Phantoms: siemens15 (6 scans) and ge15 (3 scans: too few to be a source), manifest and splits."""
    root = tmp_path_factory.mktemp("schedule-project")
    write_phantom_dataset(root / "data", domains=("siemens15",), scans_per_domain=6, shape=(16, 16, 8))
    write_phantom_dataset(root / "small", domains=("ge15",), scans_per_domain=3, shape=(16, 16, 8))
    records = index_cc359(root / "data") + index_cc359(root / "small")
    write_manifest(records, root / "manifest.csv")
    write_splits(records, root / "splits.json")
    return root


def _train(cli_runner, cli_app, project, out, *options):
    return cli_runner.invoke(cli_app, ["train", "--data", str(project / "manifest.csv"), "--splits",
                                       str(project / "splits.json"), "--source", "siemens15", "--arch", "dsa",
                                       "--base-filters", "4", "--out", str(out), *TINY, *options])


def _metrics_lr(run):
    with open(run / "metrics.csv") as f:
        return [float(row["lr"]) for row in csv.DictReader(f)]


def test_train_epochs_without_lr_steps_scales_logs_and_records_the_drop(cli_runner, cli_app, project, tmp_path):
    result = _train(cli_runner, cli_app, project, tmp_path / "run", "--epochs", "3")
    assert result.exit_code == 0, result.output
    run = tmp_path / "run"
    assert _metrics_lr(run) == pytest.approx([1e-2, 1e-2, 1e-3])  # the recorded lr per epoch shows the drop
    notes = [line for line in (run / "log.txt").read_text().splitlines() if "lr schedule" in line]
    assert len(notes) == 1 and re.search(r"lr schedule for 3 epoch\(s\): x0.1 after epoch 1 \(0-based\), the paper "
                                         r"source preset's x0.1 after epoch 80 of 100 scaled", notes[0])
    text = (run / "config.yaml").read_text()
    assert text.startswith("# lr schedule for 3 epoch(s)") and yaml.safe_load(text)["lr_steps"] == {1: 0.1}


def test_train_typed_lr_steps_drop_shows_in_metrics_csv(cli_runner, cli_app, project, tmp_path):
    result = _train(cli_runner, cli_app, project, tmp_path / "run", "--epochs", "3", "--lr-steps", "0:0.5")
    assert result.exit_code == 0, result.output
    assert _metrics_lr(tmp_path / "run") == pytest.approx([1e-2, 5e-3, 5e-3])
    assert not (tmp_path / "run" / "config.yaml").read_text().startswith("#")


def test_train_typed_lr_steps_that_cannot_fire_is_refused(cli_runner, cli_app, project, tmp_path):
    result = _train(cli_runner, cli_app, project, tmp_path / "run", "--epochs", "3", "--lr-steps", "2:0.1")
    assert result.exit_code != 0
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    expected = ("Error: --lr-steps 2:0.1: a drop after epoch 2 never fires with --epochs 3 (epochs 0..2; it "
                "applies from the next epoch on); give an epoch from 0 to 1")
    assert errors == [expected]
    assert "Traceback" not in result.output


def test_label_free_adapt_with_one_epoch(cli_runner, cli_app, project, tmp_path):
    """`adapt --strategy adabn --epochs 1` failed on the fine-tuning preset's drop after epoch 15."""
    assert _train(cli_runner, cli_app, project, tmp_path / "source", "--epochs", "1").exit_code == 0
    result = cli_runner.invoke(cli_app, ["adapt", "--model", str(tmp_path / "source"), "--target", "ge15",
                                         "--strategy", "adabn", "--epochs", "1", "--out", str(tmp_path / "adabn"),
                                         *TINY])
    assert result.exit_code == 0, result.output


# ------------------------------------------------------------------------- a domain too small to be a source
def test_too_small_source_says_why_on_the_same_line(cli_runner, cli_app, project, tmp_path):
    result = cli_runner.invoke(cli_app, ["train", "--data", str(project / "manifest.csv"), "--splits",
                                         str(project / "splits.json"), "--source", "ge15", "--out",
                                         str(tmp_path / "run"), "--epochs", "1", *TINY])
    assert result.exit_code != 0
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "no one2all entry for domain 'ge15'" in errors[0]
    assert "3 scans, too few for one2all (needs > 4)" in errors[0]


def test_unknown_source_names_the_domains():
    from fewshot_da.data.manifest import Record

    splits = make_splits([Record(f"a{i}", "x", "y", "big") for i in range(6)])
    with pytest.raises(InputError, match=r"no domain 'bgi'; its domains: big$"):
        source_train_ids(splits, "bgi")
