"""`fewshot-da data ...`: phantoms -> index -> split -> preprocess, and one-line errors."""
import json

import numpy as np


def test_data_pipeline_on_phantoms(cli_runner, cli_app, tmp_path):
    root = tmp_path / "phantoms"
    result = cli_runner.invoke(cli_app, ["data", "phantoms", str(root), "--scans-per-domain", "5",
                                         "--shape", "24,24,16"])
    assert result.exit_code == 0, result.output
    assert "30 phantoms" in result.output

    manifest = tmp_path / "manifest.csv"
    result = cli_runner.invoke(cli_app, ["data", "index", "cc359", str(root), "--out", str(manifest)])
    assert result.exit_code == 0, result.output
    assert "ge15\t5" in result.output and "no problems found" in result.output
    assert manifest.read_text().count("\n") == 31

    result = cli_runner.invoke(cli_app, ["data", "split", str(manifest), "--out", str(tmp_path / "splits.json")])
    assert result.exit_code == 0, result.output
    splits = json.loads((tmp_path / "splits.json").read_text())
    assert len(splits["pairs"]) == 30 and len(splits["one2all"]["ge3"]["val"]) == 4
    # 5 scans per domain: test folds of 2/2/1, so the rest (3 or 4) still holds 2 val scans
    assert "18 oracle folds" in result.output and "note:" not in result.output

    cache = tmp_path / "cache"
    result = cli_runner.invoke(cli_app, ["data", "preprocess", str(manifest), "--cache", str(cache),
                                         "--preset", "dart20-code", "--spacing-mm", "2", "--workers", "1"])
    assert result.exit_code == 0, result.output
    entries = sorted(p for p in cache.iterdir())
    assert len(entries) == 30
    meta = json.loads((entries[0] / "meta.json").read_text())
    assert meta["spacing_mm"] == [2.0, 2.0, 2.0] and meta["shape"] == [8, 12, 12]
    assert np.load(entries[0] / "image.npy", mmap_mode="r").dtype == np.float16


def test_data_errors_are_one_line(cli_runner, cli_app, tmp_path):
    result = cli_runner.invoke(cli_app, ["data", "index", "folder", str(tmp_path / "nowhere"),
                                         "--out", str(tmp_path / "m.csv")])
    assert result.exit_code != 0
    assert result.output.strip().splitlines() == [f"Error: {tmp_path / 'nowhere'}: folder not found"]
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    (tmp_path / "images" / "scan.nii.gz").write_bytes(b"")
    result = cli_runner.invoke(cli_app, ["data", "index", "cc359", str(tmp_path), "--out", str(tmp_path / "m.csv")])
    assert result.exit_code != 0 and "scan.nii.gz: not a CC359 name" in result.output
    bad = tmp_path / "bad.csv"
    bad.write_text("id,image\n")
    result = cli_runner.invoke(cli_app, ["data", "split", str(bad), "--out", str(tmp_path / "s.json")])
    assert result.exit_code != 0 and "lacks column" in result.output
