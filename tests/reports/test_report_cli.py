"""`fewshot-da report` on a synthetic grid folder and on hand-made run folders; D_R and a winner redone by hand."""
import csv

import numpy as np
import pytest

from fewshot_da.atomic import write_json_atomic
from fewshot_da.reports.gap import pair_gap_closed
from tests.reports.test_collect import write_synthetic

REPORT_FILES = {"index.html", "report.md", "transfer_matrix.csv", "transfer_matrix.md", "transfer_heatmap.png",
                "gap_by_budget.csv", "gap_by_budget.md", "gap_vs_budget.png", "winners.csv", "winners.md",
                "winners.png", "winner_decisions.csv", "winner_decisions.md", "score_by_budget.csv",
                "score_by_budget.md"}


def _read(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def grid_report(tmp_path_factory):
    from click.testing import CliRunner
    from fewshot_da_cli.main import cli

    root = tmp_path_factory.mktemp("grid")
    write_synthetic(root / "grid", spottune=True)
    policy = root / "grid" / "runs" / "spottune-ge15-philips3-1-s0"
    policy.mkdir(parents=True)
    (policy / "policy_test.csv").write_text("unit,fraction_finetuned\n" + "".join(f"{u},{u / 32:.3f}\n"
                                                                                for u in range(1, 33)))
    result = CliRunner().invoke(cli, ["report", str(root / "grid"), "--out", str(root / "report"), "--alpha", "0.1"])
    assert result.exit_code == 0, result.output
    return root


def test_grid_report_writes_every_file(grid_report):
    names = {p.name for p in (grid_report / "report").iterdir()}
    assert REPORT_FILES | {"spottune_tests.csv", "policy_map.png", "policy_fractions.csv"} <= names
    html = (grid_report / "report" / "index.html").read_text()
    for image in ("transfer_heatmap.png", "gap_vs_budget.png", "winners.png", "policy_map.png"):
        assert f'src="{image}"' in html
    assert "<script" not in html and "http" not in html
    fractions = _read(grid_report / "report" / "policy_fractions.csv")
    assert len(fractions) == 32 and {r["budget"] for r in fractions} == {"1"}


def test_one_pair_gap_and_one_budget_winner_by_hand(grid_report):
    """From results.csv alone: ge15 -> philips3, 'first' at 1 scan, both seeds; and the winners at 1/4 scan."""
    rows = _read(grid_report / "grid" / "results.csv")
    col = "surface_dice_1mm"
    base = {r["case"]: float(r[col]) for r in rows
            if r["strategy"] == "baseline" and (r["source"], r["target"]) == ("ge15", "philips3")}
    oracle = {r["case"]: float(r[col]) for r in rows if r["strategy"] == "oracle" and r["target"] == "philips3"}

    def pair_gap(layers, budget):
        per_seed = []
        for seed in ("0", "1"):
            run = [r for r in rows if (r["source"], r["target"], r["layers"], r["budget"], r["seed"]) ==
                   ("ge15", "philips3", layers, budget, seed)]
            cases = [r["case"] for r in run]
            per_seed.append(pair_gap_closed([float(r[col]) for r in run], [base[c] for c in cases],
                                            [oracle[c] for c in cases]))
        return float(np.mean(per_seed))

    decisions = _read(grid_report / "report" / "winner_decisions.csv")
    mine = {(d["source"], d["target"], d["budget"]): d for d in decisions}
    d = mine["ge15", "philips3", "1"]
    assert d["winner"] == "first" and float(d["gap_winner"]) == pytest.approx(pair_gap("first", "1"), abs=1e-5)

    # the winner at 1/4 scan in every pair: the highest pair-level D_R among all/first/last
    wins = {"all": 0, "first": 0, "last": 0}
    pairs = {(r["source"], r["target"]) for r in rows if r["strategy"] == "freeze"}
    for source, target in pairs:
        base = {r["case"]: float(r[col]) for r in rows
                if r["strategy"] == "baseline" and (r["source"], r["target"]) == (source, target)}
        oracle = {r["case"]: float(r[col]) for r in rows if r["strategy"] == "oracle" and r["target"] == target}
        gaps = {}
        for layers in wins:
            run = [r for r in rows if (r["source"], r["target"], r["layers"], r["budget"]) ==
                   (source, target, layers, "1/4")]
            per_seed = []
            for seed in ("0", "1"):
                cases = [r["case"] for r in run if r["seed"] == seed]
                per_seed.append(pair_gap_closed([float(r[col]) for r in run if r["seed"] == seed],
                                                [base[c] for c in cases], [oracle[c] for c in cases]))
            gaps[layers] = np.mean(per_seed)
        wins[max(gaps, key=gaps.get)] += 1
    counts = {r["method"]: int(r["wins"]) for r in _read(grid_report / "report" / "winners.csv")
              if r["budget"] == "1/4"}
    assert counts == wins


def _scores(domain, values, prefix):
    return [{"id": f"{prefix}{i}", "domain": domain, "dice": v, "surface_dice_1mm": v} for i, v in enumerate(values)]


def test_hand_made_runs_are_collected_and_labelled(tmp_path, cli_runner, cli_app):
    # source model trained on A (legacy summary, no spec): scored on its own val scans -> neither
    write_json_atomic(tmp_path / "train_A" / "summary.json",
                      {"kind": "train", "arch": "dart20", "source": "A", "scores": _scores("A", [0.9], "a")})
    # its prediction on B (legacy predict summary) -> the baseline, found by itself
    write_json_atomic(tmp_path / "pred_A_on_B" / "summary.json",
                      {"kind": "predict", "model": str(tmp_path / "train_A"), "scores": _scores("B", [.5, .6, .4], "b")})
    # an oracle made by hand: a train run on B scored on those B scans, labelled with --oracle
    write_json_atomic(tmp_path / "oracle_B" / "summary.json",
                      {"spec": {"kind": "train", "arch": "dart20", "source": "B"},
                       "scores": _scores("B", [.9, .8, .8], "b")})
    # two adapt runs: one with a spec, one legacy
    write_json_atomic(tmp_path / "first" / "summary.json",
                      {"spec": {"kind": "adapt", "arch": "dart20", "source": "A", "target": "B", "strategy": "freeze",
                                "layers": "first", "budget": "1", "seed": 0},
                       "scores": _scores("B", [.7, .7, .6], "b")})
    write_json_atomic(tmp_path / "last" / "summary.json",
                      {"kind": "adapt", "arch": "dart20", "source": "A", "target": "B", "layers": "last", "scans": 1,
                       "slices": "all", "scores": _scores("B", [.6, .65, .5], "b")})
    (tmp_path / "last" / "config.yaml").write_text("seed: 0\nepochs: 2\n")
    # summaries with specs as stages.py writes them: a source model on B and its prediction on A -> baseline B->A
    write_json_atomic(tmp_path / "train_B" / "summary.json",
                      {"spec": {"kind": "train", "arch": "dart20", "source": "B", "target": None, "strategy": "all",
                                "layers": "", "budget": "", "seed": 0, "fold": None},
                       "scores": _scores("B", [0.9], "bv")})
    write_json_atomic(tmp_path / "pred_B_on_A" / "summary.json",
                      {"spec": {"kind": "predict", "arch": "dart20", "source": "B", "target": None, "strategy": "all",
                                "layers": "", "budget": "", "seed": 0, "fold": None},
                       "kind": "predict", "model": str(tmp_path / "train_B"), "scores": _scores("A", [.3, .4], "a")})
    out = tmp_path / "report"
    result = cli_runner.invoke(cli_app, ["report", str(tmp_path / "train_A"), str(tmp_path / "pred_A_on_B"),
                                         str(tmp_path / "pred_B_on_A"), str(tmp_path / "train_B"),
                                         str(tmp_path / "first"), str(tmp_path / "last"),
                                         "--oracle", str(tmp_path / "oracle_B"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    rows = _read(out / "results.csv")
    labels = {(r["run"], r["strategy"], r["source"], r["target"]) for r in rows}
    assert labels == {("pred_A_on_B", "baseline", "A", "B"), ("oracle_B", "oracle", "B", "B"),
                      ("first", "freeze", "A", "B"), ("last", "freeze", "A", "B"), ("pred_B_on_A", "baseline", "B", "A")}
    assert {r["seed"] for r in rows if r["run"] in ("first", "last", "pred_B_on_A")} == {"0"}
    # the same numbers as the hand-derived two-pair table in test_reports: D_R .5 (first) and .25 (last)
    gaps = {r["method"]: float(r["mean"]) for r in _read(out / "gap_by_budget.csv")}
    assert gaps == pytest.approx({"first": 0.5, "last": 0.25})
    # two folders of one name keep apart as parent/name
    write_json_atomic(tmp_path / "more" / "first" / "summary.json",
                      {"spec": {"kind": "adapt", "arch": "dart20", "source": "A", "target": "B", "strategy": "freeze",
                                "layers": "first", "budget": "1", "seed": 1},
                       "scores": _scores("B", [.7, .7, .6], "b")})
    result = cli_runner.invoke(cli_app, ["report", str(tmp_path / "pred_A_on_B"), str(tmp_path / "first"),
                                         str(tmp_path / "more" / "first"), "--oracle", str(tmp_path / "oracle_B"),
                                         "--out", str(tmp_path / "report2")])
    assert result.exit_code == 0, result.output
    runs = {r["run"] for r in _read(tmp_path / "report2" / "results.csv")}
    assert runs == {"pred_A_on_B", "oracle_B", f"{tmp_path.name}/first", "more/first"}
    page = (out / "index.html").read_text()
    assert "train_A: a train scored on its own domain" in page and "train_B: a train scored" in page
    assert REPORT_FILES <= {p.name for p in out.iterdir()}


def test_bad_input_is_one_line(tmp_path, cli_runner, cli_app):
    write_synthetic(tmp_path / "grid")
    result = cli_runner.invoke(cli_app, ["report", str(tmp_path / "grid"), "--out", str(tmp_path / "r"),
                                         "--tolerance", "3"])
    assert result.exit_code != 0
    expected = ("Error: --tolerance 3: results have no surface_dice_3mm column "
                "(have ['surface_dice_1mm', 'surface_dice_2mm'])")
    assert result.output.strip().splitlines() == [expected]
    (tmp_path / "unfinished").mkdir()
    result = cli_runner.invoke(cli_app, ["report", str(tmp_path / "unfinished"), "--out", str(tmp_path / "r")])
    assert result.exit_code != 0 and "unfinished: not a finished run folder" in result.output
    assert len(result.output.strip().splitlines()) == 1
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "summary.json").write_text("{")
    result = cli_runner.invoke(cli_app, ["report", str(tmp_path / "broken"), "--out", str(tmp_path / "r")])
    assert result.exit_code != 0 and "not valid JSON" in result.output
    result = cli_runner.invoke(cli_app, ["report", str(tmp_path / "grid"), str(tmp_path / "broken"),
                                         "--out", str(tmp_path / "r")])
    assert result.exit_code != 0 and "reported alone" in result.output


def test_label_free_strategy_and_missing_oracle(tmp_path):
    from fewshot_da.experiments.results import read_results, write_results
    from fewshot_da.reports.report import write_report
    from tests.reports.test_collect import synthetic_rows

    write_synthetic(tmp_path / "grid", adabn=True)
    out = write_report([tmp_path / "grid"], tmp_path / "r")
    adabn = [r for r in _read(out["gap_by_budget"]) if r["method"] == "adabn"]
    assert len(adabn) == 1 and adabn[0]["budget"] == "" and float(adabn[0]["mean"]) == pytest.approx(0.2, abs=0.02)
    assert "| 0 (no labels) |" in out["gap_by_budget_md"].read_text()
    assert {r["method"] for r in _read(out["winners"])} == {"all", "first", "last"}
    # without oracle rows there is no D_R; the page says so and still renders the transfer matrix
    rows = [r for r in synthetic_rows() if r["strategy"] != "oracle"]
    write_results(tmp_path / "no_oracle" / "results.csv", rows)
    out = write_report([tmp_path / "no_oracle" / "results.csv"], tmp_path / "r2")
    assert "gap_by_budget" not in out and "transfer_heatmap" in out
    assert "no case with both a baseline and an oracle score" in out["index"].read_text()
    assert len(read_results(tmp_path / "no_oracle" / "results.csv")) == len(rows)


def test_empty_or_foreign_tables_are_refused(tmp_path, cli_runner, cli_app):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "results.csv").write_text("run,arch,source,target,strategy,layers,budget,seed,fold,case\n")
    result = cli_runner.invoke(cli_app, ["report", str(tmp_path / "empty"), "--out", str(tmp_path / "r")])
    assert result.exit_code != 0 and "results.csv: no result rows yet" in result.output
    (tmp_path / "other.csv").write_text("case,dice\na,0.5\n")
    result = cli_runner.invoke(cli_app, ["report", str(tmp_path / "other.csv"), "--out", str(tmp_path / "r")])
    assert result.exit_code != 0 and "other.csv: not a results table (no column 'run')" in result.output


def test_policy_files_of_unknown_runs(tmp_path):
    from fewshot_da.reports.report import write_report

    write_synthetic(tmp_path / "grid")
    own = tmp_path / "grid" / "elsewhere" / "a"
    own.mkdir(parents=True)
    (own / "policy_test.csv").write_text("unit,budget,fraction_finetuned\n1,1/48,0.25\n2,1/48,1.0\n")
    lost = tmp_path / "grid" / "elsewhere" / "b"
    lost.mkdir()
    (lost / "policy_test.csv").write_text("unit,fraction_finetuned\n1,0.5\n")
    out = write_report([tmp_path / "grid"], tmp_path / "r")
    assert [(r["unit"], r["budget"]) for r in _read(out["policy_fractions"])] == [("1", "1/48"), ("2", "1/48")]
    assert "b/policy_test.csv: no budget column and no budget given" in out["index"].read_text()
