"""predict --original-grid prints and records the scores of the masks it writes (on each scan's own grid),
not those of the preprocessed grid (issue 23 §5)."""
import json

import pytest
from click.testing import CliRunner

from fewshot_da.data.datasets import index_cc359
from fewshot_da.data.manifest import write_manifest
from fewshot_da.data.phantoms import write_phantom_dataset
from fewshot_da.data.splits import write_splits
from fewshot_da_cli.main import cli

TINY = ["--epochs", "1", "--lr-steps", "", "--iters-per-epoch", "3", "--batch-size", "2", "--crop", "24", "--quiet"]


def test_original_grid_scores_are_those_of_the_written_masks(tmp_path):
    write_phantom_dataset(tmp_path / "data", domains=("siemens15", "ge3"), scans_per_domain=6, shape=(32, 32, 12))
    records = index_cc359(tmp_path / "data")
    manifest = write_manifest(records, tmp_path / "manifest.csv")
    write_splits(records, tmp_path / "splits.json")
    runner = CliRunner()
    # a 1.5 mm preprocessing grid: the written masks are resampled back onto the 1 mm phantoms
    result = runner.invoke(cli, ["train", "--data", str(manifest), "--splits", str(tmp_path / "splits.json"),
                                 "--source", "siemens15", "--out", str(tmp_path / "src"),
                                 "--spacing-mm", "1.5", "1.5", "1.5", *TINY])
    assert result.exit_code == 0, result.output
    out = tmp_path / "pred"
    result = runner.invoke(cli, ["predict", "--model", str(tmp_path / "src"), "--ids", "ge3", "--out", str(out),
                                 "--original-grid", "--quiet"])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["scores_grid"] == "original" and summary["scored_on_preprocessed"] == []
    result = runner.invoke(cli, ["eval", "--gt", str(tmp_path / "data" / "masks"), "--pred", str(out / "predictions"),
                                 "--out", str(tmp_path / "eval")])
    assert result.exit_code == 0, result.output
    evaluated = json.loads((tmp_path / "eval" / "summary.json").read_text())
    for metric in ("dice", "surface_dice_1mm"):
        assert summary["mean"][metric] == pytest.approx(evaluated["mean"][metric], abs=1e-6), metric
    printed = [line for line in runner.invoke(cli, ["predict", "--model", str(tmp_path / "src"), "--ids", "ge3",
                                                    "--out", str(out), "--original-grid", "--quiet"]).output
               .splitlines() if "surface_dice_1mm=" in line]
    assert printed and f"surface_dice_1mm={evaluated['mean']['surface_dice_1mm']:.4f}" in printed[0]
