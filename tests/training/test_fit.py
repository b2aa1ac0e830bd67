"""Training config, LR schedule, the fit loop's files, exact resume (also after kill -9), pretrained loading."""
import csv
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from fewshot_da.errors import InputError
from fewshot_da.models import UNet2dDsa, build_model
from fewshot_da.training.config import (TrainConfig, load_config, lr_at, preset_config, save_config)
from fewshot_da.checkpoint import load_checkpoint, load_pretrained
from fewshot_da.training.fit import fit, training_layout
from fewshot_da.training.strategies import fixed

SIZE = 16


def batches(step):
    """Deterministic synthetic batch for a global step: a bright square on noise."""
    g = torch.Generator().manual_seed(step)
    x = torch.randn(2, 1, SIZE, SIZE, generator=g) * 0.3
    y = torch.zeros(2, 1, SIZE, SIZE)
    y[:, :, 4:12, 4:12] = 1.0
    return x + 2 * y, y


def small_net():
    """The DSA layout with 4 initial filters: same module names, 1/16 of the compute."""
    return UNet2dDsa(n_filters=4)


def tiny_config(**kw):
    settings = dict(arch="dsa", epochs=3, iters_per_epoch=2, batch_size=2, crop=SIZE, lr=1e-2, lr_steps={1: 0.1},
                    seed=3)
    settings.update(kw)
    return TrainConfig(**settings)


def test_lr_schedule_dpipe_semantics():
    source = preset_config("paper", "source")
    assert [lr_at(e, source) for e in (0, 80, 81, 99)] == [1e-2, 1e-2, pytest.approx(1e-3), pytest.approx(1e-3)]
    assert sum(lr_at(e, source) == 1e-2 for e in range(100)) == 81  # epochs 0..80
    finetune = preset_config("paper", "finetune")
    assert sum(lr_at(e, finetune) == 1e-3 for e in range(finetune.epochs)) == 16  # 16 then 4
    dsa = preset_config("dsa-code", "finetune", "dsa")
    assert (dsa.epochs, dsa.batch_size, sum(lr_at(e, dsa) == 1e-3 for e in range(dsa.epochs))) == (60, 16, 46)
    two_steps = tiny_config(lr=1.0, lr_steps={2: 0.5, 0: 0.1}, epochs=4)  # a drop after epoch 2 needs a 4th
    assert [lr_at(e, two_steps) for e in range(4)] == [1.0, pytest.approx(0.1), pytest.approx(0.1),
                                                      pytest.approx(0.05)]


def test_presets():
    assert preset_config().resolved() == TrainConfig().resolved()
    code = preset_config("dart20-code", "source")
    assert (code.lr, code.lr_steps, code.epochs, code.iters_per_epoch, code.batch_size) == (1e-3, {80: 0.1}, 100,
                                                                                          100, 32)
    assert preset_config("paper", "source", "vanilla").batch_size == 16
    assert (code.momentum, code.nesterov, code.weight_decay) == (0.9, True, 0.0)
    with pytest.raises(InputError, match="valid: paper, dart20-code, dsa-code"):
        preset_config("nnunet")
    with pytest.raises(InputError, match="unknown config key 'learning_rate'"):
        preset_config(learning_rate=0.1)


def test_yaml_round_trip_and_overrides(tmp_path):
    config = preset_config("dsa-code", "finetune", "dsa", seed=7, bn_stats="freeze")
    save_config(config, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == config
    # YAML 1.1 reads 1e-3 as a string; a partial file fills the rest from the preset it names
    (tmp_path / "partial.yaml").write_text("preset: dart20-code\nstage: finetune\nlr: 1e-3\nlr_steps: {10: 0.5}\n")
    partial = load_config(tmp_path / "partial.yaml")
    assert (partial.lr, partial.lr_steps, partial.epochs) == (1e-3, {10: 0.5}, 20)
    assert config.replace(lr_steps="5:0.1,8:0.5").lr_steps == {5: 0.1, 8: 0.5}
    (tmp_path / "bad.yaml").write_text("epochs: many\n")
    with pytest.raises(InputError, match="bad.yaml: epochs must be a int"):
        load_config(tmp_path / "bad.yaml")


def test_fit_writes_run_files_and_resume_equals_uninterrupted(tmp_path):
    config = tiny_config()
    torch.manual_seed(0)
    initial = small_net().state_dict()

    straight = small_net()
    straight.load_state_dict(initial)
    summary = fit(straight, batches, config, tmp_path / "straight", progress=False)
    run = tmp_path / "straight"
    assert {p.name for p in run.iterdir()} == {"config.yaml", "log.txt", "metrics.csv",
                                               "checkpoint.pt"}
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2]
    assert [float(r["lr"]) for r in rows] == [1e-2, 1e-2, pytest.approx(1e-3)]
    state = load_checkpoint(run / "checkpoint.pt")
    assert state["epoch"] == 3 and state["config"] == config.resolved()
    assert summary["final_lr"] == pytest.approx(1e-3) and summary["trainable_params"] == sum(
        p.numel() for p in straight.parameters())

    # interruption during epoch 2 (after two finished epochs), then the same call again
    interrupted = small_net()
    interrupted.load_state_dict(initial)

    def failing(step):
        if step == 5:
            raise KeyboardInterrupt
        return batches(step)

    with pytest.raises(KeyboardInterrupt):
        fit(interrupted, failing, config, tmp_path / "resumed", progress=False)
    assert load_checkpoint(tmp_path / "resumed" / "checkpoint.pt")["epoch"] == 2
    resumed = small_net()  # a fresh process would start from scratch weights
    summary = fit(resumed, batches, config, tmp_path / "resumed", progress=False)
    assert summary["resumed_from_epoch"] == 2
    resumed_state = resumed.state_dict()
    for key, value in straight.state_dict().items():
        assert torch.equal(value, resumed_state[key]), key
    assert list(csv.DictReader(open(tmp_path / "resumed" / "metrics.csv")))[-1]["train_loss"] == rows[-1][
        "train_loss"]

    # a finished run is not trained again; a different config in the same folder is refused
    assert fit(small_net(), batches, config, run, progress=False)["resumed_from_epoch"] == 3
    with pytest.raises(InputError, match="different config"):
        fit(small_net(), batches, config.replace(lr=0.5), run, progress=False)


def test_resume_after_kill_9(tmp_path):
    script = textwrap.dedent(f"""
        import os, signal, sys, torch
        from fewshot_da.training.fit import fit
        sys.path.insert(0, {str(__file__.rsplit('/', 1)[0])!r})
        from test_fit import batches, small_net, tiny_config
        torch.manual_seed(0)
        def killing(step):
            if step == 3:
                os.kill(os.getpid(), signal.SIGKILL)
            return batches(step)
        fit(small_net(), killing, tiny_config(), {str(tmp_path / "run")!r}, progress=False)
    """)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", script], cwd=str(__file__.rsplit("/", 3)[0]), env=env)
    assert proc.returncode == -9
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pt")["epoch"] == 1
    torch.manual_seed(0)
    straight = small_net()
    fit(straight, batches, tiny_config(), tmp_path / "straight", progress=False)
    resumed = small_net()
    assert fit(resumed, batches, tiny_config(), tmp_path / "run", progress=False)["resumed_from_epoch"] == 1
    resumed_state = resumed.state_dict()
    assert all(torch.equal(v, resumed_state[k]) for k, v in straight.state_dict().items())


def test_fit_on_cpu_trains_in_channels_last_and_still_learns(tmp_path):
    """The CPU training layout reaches the model; the loss still falls on the bright-square toy."""
    assert training_layout(torch.device("cpu")) is torch.channels_last
    assert training_layout(torch.device("cuda")) is torch.contiguous_format
    model = small_net()
    fit(model, batches, tiny_config(epochs=4, iters_per_epoch=5, lr=5e-2, lr_steps={}, device="cpu"), tmp_path,
        progress=False)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size != (1, 1)]
    assert convs and all(m.weight.is_contiguous(memory_format=torch.channels_last) for m in convs)
    losses = [float(r["train_loss"]) for r in csv.DictReader(open(tmp_path / "metrics.csv"))]
    assert losses[-1] < 0.8 * losses[0], losses
    assert "layout=channels_last" in (tmp_path / "log.txt").read_text()


def test_validation_callback_and_no_trainable(tmp_path):
    model = small_net()
    calls = []

    def validate(m, epoch):
        calls.append((epoch, m.training))
        m.eval()  # fit puts the model back in train mode each epoch
        return {"dice": 0.5}

    fit(model, batches, tiny_config(epochs=2, iters_per_epoch=1, lr_steps={}), tmp_path / "v", validate=validate,
        progress=False)
    assert [c[0] for c in calls] == [0, 1]
    assert float(list(csv.DictReader(open(tmp_path / "v" / "metrics.csv")))[0]["val_dice"]) == 0.5
    with pytest.raises(InputError, match="no trainable parameters"):
        fit(model, batches, tiny_config(), tmp_path / "none", strategy=fixed([]), progress=False)


def test_load_pretrained_errors(tmp_path):
    model = build_model("dsa")
    fit(model, batches, tiny_config(epochs=1, iters_per_epoch=1, lr_steps={}), tmp_path / "run", progress=False)
    path = tmp_path / "run" / "checkpoint.pt"
    target = build_model("dsa")
    assert load_pretrained(target, path, arch="dsa") == {"copied": len(target.state_dict()), "skipped": 0}
    target_state = target.state_dict()
    assert all(torch.equal(v, target_state[k]) for k, v in model.state_dict().items())
    with pytest.raises(InputError, match="holds a dsa model, not dart20"):
        load_pretrained(build_model("dart20"), path, arch="dart20")
    with pytest.raises(InputError, match=r"key 'init_path.\d.conv_path.0.bn.weight' is missing.*UNet2dDart20"):
        load_pretrained(build_model("dart20"), path)
    bad = dict(model.state_dict())
    bad["out_path.3.layer.weight"] = torch.zeros(2, 16, 1, 1)
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(InputError, match=r"'out_path.3.layer.weight' has shape \(2, 16, 1, 1\), dsa expects"):
        load_pretrained(build_model("dsa"), tmp_path / "bad.pth", arch="dsa")
    skipped = load_pretrained(build_model("dsa"), tmp_path / "bad.pth", arch="dsa", skip=("out_path.3",))
    assert skipped["skipped"] == 7
    (tmp_path / "junk.pt").write_text("not a checkpoint")
    with pytest.raises(InputError, match="not a readable checkpoint"):
        load_pretrained(build_model("dsa"), tmp_path / "junk.pt")


def test_busy_cores_note_goes_to_the_run_log(tmp_path, monkeypatch):
    """Off a terminal the note is not printed; each run's log.txt holds it in one line, naming the flag."""
    from fewshot_da import threads as threads_mod

    monkeypatch.setattr(threads_mod, "cpu_cores", lambda: 2)
    monkeypatch.setattr(threads_mod.os, "getloadavg", lambda: (2.0, 2.0, 2.0))
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        fit(small_net(), batches, tiny_config(epochs=2, lr_steps={}), tmp_path / "busy", progress=False)
    finally:
        torch.set_num_threads(threads)
    notes = [line for line in (tmp_path / "busy" / "log.txt").read_text().splitlines() if "load average" in line]
    assert len(notes) == 1 and notes[0].endswith("use --num-threads 1")
