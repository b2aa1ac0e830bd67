"""A synthetic results.csv for the report tests (seeded), and checks that it has the shape the issue asks for.

3 domains, 6 ordered pairs, 3 fixed-layer strategies (first, last, all), 3 budgets, 2 seeds, baseline rows per
pair (all target cases) and oracle rows per domain (3-fold CV). Each run's score is
D = D_B + D_R_true(method, budget) * (D_O - D_B) + noise, so the true D_R of every method is known.
"""
import numpy as np

from fewshot_da.experiments.results import write_results

DOMAINS = ("ge15", "philips3", "siemens15")
BUDGETS = ("1/4", "1", "3")
TRUE_GAP = {"first": (0.55, 0.6, 0.65), "last": (0.3, 0.32, 0.35), "all": (0.1, 0.5, 0.9)}
N_CASES = 6


def synthetic_rows(seed: int = 0, strategies=TRUE_GAP, noise: float = 0.01, spottune: bool = False,
                   adabn: bool = False) -> list:
    """Results rows (dicts with the results.csv columns) of the synthetic study; `spottune` adds a SpotTUnet
    strategy (true D_R 0.05 above 'first'), `adabn` a label-free one (budget '', true D_R 0.2)."""
    rng = np.random.default_rng(seed)
    cases = {d: [f"{d}_{i:02d}" for i in range(N_CASES)] for d in DOMAINS}
    oracle = {c: 0.86 + 0.03 * rng.standard_normal() for d in DOMAINS for c in cases[d]}
    rows = []

    def row(run, source, target, strategy, layers, budget, seed_, fold, case, sdsc):
        return {"run": run, "arch": "dart20", "source": source, "target": target, "strategy": strategy,
                "layers": layers, "budget": budget, "seed": str(seed_), "fold": str(fold), "case": case,
                "dice": min(1.0, sdsc + 0.08), "surface_dice_1mm": sdsc, "surface_dice_2mm": min(1.0, sdsc + 0.05),
                "hd95_mm": 10 * (1 - sdsc), "assd_mm": 3 * (1 - sdsc)}

    for target in DOMAINS:
        for i, case in enumerate(cases[target]):
            rows.append(row(f"oracle-{target}-f{i % 3}", target, target, "oracle", "", "", 0, i % 3, case,
                            oracle[case]))
    baseline = {}
    for source in DOMAINS:
        for target in DOMAINS:
            if source == target:
                continue
            shift = rng.uniform(0.2, 0.6)
            for case in cases[target]:
                baseline[source, target, case] = oracle[case] - shift + 0.03 * rng.standard_normal()
                rows.append(row(f"base-{source}-{target}", source, target, "baseline", "", "", 0, "", case,
                                baseline[source, target, case]))
            methods = dict(strategies)
            if spottune:
                methods["spottune"] = tuple(g + 0.05 for g in TRUE_GAP["first"])
            for method, gaps in methods.items():
                for b, budget in enumerate(BUDGETS):
                    n_tune = 3 if budget == "3" else 1
                    for seed_ in (0, 1):
                        run = f"{method}-{source}-{target}-{budget.replace('/', '_')}-s{seed_}"
                        strategy, layers = ("spottune", "") if method == "spottune" else ("freeze", method)
                        for case in cases[target][n_tune:]:
                            d_b, d_o = baseline[source, target, case], oracle[case]
                            score = d_b + gaps[b] * (d_o - d_b) + noise * rng.standard_normal()
                            rows.append(row(run, source, target, strategy, layers, budget, seed_, "", case, score))
            if adabn:
                for case in cases[target]:
                    d_b, d_o = baseline[source, target, case], oracle[case]
                    rows.append(row(f"adabn-{source}-{target}", source, target, "adabn", "", "", 0, "", case,
                                    d_b + 0.2 * (d_o - d_b) + noise * rng.standard_normal()))
    return rows


def write_synthetic(folder, **kwargs):
    """results.csv of the synthetic study in `folder`; returns its path."""
    return write_results(folder / "results.csv", synthetic_rows(**kwargs))


def test_synthetic_study_has_the_issue_shape():
    rows = synthetic_rows()
    adapted = [r for r in rows if r["strategy"] == "freeze"]
    assert {(r["source"], r["target"]) for r in adapted} == {(s, t) for s in DOMAINS for t in DOMAINS if s != t}
    assert {r["layers"] for r in adapted} == {"first", "last", "all"}
    assert {r["budget"] for r in adapted} == set(BUDGETS) and {r["seed"] for r in adapted} == {"0", "1"}
    assert len({r["run"] for r in adapted}) == 6 * 3 * 3 * 2
    assert {r["case"] for r in rows if r["strategy"] == "oracle"} == {r["case"] for r in rows}
    assert all(r["source"] == r["target"] for r in rows if r["strategy"] == "oracle")
