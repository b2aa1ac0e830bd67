"""The line `adapt` prints names the method and the budget in words (issue 23 §5: no 'with none , budget no
labels')."""
from fewshot_da_cli.commands_experiments import describe_adaptation


def test_the_adapt_line_reads_as_a_sentence():
    assert describe_adaptation("none", {}, "") == "no adaptation (the source model as is), no labels"
    assert describe_adaptation("freeze", {"layers": "first"}, "1") == "first layers, 1 labelled scan"
    assert describe_adaptation("freeze", {"layers": "all"}, "3") == "all layers, 3 labelled scans"
    assert describe_adaptation("spottune", {"lam": 0.005, "unit_map": None}, "1/8") == \
        "spottune (lam 0.005), 1/8 of a scan"
    assert " ," not in describe_adaptation("adabn", {"layers": None}, "")
