"""Transfer matrix, Markdown tables, policy matrix and the generic heat map, on hand-made rows."""
import math

import numpy as np
import pytest
from PIL import Image

from fewshot_da.errors import InputError
from fewshot_da.figures import heatmap
from fewshot_da.reports.policy import policy_matrix, read_policy_csv
from fewshot_da.reports.tables import Table, transfer_matrix, transfer_table, write_table


def _r(source, target, strategy, case, value, seed="0"):
    return {"run": f"{strategy}{source}{target}{seed}", "arch": "dart20", "source": source, "target": target,
            "strategy": strategy, "layers": "", "budget": "", "seed": seed, "fold": "", "case": case,
            "surface_dice_1mm": value}


def test_transfer_matrix_by_hand():
    rows = [_r("A", "B", "baseline", "b1", 0.4), _r("A", "B", "baseline", "b2", 0.6),
            # two seeds of one case are averaged first: b1 -> (.3 + .5) / 2 = .4
            _r("B", "A", "baseline", "a1", 0.3), _r("B", "A", "baseline", "a1", 0.5, seed="1"),
            _r("B", "A", "baseline", "a2", float("nan")),
            _r("B", "B", "oracle", "b1", 0.9), _r("B", "B", "oracle", "b2", 0.8),
            _r("A", "B", "freeze", "b1", 0.7)]  # adapted rows are not in the matrix
    m = transfer_matrix(rows, "surface_dice_1mm")
    assert m.sources == ["A", "B"] and m.targets == ["A", "B"]
    assert m.kind == [["", "baseline"], ["baseline", "oracle"]]
    assert m.mean[0, 1] == pytest.approx(0.5) and m.sd[0, 1] == pytest.approx(np.std([0.4, 0.6], ddof=1))
    assert m.mean[1, 0] == pytest.approx(0.4) and m.n[1, 0] == 2 and m.n_nan[1, 0] == 1 and math.isnan(m.sd[1, 0])
    assert m.mean[1, 1] == pytest.approx(0.85)
    assert math.isnan(m.mean[0, 0])
    table = transfer_table(m, "surface_dice_1mm")
    assert table.cells[0] == ["A", "–", "0.500 (0.141)"]
    assert table.cells[1] == ["B", "0.400 (nan) [1 NaN]", "**0.850 (0.071)**"]


def test_markdown_and_csv(tmp_path):
    table = Table("t", "Title", ["a", "b|c"], [["1", "x"]], "cap", [{"a": 1.5, "b": float("nan")}], ["a", "b"])
    md = table.markdown()
    assert md.splitlines() == ["### Title", "", "cap", "", "| a | b\\|c |", "| --- | --- |", "| 1 | x |"]
    csv_path, md_path = write_table(table, tmp_path)
    assert csv_path.read_text() == "a,b\n1.5,nan\n" and md_path.read_text() == md


def test_policy_matrix_averages_runs_and_orders_units(tmp_path):
    (tmp_path / "r1.csv").write_text("unit,fraction_finetuned\n10,0.5\n2,1.0\n")
    (tmp_path / "r2.csv").write_text("unit,fraction_finetuned\n10,0.7\n2,0.0\n")
    (tmp_path / "all.csv").write_text("unit,budget,fraction_finetuned\n2,3,0.25\n")
    rows = read_policy_csv(tmp_path / "r1.csv", "1/48") + read_policy_csv(tmp_path / "r2.csv", "1/48")
    units, budgets, m = policy_matrix(rows + read_policy_csv(tmp_path / "all.csv"))
    assert units == ["2", "10"] and budgets == ["1/48", "3"]
    np.testing.assert_allclose(m, [[0.5, 0.25], [0.6, np.nan]])
    with pytest.raises(InputError, match="no budget"):
        read_policy_csv(tmp_path / "r1.csv")
    (tmp_path / "bad.csv").write_text("unit,frac\n1,0.5\n")
    with pytest.raises(InputError, match="bad.csv"):
        read_policy_csv(tmp_path / "bad.csv", "1")


def test_heatmap_is_generic_and_checks_shape(tmp_path):
    path = heatmap(np.array([[0.1, np.nan, 0.9]]), ["unit 1"], ["a", "b", "c"], tmp_path / "h.png",
                   cmap="magma", title="shift map")
    with Image.open(path) as im:
        assert im.size[0] > 100 and np.asarray(im.convert("L")).std() > 10
    with pytest.raises(ValueError, match="does not match"):
        heatmap(np.zeros((2, 2)), ["x"], ["a", "b"], tmp_path / "bad.png")


def test_heatmap_says_what_blank_cells_mean(tmp_path):
    """The shift map's NaN rows (units without a norm layer) are explained under the axes, not left bare."""
    import math

    from fewshot_da.figures import axis_label_with_blank_note

    note = "no normalisation layer in the unit"
    assert axis_label_with_blank_note("", [[0.1, math.nan]], note) == f"blank: {note}"
    assert axis_label_with_blank_note("target", [[0.1, math.nan]], note) == f"target\nblank: {note}"
    assert axis_label_with_blank_note("target", [[0.1, 0.2]], note) == "target"
    assert heatmap([[0.1, math.nan]], ["a"], ["x", "y"], tmp_path / "h.png", blank_label=note).is_file()
