"""`fewshot-da report` on damaged input (issue 22): a broken results.csv line and a baseline/oracle of the wrong kind
are refused in one line naming the file (and line, or run folder) and the problem."""
import pytest

from fewshot_da.atomic import write_json_atomic
from tests.reports.test_collect import write_synthetic


def _report(cli_runner, cli_app, *args):
    result = cli_runner.invoke(cli_app, ["report", *map(str, args)])
    lines = result.output.strip().splitlines()
    assert result.exit_code != 0 and len(lines) == 1 and lines[0].startswith("Error: "), result.output
    return lines[0]


def _lines(path):
    return path.read_text().splitlines(keepends=True)


@pytest.fixture
def grid(tmp_path):
    path = write_synthetic(tmp_path / "grid")
    return path


def test_a_truncated_line_names_file_and_line(grid, tmp_path, cli_runner, cli_app):
    lines = _lines(grid)
    lines[5] = lines[5][: len(lines[5]) // 3] + "\n"  # a half-written line, as a cancelled append leaves
    grid.write_text("".join(lines))
    error = _report(cli_runner, cli_app, grid.parent, "--out", tmp_path / "r")
    assert f"{grid}:6:" in error and "fields where the header has" in error and "None" not in error


def test_a_score_out_of_range_is_refused(grid, tmp_path, cli_runner, cli_app):
    lines = _lines(grid)
    header = lines[0].strip().split(",")
    cells = lines[9].rstrip("\n").split(",")
    cells[header.index("surface_dice_1mm")] = "7.5"
    lines[9] = ",".join(cells) + "\n"
    grid.write_text("".join(lines))
    error = _report(cli_runner, cli_app, grid.parent, "--out", tmp_path / "r")
    assert error == f"Error: {grid}:10: surface_dice_1mm 7.5 is outside [0, 1]"
    assert not (tmp_path / "r" / "gap_by_budget.csv").exists()


@pytest.mark.parametrize("column,value,problem", [
    ("hd95_mm", "-1", "hd95_mm -1 is outside [0, inf]"),
    ("dice", "abc", "dice 'abc' is not a number"),
    ("budget", "x/y", "budget 'x/y' is not N, N/k or empty"),
    ("case", "", "empty 'case'"),
])
def test_other_bad_cells_are_named(grid, tmp_path, cli_runner, cli_app, column, value, problem):
    lines = _lines(grid)
    header = lines[0].strip().split(",")
    cells = lines[3].rstrip("\n").split(",")
    cells[header.index(column)] = value
    lines[3] = ",".join(cells) + "\n"
    grid.write_text("".join(lines))
    error = _report(cli_runner, cli_app, grid.parent, "--out", tmp_path / "r")
    assert error.startswith(f"Error: {grid}:4: {problem}")


def test_a_duplicate_row_is_refused(grid, tmp_path, cli_runner, cli_app):
    lines = _lines(grid)
    grid.write_text("".join(lines + [lines[7]]))
    error = _report(cli_runner, cli_app, grid.parent, "--out", tmp_path / "r")
    assert f"{grid}:{len(lines) + 1}:" in error and "repeats line 8 (a duplicate row)" in error


def test_nan_scores_and_an_intact_table_still_report(grid, tmp_path, cli_runner, cli_app):
    lines = _lines(grid)
    header = lines[0].strip().split(",")
    cells = lines[3].rstrip("\n").split(",")
    cells[header.index("hd95_mm")] = "nan"
    cells[header.index("dice")] = ""
    lines[3] = ",".join(cells) + "\n"
    grid.write_text("".join(lines))
    result = cli_runner.invoke(cli_app, ["report", str(grid.parent), "--out", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output


def _scores(domain, values):
    return [{"id": f"{domain}{i}", "domain": domain, "dice": v, "surface_dice_1mm": v} for i, v in enumerate(values)]


@pytest.fixture
def runs(tmp_path):
    """A source model on A, its prediction on B, an oracle on B and an adapted run A -> B (specs as stages write)."""
    spec = {"arch": "dart20", "layers": "", "budget": "", "seed": 0, "fold": None}
    write_json_atomic(tmp_path / "train_A" / "summary.json",
                      {"spec": {**spec, "kind": "train", "source": "A", "target": None, "strategy": "all"},
                       "kind": "train", "scores": _scores("A", [0.9])})
    write_json_atomic(tmp_path / "pred_A_on_B" / "summary.json",
                      {"spec": {**spec, "kind": "predict", "source": "A", "target": None, "strategy": "all"},
                       "kind": "predict", "model": str(tmp_path / "train_A"), "scores": _scores("B", [.5, .6])})
    write_json_atomic(tmp_path / "oracle_B" / "summary.json",
                      {"spec": {**spec, "kind": "train", "source": "B", "target": None, "strategy": "all"},
                       "kind": "train", "scores": _scores("B", [.9, .8])})
    write_json_atomic(tmp_path / "first" / "summary.json",
                      {"spec": {**spec, "kind": "adapt", "source": "A", "target": "B", "strategy": "freeze",
                                "layers": "first", "budget": "1"},
                       "kind": "adapt", "scores": _scores("B", [.7, .7])})
    write_json_atomic(tmp_path / "pred_first" / "summary.json",
                      {"spec": {**spec, "kind": "predict", "source": "A", "target": "B", "strategy": "freeze",
                                "layers": "first"},
                       "kind": "predict", "model": str(tmp_path / "first"), "scores": _scores("B", [.7, .7])})
    return tmp_path


def test_an_adapt_run_is_not_a_baseline(runs, cli_runner, cli_app):
    error = _report(cli_runner, cli_app, runs / "first", "--baseline", runs / "first", "--oracle", runs / "oracle_B",
                    "--out", runs / "r")
    assert error.startswith(f"Error: {runs / 'first'}: --baseline needs an unadapted source model")
    assert error.endswith("but this is an adapt run (strategy freeze, layers first, budget 1)")
    error = _report(cli_runner, cli_app, runs / "first", "--baseline", runs / "pred_first", "--oracle",
                    runs / "oracle_B", "--out", runs / "r")
    assert f"but this is a predict run of {runs / 'first'}, which is an adapt run" in error


def test_an_adapt_run_or_a_transfer_is_not_an_oracle(runs, cli_runner, cli_app):
    error = _report(cli_runner, cli_app, runs / "first", "--baseline", runs / "pred_A_on_B", "--oracle",
                    runs / "first", "--out", runs / "r")
    assert error.startswith(f"Error: {runs / 'first'}: --oracle needs a model trained on the target itself")
    assert "but this is an adapt run (strategy freeze" in error
    error = _report(cli_runner, cli_app, runs / "first", "--baseline", runs / "pred_A_on_B", "--oracle",
                    runs / "pred_A_on_B", "--out", runs / "r")
    assert "trained on A is scored on B (a baseline?)" in error


def test_the_right_kinds_are_accepted(runs, cli_runner, cli_app):
    result = cli_runner.invoke(cli_app, ["report", str(runs / "first"), "--baseline", str(runs / "pred_A_on_B"),
                                         "--oracle", str(runs / "oracle_B"), "--out", str(runs / "r")])
    assert result.exit_code == 0, result.output
