"""Adaptation strategies behind fit's seam: gradual unfreezing, AdaBN, Auto-RGN, per-group lrs, losses."""
import csv

import numpy as np
import pytest
import torch

from fewshot_da.errors import InputError
from fewshot_da.models import ARCHS, blocks, build_model
from fewshot_da.training.config import TrainConfig
from fewshot_da.training.fit import fit
from fewshot_da.training.layers import block_names, matches, trainable_names
from fewshot_da.training.losses import segmentation_loss, soft_dice_loss
from fewshot_da.training.strategies import STRATEGIES, make_strategy

SIZE = 16


def _small(arch):
    return build_model(arch, base_filters=4)


def batches(step):
    g = torch.Generator().manual_seed(step)
    x = torch.randn(2, 1, SIZE, SIZE, generator=g) * 0.3
    y = torch.zeros(2, 1, SIZE, SIZE)
    y[:, :, 4:12, 4:12] = 1.0
    return x + 2 * y, y


def _cfg(arch, **kw):
    settings = dict(arch=arch, epochs=3, iters_per_epoch=2, batch_size=2, crop=SIZE, lr=1e-2, lr_steps={}, seed=1,
                    base_filters=4)
    settings.update(kw)
    return TrainConfig(**settings)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("order", ["shallow-deep", "deep-shallow"])
def test_gradual_trainable_set_per_epoch(arch, order):
    """Epoch e trains exactly the first 1 + e // E blocks of the order (E = 2), then everything."""
    model = _small(arch)
    per_block = block_names(model, arch)
    assert sum(map(len, per_block)) == len(list(model.parameters()))  # blocks partition the parameters
    strategy = make_strategy("gradual", model, arch, {"order": order, "unfreeze_every": 2})
    sequence = list(range(len(per_block)))[:: 1 if order == "shallow-deep" else -1]
    for epoch in range(2 * len(per_block) + 3):
        k = min(len(per_block), 1 + epoch // 2)
        expected = {n for i in sequence[:k] for n in per_block[i]}
        assert set(strategy.trainable_at(epoch)) == expected, (arch, order, epoch)
    fixed_k = make_strategy("gradual", model, arch, {"order": order, "blocks_trained": 2})
    assert all(set(fixed_k.trainable_at(e)) == {n for i in sequence[:2] for n in per_block[i]} for e in range(5))
    with pytest.raises(InputError, match="blocks"):
        make_strategy("gradual", model, arch, {"blocks_trained": len(per_block) + 1})


def test_gradual_fit_records_blocks_and_freezes_the_rest(tmp_path):
    model = _small("dsa")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    strategy = make_strategy("gradual", model, "dsa", {"order": "deep-shallow", "unfreeze_every": 2})
    fit(model, batches, _cfg("dsa", epochs=3), tmp_path, strategy=strategy, progress=False)
    rows = list(csv.DictReader(open(tmp_path / "metrics.csv")))
    n = len(blocks("dsa"))
    assert [r["trainable_blocks"] for r in rows] == [str(n), str(n), f"{n - 1}+{n}"]
    trained = set(strategy.trainable_at(2))
    for name, _ in model.named_parameters():
        if name not in trained:
            assert torch.equal(before[name], model.state_dict()[name]), name


def test_adabn_changes_only_batchnorm_buffers():
    from fewshot_da.training.strategies.adabn import reestimate_bn

    torch.manual_seed(0)
    model = _small("dart20")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    images = [np.random.default_rng(0).normal(3.0, 2.0, size=(5, 20, 24)).astype(np.float32)]
    info = reestimate_bn(model, images, batch_size=2, pad_multiple=8)
    after = model.state_dict()
    params = {n for n, _ in model.named_parameters()}
    assert info["slices"] == 5
    for key in before:
        if key in params:
            assert torch.equal(before[key], after[key]), key  # every weight bit-identical
    stats = [k for k in before if k.endswith("running_mean")]
    assert all(not torch.equal(before[k], after[k]) for k in stats)
    # the first BN sees the input itself: its running mean is the pixel mean of the padded slices (cumulative avg)
    first_bn = next(k for k in stats if k.startswith("down1.0"))  # dart20: BN before the first strided conv
    assert after[first_bn].shape[0] == 4
    with pytest.raises(InputError, match="no BatchNorm"):
        reestimate_bn(build_model("classic", base_filters=4), images, pad_multiple=16)


def test_adabn_first_bn_mean_is_cumulative_average():
    """A BN as the first layer sees the raw slices: after AdaBN its running mean is the mean over all pixels."""
    from fewshot_da.training.strategies.adabn import reestimate_bn

    model = torch.nn.Sequential(torch.nn.BatchNorm2d(1), torch.nn.Conv2d(1, 1, 1))
    images = [np.arange(2 * 8 * 8, dtype=np.float32).reshape(2, 8, 8), np.full((3, 8, 8), 7.0, np.float32)]
    reestimate_bn(model, images, batch_size=2, pad_multiple=8)
    # batches: (2 slices), (3 slices split 2 + 1) -> cumulative average of the batch means, weighted equally
    means = [np.arange(128).mean(), 7.0, 7.0]
    assert float(model[0].running_mean) == pytest.approx(np.mean(means))


def test_auto_rgn_records_normalised_scales(tmp_path):
    model = _small("dsa")
    strategy = make_strategy("auto-rgn", model, "dsa")
    summary = fit(model, batches, _cfg("dsa", epochs=2), tmp_path, strategy=strategy, progress=False)
    rows = list(csv.DictReader(open(tmp_path / "strategy.csv")))
    n = len(list(model.parameters()))
    assert len(rows) == 2 * n and summary["trainable_tensors"] == n
    for epoch in ("0", "1"):
        scales = [float(r["lr_scale"]) for r in rows if r["epoch"] == epoch]
        rgn = [float(r["rgn"]) for r in rows if r["epoch"] == epoch]
        assert max(scales) == pytest.approx(1.0) and min(scales) >= 0.0  # divided by the largest RGN
        assert scales == pytest.approx([v / max(rgn) for v in rgn], rel=1e-3, abs=1e-6)  # CSV keeps 6 decimals


def test_auto_rgn_probe_leaves_batchnorm_statistics(tmp_path):
    model = _small("dsa")
    strategy = make_strategy("auto-rgn", model, "dsa")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    strategy.epoch_scales(model.train(), 0, batches(0), segmentation_loss("bce"))
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_lr_scale_patterns_split_groups(tmp_path):
    model = _small("dsa")
    strategy = make_strategy("freeze", model, "dsa", {"layers": "all"})
    cfg = _cfg("dsa", epochs=1, lr_scale={"^init_path": 0.0})
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fit(model, batches, cfg, tmp_path, strategy=strategy, progress=False)
    after = model.state_dict()
    moved = {n for n, _ in model.named_parameters() if not torch.equal(before[n], after[n])}
    assert moved and not any(matches(n, "init_path") for n in moved)


def test_bn_spec_and_unknown_strategy_options():
    model = _small("dart20")
    names = trainable_names(model, "dart20", "bn")
    assert names and all(n.endswith(("bn.weight", "bn.bias")) or ".weight" in n or ".bias" in n for n in names)
    modules = dict(model.named_modules())
    assert all(isinstance(modules[n.rsplit(".", 1)[0]], torch.nn.BatchNorm2d) for n in names)
    with pytest.raises(InputError, match="valid: freeze"):
        make_strategy("middle", model, "dart20")
    with pytest.raises(InputError, match="does not apply"):
        make_strategy("adabn", model, "dart20", {"layers": "first"})
    assert set(STRATEGIES) >= {"freeze", "gradual", "adabn", "auto-rgn", "histogram", "none"}


def test_losses():
    logits = torch.tensor([[[[10.0, -10.0]]]])
    target = torch.tensor([[[[1.0, 0.0]]]])
    assert float(soft_dice_loss(logits, target)) == pytest.approx(0.0, abs=1e-4)
    assert float(segmentation_loss("bce+dice")(logits, target)) == pytest.approx(
        float(segmentation_loss("bce")(logits, target)) + float(soft_dice_loss(logits, target)))
    with pytest.raises(InputError, match="lr-steps"):
        _cfg("dsa", epochs=3, lr_steps={3: 0.1})


def test_learning_signal_first_layers_beat_no_adaptation(tmp_path):
    """Seeded phantoms, two scanners: fine-tuning the first layers on 1 target scan beats the source model on the
    pair's test scans by >= 0.1 surface Dice at 1 mm (the demo's finding, at a third of its schedule)."""
    from fewshot_da.data.datasets import index_cc359
    from fewshot_da.data.manifest import write_manifest
    from fewshot_da.data.phantoms import write_phantom_dataset
    from fewshot_da.data.splits import write_splits
    from fewshot_da.experiments import stages

    write_phantom_dataset(tmp_path / "data", domains=("siemens3", "ge15"), scans_per_domain=8, shape=(48, 48, 16),
                          seed=0)
    records = index_cc359(tmp_path / "data")
    manifest = write_manifest(records, tmp_path / "m.csv")
    write_splits(records, tmp_path / "s.json")
    common = dict(batch_size=8, crop=48, seed=0, lr_steps={})
    stages.train(manifest=manifest, splits=tmp_path / "s.json", source="siemens3", out=tmp_path / "src",
                 overrides=dict(epochs=6, iters_per_epoch=10, lr=1e-2, **common), progress=False)
    kw = dict(model=tmp_path / "src", target="ge15", scans=1, progress=False,
              overrides=dict(epochs=3, iters_per_epoch=10, lr=1e-3, **common))
    base = stages.adapt(out=tmp_path / "none", strategy="none", **kw)
    first = stages.adapt(out=tmp_path / "first", strategy_options={"layers": "first"}, **kw)
    assert [r["id"] for r in base["scores"]] == [r["id"] for r in first["scores"]]
    gain = first["mean"]["surface_dice_1mm"] - base["mean"]["surface_dice_1mm"]
    assert gain >= 0.1, (base["mean"], first["mean"])


def test_histogram_strategy_maps_target_onto_source_reference(tmp_path):
    """`--strategy histogram` fits the reference on the source run's train scans once, and the target's test
    volumes are cached with matched intensities (their quantiles on the reference's landmarks)."""
    import json

    from fewshot_da.data.datasets import index_cc359
    from fewshot_da.data.harmonize import load_histogram_reference
    from fewshot_da.data.manifest import write_manifest
    from fewshot_da.data.phantoms import write_phantom_dataset
    from fewshot_da.data.splits import write_splits
    from fewshot_da.experiments import stages

    write_phantom_dataset(tmp_path / "data", domains=("siemens3", "ge15"), scans_per_domain=5, shape=(24, 24, 8))
    records = index_cc359(tmp_path / "data")
    manifest = write_manifest(records, tmp_path / "m.csv")
    write_splits(records, tmp_path / "s.json")
    tiny = dict(epochs=1, iters_per_epoch=1, batch_size=2, crop=24, lr_steps={})
    stages.train(manifest=manifest, splits=tmp_path / "s.json", source="siemens3", out=tmp_path / "src",
                 overrides=tiny, progress=False)
    summary = stages.adapt(model=tmp_path / "src", target="ge15", out=tmp_path / "hm", strategy="histogram",
                           overrides=tiny, progress=False)
    assert summary["fit"] is None and summary["spec"]["budget"] == "" and len(summary["scores"]) == 4
    reference = load_histogram_reference(tmp_path / "src" / "histogram_reference.json")
    spec = json.loads((tmp_path / "hm" / "summary.json").read_text())["spec"]
    assert spec["strategy"] == "histogram"
    run = stages.read_run(tmp_path / "hm")["spec"]
    assert run["preprocess"]["histogram"].endswith("histogram_reference.json")
    (volume,) = stages.open_volumes(manifest, run["eval_ids"][:1], cache=run["cache"], preprocess=run["preprocess"],
                                    progress=False)
    quantiles = np.percentile(np.asarray(volume.image, dtype=np.float64), [10, 50, 90])
    expected = np.interp([10, 50, 90], reference.percentiles, reference.landmarks)
    assert np.allclose(quantiles, expected, atol=0.02)


def _dsa_source(tmp_path, domains=("siemens3", "ge15"), scans=5, shape=(24, 24, 8)):
    from fewshot_da.data.datasets import index_cc359
    from fewshot_da.data.manifest import write_manifest
    from fewshot_da.data.phantoms import write_phantom_dataset
    from fewshot_da.data.splits import write_splits
    from fewshot_da.experiments import stages

    write_phantom_dataset(tmp_path / "data", domains=domains, scans_per_domain=scans, shape=shape)
    records = index_cc359(tmp_path / "data")
    manifest = write_manifest(records, tmp_path / "m.csv")
    write_splits(records, tmp_path / "s.json")
    stages.train(manifest=manifest, splits=tmp_path / "s.json", source=domains[0], out=tmp_path / "src", arch="dsa",
                 overrides=dict(epochs=1, iters_per_epoch=2, batch_size=2, crop=shape[0], lr_steps={}),
                 progress=False)
    return tmp_path / "src"


def test_spottune_adapt_records_policy_and_predict_applies_it(tmp_path, cli_runner, cli_app):
    import json

    from fewshot_da.experiments import stages

    source = _dsa_source(tmp_path)
    tiny = ["--epochs", "2", "--iters-per-epoch", "2", "--batch-size", "2", "--crop", "24", "--lr-steps", "0:0.1",
            "--quiet"]
    result = cli_runner.invoke(cli_app, ["adapt", "--model", str(source), "--target", "ge15", "--strategy",
                                         "spottune", "--slices", "1/2", "--out", str(tmp_path / "spot"), *tiny])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "spot" / "summary.json").read_text())
    assert summary["spec"]["options"] == {"lam": 0.005, "temperature": 0.1, "unit_map": "reference"}
    train_rows = list(csv.DictReader(open(tmp_path / "spot" / "policy_train.csv")))
    assert len(train_rows) == 2 * 32 and {r["epoch"] for r in train_rows} == {"0", "1"}
    test_rows = list(csv.DictReader(open(tmp_path / "spot" / "policy_test.csv")))
    scans = [r["id"] for r in summary["scores"]]
    assert len(test_rows) == 32 * len(scans) and [r["scan"] for r in test_rows[::32]] == scans
    assert all(0.0 <= float(r["fraction_finetuned"]) <= 1.0 for r in test_rows)
    # predict re-applies the policy slice by slice: the same masks, so the same scores and records
    again = stages.predict(model=tmp_path / "spot", out=tmp_path / "pred", progress=False)
    assert [r["dice"] for r in again["scores"]] == [r["dice"] for r in summary["scores"]]
    assert list(csv.DictReader(open(tmp_path / "pred" / "policy_test.csv"))) == test_rows
    units = cli_runner.invoke(cli_app, ["layers", "--arch", "dsa", "--units"])
    assert units.exit_code == 0 and "32 decisions, 32 units" in units.output


def test_spottune_resume_after_kill_9_equals_uninterrupted(tmp_path):
    """kill -9 during epoch 2, then the same command: weights, optimizer and policy records as uninterrupted."""
    import os
    import subprocess
    import sys
    import textwrap

    source = _dsa_source(tmp_path)
    args = dict(model=str(source), target="ge15", strategy="spottune", slices="1/2", progress=False,
                overrides=dict(epochs=3, iters_per_epoch=2, batch_size=2, crop=24, lr_steps={1: 0.1}))
    script = textwrap.dedent(f"""
        import importlib, os, signal
        from fewshot_da.experiments import stages
        fit_module = importlib.import_module("fewshot_da.training.bookkeeping")
        original = fit_module.save_checkpoint
        def save_then_die(state, path):
            original(state, path)
            if state["epoch"] == 2:
                os.kill(os.getpid(), signal.SIGKILL)
        fit_module.save_checkpoint = save_then_die
        stages.adapt(out={str(tmp_path / 'killed')!r}, **{args!r})
    """)
    proc = subprocess.run([sys.executable, "-c", script], env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == -9 and not (tmp_path / "killed" / "summary.json").exists()
    from fewshot_da.experiments import stages

    resumed = stages.adapt(out=tmp_path / "killed", **args)
    straight = stages.adapt(out=tmp_path / "straight", **args)
    assert resumed["fit"]["resumed_from_epoch"] == 2
    a = torch.load(tmp_path / "killed" / "checkpoint.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=True)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    records = [(tmp_path / run / "policy_train.csv").read_text() for run in ("killed", "straight")]
    assert records[0] == records[1]
    assert [r["dice"] for r in resumed["scores"]] == [r["dice"] for r in straight["scores"]]
