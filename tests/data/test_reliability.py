"""`fewshot-da data`: one-line refusals in `data shift`, the manifest's spacing against NIfTI headers, ids too
long for file names, mask values in `data index`, --spacing-mm as three floats, and `data subset` (issues 22
and 23)."""
import csv

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from fewshot_da.errors import InputError


def _pair(folder, name, *, spacing_mm=(1.0, 1.0, 1.0), shape=(8, 8, 6), mask_values=(0, 1)):
    """A NIfTI image with a cube mask holding `mask_values` (background, foreground)."""
    folder.mkdir(parents=True, exist_ok=True)
    affine = np.diag([*spacing_mm, 1.0])
    rng = np.random.default_rng(len(name))
    image = (rng.random(shape) * 100).astype(np.float32)
    mask = np.full(shape, mask_values[0], np.uint8)
    mask[2:6, 2:6, 1:5] = mask_values[1]
    nib.save(nib.Nifti1Image(image, affine), str(folder / f"{name}.nii.gz"))
    nib.save(nib.Nifti1Image(mask, affine), str(folder / f"{name}_mask.nii.gz"))
    return folder / f"{name}.nii.gz", folder / f"{name}_mask.nii.gz"


def _manifest(path, rows, spacing=None):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "image", "mask", "domain"] + (["spacing"] if spacing is not None else []))
        for n, (scan_id, image, mask, domain) in enumerate(rows):
            writer.writerow([scan_id, image, mask, domain] + ([spacing[n]] if spacing is not None else []))
    return path


def _three_scans(tmp_path, domains=("d", "d", "e")):
    rows = []
    for i, domain in enumerate(domains):
        image, mask = _pair(tmp_path / "scans", f"s{i}")
        rows.append((f"s{i}", image, mask, domain))
    return _manifest(tmp_path / "manifest.csv", rows)


def _error_line(result):
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert result.exit_code != 0 and "Traceback" not in result.output, result.output
    assert len(lines) == 1 and lines[0].startswith("Error:"), result.output
    return lines[0]


# ---- data shift -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("option, value, message", [
    ("--gamma", "nan", "--gamma nan: must be finite and > 0"),
    ("--gamma", "0", "--gamma 0: must be finite and > 0"),
    ("--gamma", "-1", "--gamma -1: must be finite and > 0"),
    ("--bias", "inf", "--bias inf: must be finite and >= 0"),
    ("--noise", "-0.1", "--noise -0.1: must be finite and >= 0"),
])
def test_shift_refuses_non_finite_and_non_positive_parameters(tmp_path, cli_runner, cli_app, option, value,
                                                              message):
    manifest = _three_scans(tmp_path)
    result = cli_runner.invoke(cli_app, ["data", "shift", str(manifest), "--domain", "d", "--n", "1",
                                         "--out-dir", str(tmp_path / "out"), "--out", str(tmp_path / "out.csv"),
                                         option, value])
    assert message in _error_line(result)
    assert not (tmp_path / "out.csv").exists() and not list(tmp_path.glob("out/images/*"))


def test_shift_refuses_an_existing_domain_as_new_domain(tmp_path, cli_runner, cli_app):
    manifest = _three_scans(tmp_path)
    result = cli_runner.invoke(cli_app, ["data", "shift", str(manifest), "--domain", "d", "--n", "1",
                                         "--new-domain", "e", "--out-dir", str(tmp_path / "out"),
                                         "--out", str(tmp_path / "out.csv")])
    assert "the shifted domain 'e' is already a domain of the manifest" in _error_line(result)
    assert not (tmp_path / "out.csv").exists()


def test_shift_refuses_a_2d_manifest(tmp_path, cli_runner, cli_app):
    rows = []
    for i in range(3):
        Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(tmp_path / f"x{i}.png")
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / f"x{i}_mask.png")
        rows.append((f"x{i}", f"x{i}.png", f"x{i}_mask.png", "us"))
    manifest = _manifest(tmp_path / "m.csv", rows)
    result = cli_runner.invoke(cli_app, ["data", "shift", str(manifest), "--domain", "us", "--n", "1",
                                         "--out-dir", str(tmp_path / "out"), "--out", str(tmp_path / "out.csv")])
    assert ".png: not a NIfTI volume; data shift simulates a scanner on 3D NIfTI scans only" in _error_line(result)


def test_shift_with_valid_parameters_still_writes_finite_volumes(tmp_path, cli_runner, cli_app):
    manifest = _three_scans(tmp_path)
    result = cli_runner.invoke(cli_app, ["data", "shift", str(manifest), "--domain", "d", "--n", "1",
                                         "--out-dir", str(tmp_path / "out"), "--out", str(tmp_path / "out.csv")])
    assert result.exit_code == 0, result.output
    (image,) = list((tmp_path / "out" / "images").glob("*.nii.gz"))
    assert np.isfinite(np.asanyarray(nib.load(str(image)).dataobj)).all()


# ---- the manifest's spacing column against the NIfTI header ---------------------------------------------

def test_preprocess_refuses_a_manifest_spacing_the_header_contradicts(tmp_path, cli_runner, cli_app):
    image, mask = _pair(tmp_path / "scans", "a", spacing_mm=(2.0, 2.0, 2.0))
    manifest = _manifest(tmp_path / "m.csv", [("a", image, mask, "d")], spacing=["1 1 1"])
    result = cli_runner.invoke(cli_app, ["data", "preprocess", str(manifest), "--cache", str(tmp_path / "cache"),
                                         "--workers", "1"])
    line = _error_line(result)
    assert "a.nii.gz: the manifest's spacing 1 x 1 x 1 mm differs from the NIfTI header's 2 x 2 x 2 mm" in line
    assert not list((tmp_path / "cache").glob("a-*"))


def test_a_spacing_within_the_tolerance_or_absent_is_accepted(tmp_path):
    from fewshot_da.data.checks import spacing_disagreement
    from fewshot_da.data.manifest import Record

    image, mask = _pair(tmp_path / "scans", "a", spacing_mm=(1.0, 0.9375, 0.9375))
    ok = [(1.0, 0.9375, 0.9375), (1.0, 0.9376, 0.9375), None]  # 1e-4 relative: a rounding in the CSV
    for spacing in ok:
        assert spacing_disagreement(Record("a", str(image), str(mask), "d", spacing)) is None
    assert "0.95" in spacing_disagreement(Record("a", str(image), str(mask), "d", (1.0, 0.95, 0.95)))
    assert "differs" in spacing_disagreement(Record("a", str(image), str(mask), "d", (1.0,)))  # one = all axes


def test_data_index_reports_the_mask_values_train_would_refuse(tmp_path, cli_runner, cli_app):
    for name in ("a", "b", "c", "d", "e"):
        _pair(tmp_path / "site" / "images", name, mask_values=(0, 2) if name == "b" else (0, 1))
    for path in (tmp_path / "site" / "images").glob("*_mask.nii.gz"):
        (tmp_path / "site" / "masks").mkdir(exist_ok=True)
        path.rename(tmp_path / "site" / "masks" / path.name)
    result = cli_runner.invoke(cli_app, ["data", "index", "folder", str(tmp_path / "site"),
                                         "--out", str(tmp_path / "m.csv")])
    assert result.exit_code == 0, result.output
    problems = [line for line in result.output.splitlines() if line.startswith("problem:")]
    assert len(problems) == 1 and "b_mask.nii.gz: mask is not binary (values 0, 2)" in problems[0]
    assert "no problems found" not in result.output


# ---- ids too long to name files -------------------------------------------------------------------------

def test_index_refuses_an_id_too_long_for_a_file_name(tmp_path, cli_runner, cli_app):
    long = "x" * 240
    for name in ("a", long):
        _, mask = _pair(tmp_path / "site" / "images", name)
        (tmp_path / "site" / "masks").mkdir(exist_ok=True)
        mask.rename(tmp_path / "site" / "masks" / mask.name)
    result = cli_runner.invoke(cli_app, ["data", "index", "folder", str(tmp_path / "site"),
                                         "--out", str(tmp_path / "m.csv")])
    line = _error_line(result)
    assert f"{long}.nii.gz: id 'xxxx" in line and "is 240 bytes long" in line and "at most 128 bytes" in line
    assert not (tmp_path / "m.csv").exists()


def test_read_manifest_refuses_an_id_too_long_naming_the_line(tmp_path):
    from fewshot_da.data.manifest import read_manifest

    image, mask = _pair(tmp_path / "scans", "a")
    manifest = _manifest(tmp_path / "m.csv", [("a", image, mask, "d"), ("é" * 70, image, mask, "d")])
    with pytest.raises(InputError, match=r"m\.csv:3: id 'éé.*is 140 bytes long"):
        read_manifest(manifest)


# ---- --spacing-mm as three floats -----------------------------------------------------------------------

def _cached_spacing(cache):
    import json

    (meta,) = list(cache.glob("*/meta.json"))
    return json.loads(meta.read_text())["spacing_mm"]


@pytest.mark.parametrize("spacing", [["2", "2", "2"], ["2,2,2"], ["2"]])
def test_preprocess_takes_three_floats_and_the_older_forms(tmp_path, cli_runner, cli_app, spacing):
    image, mask = _pair(tmp_path / "scans", "a", shape=(8, 8, 8))
    manifest = _manifest(tmp_path / "m.csv", [("a", image, mask, "d")])
    result = cli_runner.invoke(cli_app, ["data", "preprocess", "--spacing-mm", *spacing, str(manifest),
                                         "--cache", str(tmp_path / "cache"), "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert _cached_spacing(tmp_path / "cache") == [2.0, 2.0, 2.0]


def test_phantoms_take_three_floats(tmp_path, cli_runner, cli_app):
    out = tmp_path / "ph"
    result = cli_runner.invoke(cli_app, ["data", "phantoms", str(out), "--scans-per-domain", "1",
                                         "--shape", "16,16,12", "--spacing-mm", "1.5", "1", "2"])
    assert result.exit_code == 0, result.output
    (image,) = list(out.glob("images/*siemens_15*.nii.gz"))
    assert tuple(float(z) for z in nib.load(str(image)).header.get_zooms()) == (1.5, 1.0, 2.0)


# ---- data subset ----------------------------------------------------------------------------------------

def test_subset_written_in_another_folder_points_at_the_same_files(tmp_path, cli_runner, cli_app):
    from fewshot_da.data.manifest import read_manifest

    manifest = _three_scans(tmp_path, domains=("d", "e", "e"))
    out = tmp_path / "elsewhere" / "deeper" / "labelled.csv"
    out.parent.mkdir(parents=True)
    result = cli_runner.invoke(cli_app, ["data", "subset", str(manifest), "--domain", "e", "--ids", "s2,s1",
                                         "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "e 2" in result.output
    records = read_manifest(out)
    original = {r.id: r for r in read_manifest(manifest)}
    assert [r.id for r in records] == ["s1", "s2"]  # the manifest's order
    for r in records:
        assert r.image == original[r.id].image and r.mask == original[r.id].mask and r.domain == "e"
    # the same data the preprocessing sees: a preprocess of the subset finds every file
    result = cli_runner.invoke(cli_app, ["data", "preprocess", str(out), "--cache", str(tmp_path / "c"),
                                         "--workers", "1"])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("args, message", [
    (["--domain", "zz"], "--domain 'zz' names no scan of"),
    (["--ids", "s0,nope"], "--ids: 'nope' is not an id of"),
    (["--domain", "e", "--ids", "s0"], "no scan is in --domain e with one of the --ids"),
    ([], "give --domain and/or --ids"),
])
def test_subset_refuses_selections_that_match_nothing(tmp_path, cli_runner, cli_app, args, message):
    manifest = _three_scans(tmp_path)
    result = cli_runner.invoke(cli_app, ["data", "subset", str(manifest), "--out", str(tmp_path / "s.csv"), *args])
    assert message in _error_line(result)


def test_index_help_says_paths_are_relative_to_the_manifest(cli_runner, cli_app):
    result = cli_runner.invoke(cli_app, ["data", "index", "--help"])
    assert "relative to the manifest's own folder" in " ".join(result.output.split())
