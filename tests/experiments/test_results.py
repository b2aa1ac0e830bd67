"""results.csv: rows from run summaries, canonical order, locked appends, strict JSON writer."""
import json
import math

import pytest

from fewshot_da.atomic import write_json_atomic
from fewshot_da.errors import InputError
from fewshot_da.data.budgets import budget_label, budget_scans
from fewshot_da.experiments.results import (ID_COLUMNS, append_results, collect_runs, read_results, rows_from_summary,
                                            write_results)


def _summary(strategy="freeze", budget="1/8", cases=("b", "a")):
    return {"spec": {"kind": "adapt", "arch": "dart20", "source": "s", "target": "t", "strategy": strategy,
                     "layers": "first", "budget": budget, "seed": 0, "fold": None},
            "scores": [{"id": c, "domain": "t", "dice": 0.5, "surface_dice_2mm": 0.7, "surface_dice_1mm": 0.6,
                        "hd95_mm": float("nan")} for c in cases]}


def test_rows_carry_spec_and_rename_case():
    rows = rows_from_summary(_summary(), "r1", strategy="baseline")
    assert [r["case"] for r in rows] == ["b", "a"]
    assert rows[0]["strategy"] == "baseline" and rows[0]["fold"] == "" and rows[0]["run"] == "r1"


def test_write_is_canonical_and_append_matches(tmp_path):
    rows = rows_from_summary(_summary(cases=("b", "a")), "r2") + rows_from_summary(_summary(cases=("c",)), "r1")
    write_results(tmp_path / "full.csv", rows)
    header = (tmp_path / "full.csv").read_text().splitlines()[0].split(",")
    assert header[-4:] == ["dice", "surface_dice_1mm", "surface_dice_2mm", "hd95_mm"]
    got = read_results(tmp_path / "full.csv")
    assert [(r["run"], r["case"]) for r in got] == [("r1", "c"), ("r2", "a"), ("r2", "b")]
    assert math.isnan(got[0]["hd95_mm"]) and got[0]["dice"] == 0.5
    append_results(tmp_path / "a.csv", rows[:2])
    append_results(tmp_path / "a.csv", rows[2:])
    assert len(read_results(tmp_path / "a.csv")) == 3


def test_collect_runs_needs_finished_folders(tmp_path):
    write_json_atomic(tmp_path / "done" / "summary.json", _summary())
    (tmp_path / "running").mkdir()
    assert len(collect_runs([tmp_path / "done"])) == 2
    with pytest.raises(InputError, match="running"):
        collect_runs([tmp_path / "running"])


def test_strict_json_nan_is_null(tmp_path):
    write_json_atomic(tmp_path / "s.json", {"x": float("nan"), "y": [1.0, float("inf")]})
    assert json.loads((tmp_path / "s.json").read_text()) == {"x": None, "y": [1.0, None]}


def test_budget_labels():
    assert budget_label(3) == "3" and budget_label(1, 48) == "1/48" and budget_label() == ""
    assert budget_scans("1/48") == pytest.approx(1 / 48) and budget_scans("") == 0.0
    with pytest.raises(InputError):
        budget_scans("x")


def test_rows_carry_the_label_and_older_tables_read_as_binary(tmp_path):
    """results.csv's `label` column: the foreground's name for binary runs; a table written before the column
    reads as binary and is widened by the next append, losing no row."""
    summary = {"spec": {"arch": "dsa", "source": "a", "target": "b", "strategy": "freeze", "layers": "first",
                        "budget": "1", "seed": 0, "fold": None},
               "scores": [{"id": "s1", "domain": "b", "dice": 0.9}]}
    (row,) = rows_from_summary(summary, "adapt/x")
    assert row["label"] == "foreground" and row["case"] == "s1"
    labelled = dict(summary, labels={"background": 0, "brain": 1})
    assert rows_from_summary(labelled, "adapt/x")[0]["label"] == "brain"
    old = tmp_path / "results.csv"
    old.write_text("run,arch,source,target,strategy,layers,budget,seed,fold,case,dice\n"
                   "adapt/y,dsa,a,b,freeze,all,1,0,,s2,0.8\n")
    assert read_results(old)[0]["label"] == "foreground"
    append_results(old, [row])
    rows = read_results(old)
    assert sorted((r["run"], r["label"]) for r in rows) == [("adapt/x", "foreground"), ("adapt/y", "foreground")]
    assert old.read_text().splitlines()[0].split(",")[:11] == list(ID_COLUMNS)
