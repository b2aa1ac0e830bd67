"""Dataset builders -> manifests: CC359 (fake tree under the real names), folders, nnU-Net, 2D PNG folders."""
import csv
from pathlib import Path

import pytest

from fewshot_da.data.datasets import CC359_DOMAINS, index_cc359, index_dataset, index_folder, index_images2d
from fewshot_da.data.manifest import Record, read_manifest, write_manifest
from fewshot_da.errors import InputError


def _cc359_rows(shared_data):
    with open(shared_data / "cc359-names.csv", newline="") as f:
        return list(csv.DictReader(f))


def _touch(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")


@pytest.fixture
def fake_cc359(tmp_path, shared_data):
    """All 359 real CC359 names as empty files (the indexer reads names only)."""
    rows = _cc359_rows(shared_data)
    for row in rows:
        _touch(tmp_path / row["image"])
        _touch(tmp_path / row["mask"])
    return tmp_path, rows


def test_cc359_index_matches_reference_table(fake_cc359):
    root, rows = fake_cc359
    records = index_cc359(root)
    assert [r.id for r in records] == sorted(row["id"] for row in rows)
    expected = {row["id"]: row["domain"] for row in rows}
    assert all(r.domain == expected[r.id] for r in records)
    counts = {d: sum(r.domain == d for r in records) for d in CC359_DOMAINS}
    assert counts == {"siemens15": 60, "siemens3": 60, "ge15": 60, "ge3": 60, "philips15": 59, "philips3": 60}
    first = records[0]
    assert Path(first.image).name == "CC0001_philips_15_55_M.nii.gz"
    assert Path(first.mask).name == "CC0001_philips_15_55_M_ss.nii.gz"


def test_cc359_shared_folder(tmp_path):
    for name in ("CC0326_ge_3_55_M", "CC0030_philips_15_42_F"):
        _touch(tmp_path / f"{name}.nii.gz")
        _touch(tmp_path / f"{name}_ss.nii.gz")
    records = index_cc359(tmp_path)
    assert [(r.id, r.domain) for r in records] == [("CC0030", "philips15"), ("CC0326", "ge3")]


def test_cc359_unknown_name_names_the_file(tmp_path):
    _touch(tmp_path / "images" / "CC0001_philips_15_55_M.nii.gz")
    _touch(tmp_path / "masks" / "CC0001_philips_15_55_M_ss.nii.gz")
    _touch(tmp_path / "images" / "CC0002_toshiba_15_55_M.nii.gz")
    with pytest.raises(InputError, match="CC0002_toshiba_15_55_M.nii.gz: not a CC359 name") as info:
        index_cc359(tmp_path)
    assert "\n" not in str(info.value)


def test_cc359_missing_mask(tmp_path):
    _touch(tmp_path / "images" / "CC0001_philips_15_55_M.nii.gz")
    (tmp_path / "masks").mkdir()
    with pytest.raises(InputError, match="CC0001_philips_15_55_M.nii.gz: no mask"):
        index_cc359(tmp_path)


def test_ixi_folder(shared_data):
    records = index_folder(shared_data / "ixi-hh")
    assert len(records) == 185
    assert {r.domain for r in records} == {"ixi-hh"}
    assert records[0].id == "IXI012-HH-1211"
    assert Path(records[0].mask).name == "IXI012-HH-1211_brain.nii.gz"  # suffix detected


def test_small_mri_shared_folder(shared_data):
    records = index_folder(shared_data / "small-mri", images=".", masks=".", mask_suffix="_brain", domain="heads")
    assert [(r.id, Path(r.mask).name) for r in records] == [
        ("head4mm-t1", "head4mm-t1_brain.nii.gz"), ("itk-kmeans-t1", "itk-kmeans-t1_brain.nii.gz")]


def test_folder_domains_by_subfolder_and_nnunet(tmp_path):
    for site in ("siteA", "siteB"):
        for case in ("c1", "c2"):
            _touch(tmp_path / "by_site" / site / "images" / f"{site}_{case}.nii.gz")
            _touch(tmp_path / "by_site" / site / "masks" / f"{site}_{case}_seg.nii.gz")
    records = index_folder(tmp_path / "by_site")
    assert [(r.id, r.domain) for r in records] == [
        ("siteA_c1", "siteA"), ("siteA_c2", "siteA"), ("siteB_c1", "siteB"), ("siteB_c2", "siteB")]

    nn = tmp_path / "Dataset001_Brain"
    for case in ("brain_001", "brain_002"):
        _touch(nn / "imagesTr" / f"{case}_0000.nii.gz")
        _touch(nn / "labelsTr" / f"{case}.nii.gz")
    records = index_folder(nn, domain="scanner1")
    assert [(r.id, Path(r.image).name, Path(r.mask).name) for r in records] == [
        ("brain_001", "brain_001_0000.nii.gz", "brain_001.nii.gz"),
        ("brain_002", "brain_002_0000.nii.gz", "brain_002.nii.gz")]


def test_empty_domain_folder_names_it(tmp_path):
    (tmp_path / "siteA" / "images").mkdir(parents=True)
    (tmp_path / "siteA" / "masks").mkdir(parents=True)
    with pytest.raises(InputError, match="siteA/images: no images found for domain 'siteA'"):
        index_folder(tmp_path)


@pytest.mark.parametrize("name, count, example", [
    ("busi", 780, "benign_1"), ("bus-bra-mini", 36, "1-benign_0804-s"), ("cxr-demo", 4, "cxr1")])
def test_images2d_layouts(shared_data, name, count, example):
    records = index_images2d(shared_data / name)
    assert len(records) == count
    assert {r.domain for r in records} == {name}
    assert example in {r.id for r in records}
    assert all(Path(r.mask).name == f"{Path(r.image).stem}_mask.png" for r in records)


def test_manifest_round_trip(tmp_path):
    (tmp_path / "data").mkdir()
    records = [Record("a", str(tmp_path / "data" / "a.nii.gz"), str(tmp_path / "data" / "a_ss.nii.gz"), "d1",
                      (1.0, 0.95, 0.95)),
               Record("b", "/elsewhere/b.nii.gz", "/elsewhere/b_ss.nii.gz", "d2")]
    path = write_manifest(records, tmp_path / "manifest.csv")
    text = path.read_text().splitlines()
    assert text[0] == "id,image,mask,domain,spacing"
    assert text[1] == "a,data/a.nii.gz,data/a_ss.nii.gz,d1,1 0.95 0.95"  # relative to the manifest
    assert read_manifest(path) == records


def test_manifest_errors(tmp_path):
    bad = tmp_path / "m.csv"
    bad.write_text("id,image,domain\nx,x.nii,d\n")
    with pytest.raises(InputError, match="lacks column"):
        read_manifest(bad)
    bad.write_text("id,image,mask,domain\nx,x.nii,m.nii,d\nx,y.nii,n.nii,d\n")
    with pytest.raises(InputError, match="duplicate id 'x'"):
        read_manifest(bad)


def test_index_dataset_reports_problems(shared_data, tmp_path):
    records, problems = index_dataset("folder", shared_data / "small-mri", tmp_path / "m.csv",
                                      images=".", masks=".", mask_suffix="_brain")
    assert len(records) == 2 and (tmp_path / "m.csv").is_file()
    assert problems == ["domain small-mri: only 2 scan(s); fewer than 5 cannot be a one2all source "
                        "(target or oracle only)"]


def test_images2d_original_busi_layout(tmp_path):
    from PIL import Image

    for cls in ("benign", "normal"):
        (tmp_path / cls).mkdir()
        Image.new("L", (4, 3)).save(tmp_path / cls / f"{cls} (1).png")
        Image.new("L", (4, 3)).save(tmp_path / cls / f"{cls} (1)_mask.png")
    records = index_images2d(tmp_path, images=".", masks=".", domain="busi")
    assert [(r.id, Path(r.mask).name) for r in records] == [
        ("benign (1)", "benign (1)_mask.png"), ("normal (1)", "normal (1)_mask.png")]
    Image.new("L", (4, 3)).save(tmp_path / "benign" / "benign (1)_mask_1.png")
    with pytest.raises(InputError, match=r"benign \(1\)_mask_1.png: a second mask of one image"):
        index_images2d(tmp_path, images=".", masks=".")
