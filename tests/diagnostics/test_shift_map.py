"""Shift map: divergence values by hand, activation statistics against NumPy, unit aggregation, image-only
preprocessing, and end to end on a trained tiny phantom run (shifted targets score higher; masks are never
read)."""
import json

import numpy as np
import pytest
import torch
from torch import nn

from fewshot_da.diagnostics.shift_map import (
    activation_stats,
    aggregate_units,
    gaussian_divergence,
    target_images,
    probed_layers,
    sample_slices,
    shift_map,
)
from fewshot_da.errors import InputError


def test_w2_is_the_shift_in_source_sds_and_scale_free():
    assert gaussian_divergence([0.0], [1.0], [0.0], [1.0], eps=0) == pytest.approx([0.0])
    # the mean moved by one sd
    assert gaussian_divergence([0.0], [4.0], [2.0], [4.0], eps=0) == pytest.approx([1.0])
    assert gaussian_divergence([1.0], [1.0], [1.0], [4.0], eps=0) == pytest.approx([1.0])  # sd doubled
    assert gaussian_divergence([0.0], [1.0], [3.0], [4.0], eps=0) == pytest.approx([np.sqrt(10.0)])
    a = gaussian_divergence([0.3, -1.0], [0.5, 2.0], [0.1, 0.0], [0.2, 3.0], eps=0)
    b = gaussian_divergence([3.0, -10.0], [50.0, 200.0], [1.0, 0.0], [20.0, 300.0], eps=0)  # all x10
    assert a == pytest.approx(b)


def test_symmetric_kl_by_hand_and_unknown_kind():
    # unit variances: (KL + KL) / 2 = delta^2 / 2
    assert gaussian_divergence([0.0], [1.0], [1.0], [1.0], kind="skl", eps=0) == pytest.approx([0.5])
    # equal means, variances 1 and 4: ((1/4 + 4/1) / 2 - 1) / 2 ... = (1/4 + 4) / 4 - 1/2
    assert gaussian_divergence([0.0], [1.0], [0.0], [4.0], kind="skl", eps=0) == pytest.approx([0.5625])
    with pytest.raises(InputError, match="divergence"):
        gaussian_divergence([0.0], [1.0], [0.0], [1.0], kind="kl")


def _padded(image, multiple):
    widths = [((-s) % multiple // 2, (-s) % multiple - (-s) % multiple // 2) for s in image.shape]
    return np.pad(image, widths, mode="constant", constant_values=image.min())


def test_activation_stats_are_the_padded_batch_statistics_of_the_layer_input():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.Conv2d(3, 2, 1))
    model.eval()
    model[1].running_mean.fill_(0.3)
    model[1].running_var.fill_(2.0)
    rng = np.random.default_rng(0)
    stacks = [rng.normal(size=(3, 10, 13)).astype(np.float32),
              rng.gamma(2.0, size=(2, 12, 12)).astype(np.float32)]
    stats = activation_stats(model, {"1": model[1]}, stacks, pad_multiple=8, batch_size=2)
    with torch.no_grad():
        inputs = [model[0](torch.from_numpy(_padded(s, 8))[None, None])[0] for stack in stacks for s in stack]
    values = torch.cat([x.reshape(3, -1) for x in inputs], dim=1).double().numpy()
    mean, var, n = stats["1"]
    assert n == values.shape[1] == 3 * 16 * 16 + 2 * 16 * 16
    np.testing.assert_allclose(mean, values.mean(1), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(var, values.var(1), rtol=1e-5, atol=1e-7)


def test_probed_layers_fall_back_to_conv_features_without_batchnorm():
    with_bn = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2))
    assert probed_layers(with_bn, "auto") == ("bn", {"1": with_bn[1]})
    assert probed_layers(with_bn, "features")[1] == {"0": with_bn[0]}
    plain = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.ConvTranspose2d(2, 1, 2, stride=2))
    method, layers = probed_layers(plain, "auto")
    assert method == "features" and list(layers) == ["0", "2"]
    with pytest.raises(InputError, match="no BatchNorm"):
        probed_layers(plain, "bn")


def test_units_pool_the_channels_of_their_layers():
    per_channel = {"a.0.bn": [1.0, 3.0], "a.1": [2.0], "b.x": [10.0], "ab.c": [100.0]}
    rows = aggregate_units(per_channel, [("A", ["a"]), ("B", ["b.x", "ab"]), ("C", ["zzz"]), ("D", "a.1")])
    assert rows[0] == ("A", pytest.approx(2.0), 3)  # "ab.c" is not inside "a"
    assert rows[1] == ("B", pytest.approx(55.0), 2)
    assert rows[2][0] == "C" and np.isnan(rows[2][1]) and rows[2][2] == 0
    assert rows[3] == ("D", pytest.approx(2.0), 1)


def test_slice_sample_is_seeded_and_bounded():
    images = [np.arange(n * 4, dtype=np.float32).reshape(n, 2, 2) for n in (5, 7, 3)]
    a = sample_slices(images, 6, np.random.default_rng(1))
    b = sample_slices(images, 6, np.random.default_rng(1))
    assert sum(s.shape[0] for s in a) == 6 and len(a) == len(b)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    everything = sample_slices(images, None, np.random.default_rng(1))
    assert [s.shape[0] for s in everything] == [5, 7, 3]


def test_image_only_preprocessing_equals_the_data_layer(tmp_path):
    from fewshot_da.data.phantoms import write_phantom_dataset
    from fewshot_da.data.preprocess import preprocess_options, preprocess_record

    (record,) = write_phantom_dataset(tmp_path, domains=("ge3",), scans_per_domain=1, shape=(20, 16, 12),
                                      spacing_mm=(1.3, 1.0, 0.9))
    options = preprocess_options("paper", reorient_ras=True, target_spacing_mm=(1.1, 1.1, 1.1))
    image, _, _ = preprocess_record(record, options)
    (ours,) = target_images([record], options, tmp_path / "cache")
    np.testing.assert_array_equal(ours, np.moveaxis(image, options.slice_axis, 0))


# ---- end to end on a trained tiny phantom run ----------------------------------------------------------

SHAPE = (32, 32, 12)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """siemens15 phantoms and a dart20 source run trained long enough (80 steps) for its BN running statistics
    to settle; targets: held-out source scans, the same scans with a simulated scanner shift, and ge15
    phantoms, with mask paths that do not exist or hold garbage."""
    from fewshot_da.data.datasets import index_cc359
    from fewshot_da.data.manifest import Record, write_manifest
    from fewshot_da.data.shift import write_shifted_domain
    from fewshot_da.data.splits import write_splits
    from fewshot_da.experiments import stages

    root = tmp_path_factory.mktemp("shiftmap")
    from fewshot_da.data.phantoms import write_phantom_dataset

    write_phantom_dataset(root / "data", domains=("siemens15", "ge15"), scans_per_domain=6, shape=SHAPE)
    records = index_cc359(root / "data")
    write_manifest(records, root / "manifest.csv")
    write_splits(records, root / "splits.json")
    source = [r for r in records if r.domain == "siemens15"]
    train_ids, held_ids = [r.id for r in source[:4]], [r.id for r in source[4:]]
    stages.train(manifest=root / "manifest.csv", splits=root / "splits.json", ids=train_ids, eval_ids=[],
                 out=root / "source", progress=False,
                 overrides={"epochs": 2, "iters_per_epoch": 40, "batch_size": 4, "crop": 32, "lr": 1e-2,
                            "lr_steps": {0: 0.1}})
    shifted = write_shifted_domain(records, held_ids, root / "shifted", domain="siemens15-shift")
    garbage = root / "garbage.nii.gz"
    garbage.write_bytes(b"this is not a mask")
    targets = []
    chosen = ([r for r in records if r.id in held_ids] + [r for r in shifted if r.domain == "siemens15-shift"]
              + [r for r in records if r.domain == "ge15"][:2])
    for n, r in enumerate(chosen):
        domain = "siemens15-heldout" if r.domain == "siemens15" else r.domain
        mask = str(garbage) if n % 2 else str(root / "no-such-mask.nii.gz")
        targets.append(Record(r.id, r.image, mask, domain))
    write_manifest(targets, root / "targets.csv")
    return root


def _unit(summary, domain, unit):
    return summary["scores"][domain][unit]


@pytest.mark.parametrize("forward", ["source", "adabn"])
def test_a_shifted_target_scores_clearly_higher_than_held_out_source_scans(project, forward):
    summary = shift_map(model=project / "source", manifest=project / "targets.csv",
                        out=project / f"map-{forward}", forward=forward, max_slices=None, progress=False)
    assert list(summary["scores"]) == ["siemens15-heldout", "siemens15-shift", "ge15"]
    assert summary["method"] == "bn" and summary["domains"]["ge15"]["n_slices"] == 2 * SHAPE[2]
    same, shifted, other = (_unit(summary, d, "init_path") for d in summary["scores"])
    assert shifted > 2.0 * same, (same, shifted)
    assert other > 1.5 * same, (same, other)
    text = (project / f"map-{forward}" / "shift_map.csv").read_text()
    rows = [line.split(",") for line in text.splitlines()]
    first = [r for r in rows[1:] if r[0] == "layer" and r[1] == "init_path.2.conv_path.0.bn"]
    score = {r[3]: float(r[4]) for r in first}
    assert score["siemens15-shift"] > 1.5 * score["siemens15-heldout"]


def test_cli_writes_csv_figure_and_summary_without_reading_masks(project, cli_runner, cli_app):
    units = project / "units.yaml"
    units.write_text("first: [init_path]\ndeep: [down3, up3]\nskips: [shortcut0, shortcut1, shortcut2]\n")
    out = project / "cli-map"
    args = ["shift-map", "--model", project / "source", "--data", project / "targets.csv", "--out", out,
            "--units", units, "--domain", "ge15", "--domain", "siemens15-heldout", "--max-slices", "16"]
    result = cli_runner.invoke(cli_app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    assert "ge15: 16 slices; most shifted:" in result.output
    header, *rows = [line.split(",") for line in (out / "shift_map.csv").read_text().splitlines()]
    assert header == ["level", "name", "unit", "domain", "score", "n_channels", "mean_shift_sd",
                      "log_sd_ratio"]
    unit_rows = [r for r in rows if r[0] == "unit"]
    assert [(r[1], r[3]) for r in unit_rows[:3]] == [("first", "ge15"), ("deep", "ge15"), ("skips", "ge15")]
    assert unit_rows[2][4] == "nan" and unit_rows[2][5] == "0"  # 1x1 skip convs hold no BatchNorm
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in __import__("fewshot_da.models", fromlist=["x"])
               .build_model("dart20").modules())
    assert len(rows) == 2 * (3 + n_bn)
    assert (out / "shift_map.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["target_domains"] == ["ge15", "siemens15-heldout"]
    assert summary["units"] == ["first", "deep", "skips"] and summary["scores"]["ge15"]["skips"] is None
    assert summary["ranks"]["ge15"]["skips"] is None and sorted(
        r for r in summary["ranks"]["ge15"].values() if r) == [1, 2]


def test_features_method_compares_with_the_source_training_slices(project):
    summary = shift_map(model=project / "source", manifest=project / "targets.csv",
                        out=project / "map-features", method="features",
                        domains=["siemens15-heldout", "siemens15-shift"], max_slices=None,
                        progress=False)
    assert summary["method"] == "features"
    same, shifted = (_unit(summary, d, "init_path") for d in ("siemens15-heldout", "siemens15-shift"))
    assert shifted > 2.0 * same, (same, shifted)
    assert all(np.isfinite(v) for v in summary["scores"]["siemens15-shift"].values())  # skips have convs


@pytest.mark.parametrize("case, message", [
    ("run", "not a fewshot-da run folder"),
    ("empty", "lists no scans"),
    ("domain", "names no scan"),
    ("image", "file not found"),
    ("units", "expected {unit"),
])
def test_bad_inputs_stop_with_one_line(project, tmp_path, cli_runner, cli_app, case, message):
    model, data, extra = project / "source", project / "targets.csv", []
    if case == "run":
        model = tmp_path
    elif case == "empty":
        data = tmp_path / "empty.csv"
        data.write_text("id,image,mask,domain\n")
    elif case == "domain":
        extra = ["--domain", "philips3"]
    elif case == "image":
        data = tmp_path / "missing.csv"
        data.write_text("id,image,mask,domain\nx,nowhere.nii.gz,,site\n")
    else:
        units = tmp_path / "units.yaml"
        units.write_text("- just a name\n")
        extra = ["--units", str(units)]
    result = cli_runner.invoke(cli_app, ["shift-map", "--model", str(model), "--data", str(data), "--out",
                                         str(tmp_path / "out"), *extra])
    assert result.exit_code != 0
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error:") and message in lines[0], result.output
