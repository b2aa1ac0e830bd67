"""Does `recommend` pick the strategy a grid measures as best? (issue 13), CPU-sized.

    python docs/studies/recommend_validation.py GRID_DIR [GRID_DIR ...] --out studies/rec-validation \
        [--shift-map] [--spottune-studies studies/spot-phantoms ...]

Each GRID_DIR is a finished `fewshot-da experiment` folder (or a study folder with results.csv whose `run`
column names run folders). For every pair and budget with adapted runs, recommend is given exactly the labelled
data of that budget (the fine-tune scans of the seed-0 run, the same 1/k slices), the grid's own candidates and
fine-tune schedule; its choice is compared with the measured winner (the highest mean test score over seeds).
Its learning curve's forecasts are compared with the measured test scores at that budget and at the larger
budgets of the same pair. With --shift-map, the label-free shift map (features method: each decision unit
scores the shift of its own conv inputs; SpotTUnet's decision units) is rank-correlated with the SpotTUnet policy fractions of the grid and with the first-vs-last gains.

Outputs in --out: decisions.csv (one row per pair x budget), forecasts.csv, correlations.csv, validation.md.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
from collections import defaultdict
from pathlib import Path

import numpy as np
import yaml


def _read(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _run_dir(base: Path, run: str) -> Path:
    return base / run if (base / run / "run.yaml").is_file() else base / "runs" / run


def _method(row) -> str:
    return row["layers"] if row["strategy"] == "freeze" else row["strategy"]


def measured(base: Path, metric: str, methods=None) -> dict:
    """{(source, target, budget): {method: (mean over seeds of the per-run case mean, [run folders])}}."""
    per_run = defaultdict(list)
    keys = {}
    for row in _read(base / "results.csv"):
        if not row["budget"] or row["strategy"] in ("baseline", "oracle", "none", "adabn", "histogram"):
            continue
        if row.get("empty_gt") == "1" or row["source"] == row["target"]:
            continue
        if methods and _method(row) not in methods:
            continue
        value = float(row[metric])
        if math.isfinite(value):
            per_run[row["run"]].append(value)
            keys[row["run"]] = ((row["source"], row["target"], row["budget"]), _method(row))
    out = defaultdict(lambda: defaultdict(list))
    for run, values in per_run.items():
        key, method = keys[run]
        out[key][method].append((float(np.mean(values)), run))
    return {key: {m: (float(np.mean([v for v, _ in runs])), [r for _, r in runs]) for m, runs in by.items()}
            for key, by in out.items()}


def baselines(base: Path, metric: str) -> dict:
    """{(source, target): mean test score of the unadapted source model}."""
    values = defaultdict(list)
    for row in _read(base / "results.csv"):
        if row["strategy"] in ("baseline", "none") and row["source"] != row["target"] and row.get("empty_gt") != "1":
            v = float(row[metric])
            if math.isfinite(v):
                values[(row["source"], row["target"])].append(v)
    return {k: float(np.mean(v)) for k, v in values.items()}


def labelled_data(base: Path, run: str, out: Path):
    """(source run folder, target manifest of the run's fine-tune scans, slice interval k, schedule overrides)."""
    from fewshot_da.data.manifest import read_manifest, write_manifest

    folder = _run_dir(base, run)
    spec = yaml.safe_load((folder / "run.yaml").read_text())["spec"]
    summary = json.loads((folder / "summary.json").read_text())
    records = {r.id: r for r in read_manifest(spec["manifest"])}
    out.mkdir(parents=True, exist_ok=True)
    write_manifest([records[i] for i in summary["finetune_ids"]], out / "target.csv")
    config = yaml.safe_load((folder / "config.yaml").read_text())
    schedule = {k: config[k] for k in ("epochs", "iters_per_epoch", "batch_size", "crop", "lr", "lr_steps", "loss",
                                       "preset") if k in config}
    return Path(spec["parent"]), out / "target.csv", int(spec.get("slices_k") or 1), schedule


def validate_grid(base: Path, out: Path, metric: str, seeds, methods=None, budgets=None) -> tuple:
    from fewshot_da.experiments.results import budget_scans
    from fewshot_da.recommend.run import recommend

    table = measured(base, metric, methods)
    decisions, forecasts = [], []
    for (source, target, budget), by_method in sorted(table.items()):
        if budgets and budget not in budgets:
            continue
        winner = max(by_method, key=lambda m: by_method[m][0])
        seed0 = sorted(by_method[winner][1])[0]
        parent, manifest, k, schedule = labelled_data(base, seed0, out / "data" / f"{source}-{target}-{budget.replace('/', '_')}")
        preset = schedule.pop("preset", None)
        folder = out / "recommend" / base.name / f"{source}-{target}" / budget.replace("/", "_")
        result = recommend(model=parent, manifest=manifest, out=folder, slices=f"1/{k}" if k > 1 else None,
                           strategies=list(by_method), seeds=seeds, metric=metric, overrides=schedule,
                           preset=preset, shift=False, progress=False, log=lambda line: None,
                           tolerances_mm=(1.0, 2.0) if metric.endswith("2mm") else (1.0,))
        chosen = result["recommendation"]["strategy"]
        decisions.append({"grid": base.name, "source": source, "target": target, "budget": budget,
                          "recommended": chosen, "confidence": result["recommendation"]["confidence"],
                          "p_best": result["recommendation"]["p_best"], "winner": winner,
                          "agree": int(chosen == winner), "winner_score": by_method[winner][0],
                          "chosen_score": by_method[chosen][0],
                          "score_lost": by_method[winner][0] - by_method[chosen][0],
                          "validation_top": result["ranking"][0]["mean"],
                          **{f"measured_{m}": v for m, (v, _) in by_method.items()}})
        lc = result["learning_curve"]
        if lc:
            from fewshot_da.recommend.learning_curve import Curve

            curve = Curve(lc["curve"]["kind"], lc["curve"]["a"], lc["curve"]["b"], lc["curve"]["c"])
            full_scan = lc["full_scan_slices"]
            for (s2, t2, b2), other in table.items():
                if (s2, t2) != (source, target) or lc["strategy"] not in other:
                    continue
                if budget_scans(b2) < budget_scans(budget):
                    continue
                x = budget_scans(b2) * full_scan
                forecasts.append({"grid": base.name, "source": source, "target": target, "from_budget": budget,
                                  "to_budget": b2, "strategy": lc["strategy"], "labelled_slices": x,
                                  "forecast": float(curve(x)), "measured": other[lc["strategy"]][0],
                                  "error": float(curve(x)) - other[lc["strategy"]][0],
                                  "extrapolated": int(b2 != budget)})
        print(f"{base.name} {source}->{target} {budget}: recommend {chosen} ({result['recommendation']['confidence']}), "
              f"winner {winner}, lost {decisions[-1]['score_lost']:.4f}", flush=True)
    return decisions, forecasts


def _spearman(x, y) -> tuple:
    from scipy import stats

    x, y = np.asarray(x, float), np.asarray(y, float)
    keep = np.isfinite(x) & np.isfinite(y)
    if keep.sum() < 3:
        return float("nan"), float("nan"), int(keep.sum())
    r = stats.spearmanr(x[keep], y[keep])
    return float(r.statistic), float(r.pvalue), int(keep.sum())


FORWARD = "source"  # the shift map's forward (--forward)


def _unit_shift(parent: Path, manifest, target: str, arch: str, out: Path) -> tuple:
    """(decision unit names, {unit: shift score}) of the features shift map of `target` under `parent`."""
    from fewshot_da.diagnostics.shift_map import shift_map
    from fewshot_da.models import build_model
    from fewshot_da.models.spottune import decision_units

    units = decision_units(build_model(arch), arch)
    summary = shift_map(model=parent, manifest=manifest, out=out, domains=[target],
                        units=[(u.name, list(u.modules)) for u in units], method="features", forward=FORWARD,
                        progress=False)
    return [u.name for u in units], summary["scores"][target]


def _policy_fractions(files) -> dict:
    fractions = defaultdict(list)
    for path in files:
        for r in _read(path):
            fractions[r["unit"]].append(float(r["fraction_finetuned"]))
    return {u: float(np.mean(v)) for u, v in fractions.items()}


def spottune_study_correlation(study: Path, out: Path) -> list:
    """Shift map vs the policy fractions of a `docs/studies/spottune.py` folder (runs/spottune-<budget>-s<seed>)."""
    rows = []
    by_budget = defaultdict(list)
    for folder in sorted((study / "runs").glob("spottune-*")):
        by_budget[folder.name.rsplit("-s", 1)[0]].append(folder)
    for label, folders in sorted(by_budget.items()):
        spec = yaml.safe_load((folders[0] / "run.yaml").read_text())["spec"]
        names, shift = _unit_shift(Path(spec["parent"]), spec["manifest"], spec["target"], spec["arch"],
                                   out / "shift_map" / study.name)
        policy = _policy_fractions(f / "policy_test.csv" for f in folders)
        rho, p, n = _spearman([shift[u] for u in names], [policy.get(u, float("nan")) for u in names])
        rows.append({"grid": study.name, "source": spec.get("source") or "", "target": spec["target"],
                     "budget": label.removeprefix("spottune-"), "test": "shift vs SpotTUnet policy (units)",
                     "spearman": rho, "p": p, "n": n})
    return rows


def shift_correlations(base: Path, out: Path, metric: str) -> list:
    """Shift-map unit scores (SpotTUnet's decision units) against SpotTUnet policy fractions, per pair; and per
    pair x budget the first-vs-last gain against (first units' shift - last units' shift)."""
    rows = []
    table = measured(base, metric)
    base_scores = baselines(base, metric)
    sources = {}
    for (source, target, budget), by_method in table.items():
        run = sorted(next(iter(by_method.values()))[1])[0]
        spec = yaml.safe_load((_run_dir(base, run) / "run.yaml").read_text())["spec"]
        sources[(source, target)] = (Path(spec["parent"]), spec["manifest"], spec["arch"])
    shift_by_pair = {}
    for (source, target), (parent, manifest, arch) in sorted(sources.items()):
        shift_by_pair[(source, target)] = _unit_shift(parent, manifest, target, arch,
                                                      out / "shift_map" / base.name / f"{source}-{target}")
    for (source, target, budget), by_method in sorted(table.items()):
        names, shift = shift_by_pair[(source, target)]
        if "spottune" in by_method:
            policy = _policy_fractions(_run_dir(base, run) / "policy_test.csv" for run in by_method["spottune"][1])
            rho, p, n = _spearman([shift[u] for u in names], [policy.get(u, float("nan")) for u in names])
            rows.append({"grid": base.name, "source": source, "target": target, "budget": budget,
                         "test": "shift vs SpotTUnet policy (units)", "spearman": rho, "p": p, "n": n})
    gains, contrasts = [], []
    for (source, target, budget), by_method in sorted(table.items()):
        if {"first", "last"} <= set(by_method) and (source, target) in base_scores:
            names, shift = shift_by_pair[(source, target)]
            quarter = max(1, len(names) // 4)
            contrasts.append(np.nanmean([shift[u] for u in names[:quarter]])
                             - np.nanmean([shift[u] for u in names[-quarter:]]))
            gains.append(by_method["first"][0] - by_method["last"][0])
    rho, p, n = _spearman(contrasts, gains)
    rows.append({"grid": base.name, "source": "all", "target": "all", "budget": "all",
                 "test": "first-quarter minus last-quarter shift vs first-minus-last score", "spearman": rho, "p": p,
                 "n": n})
    return rows


def main(argv=None):
    from fewshot_da.atomic import write_csv_atomic

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("grids", nargs="*", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--metric", default="surface_dice_1mm")
    parser.add_argument("--methods", default=None, help="Comma-separated candidates (default: the grid's).")
    parser.add_argument("--budgets", default=None, help="Comma-separated budgets to validate (default: all).")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--shift-map", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--forward", choices=["source", "adabn"], default="source",
                        help="The shift map's forward: as deployed, or with every BN re-estimated on the target.")
    parser.add_argument("--spottune-studies", type=Path, nargs="*", default=[],
                        help="docs/studies/spottune.py folders: shift map vs their policy fractions.")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    methods = args.methods.split(",") if args.methods else None
    global FORWARD
    FORWARD = args.forward
    decisions, forecasts, correlations = [], [], []
    for grid in args.grids:
        d, f = validate_grid(grid, args.out, args.metric, args.seeds, methods,
                             args.budgets.split(",") if args.budgets else None)
        decisions += d
        forecasts += f
        if args.shift_map:
            correlations += shift_correlations(grid, args.out, args.metric)
    for study in args.spottune_studies:
        correlations += spottune_study_correlation(study, args.out)
    if decisions:
        write_csv_atomic(args.out / "decisions.csv", decisions)
    if forecasts:
        write_csv_atomic(args.out / "forecasts.csv", forecasts)
    if correlations:
        write_csv_atomic(args.out / "correlations.csv", correlations)
    lines = ["| grid | decisions | agreement | mean score lost | max lost | forecast MAE (same budget) | "
             "forecast MAE (larger budgets) |", "|---|---|---|---|---|---|---|"]
    for grid in dict.fromkeys(d["grid"] for d in decisions):
        ds = [d for d in decisions if d["grid"] == grid]
        fs = [f for f in forecasts if f["grid"] == grid]
        same = [abs(f["error"]) for f in fs if not f["extrapolated"]]
        larger = [abs(f["error"]) for f in fs if f["extrapolated"]]
        mae = lambda v: f"{np.mean(v):.3f} (n={len(v)})" if v else "n/a"  # noqa: E731
        lines.append(f"| {grid} | {len(ds)} | {np.mean([d['agree'] for d in ds]):.2f} | "
                     f"{np.mean([d['score_lost'] for d in ds]):.4f} | {max(d['score_lost'] for d in ds):.4f} | "
                     f"{mae(same)} | {mae(larger)} |")
    for c in correlations:
        lines.append(f"\n{c['grid']} {c['source']}->{c['target']} {c['budget']}: {c['test']}: Spearman "
                     f"{c['spearman']:.2f} (p {c['p']:.3f}, n {c['n']})")
    (args.out / "validation.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
