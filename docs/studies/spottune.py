"""SpotTUnet against fixed layer groups, with its policy map (issue 8), on three data sets, CPU-sized.

    python docs/studies/spottune.py phantoms --out studies/spot-phantoms
    python docs/studies/spottune.py ixi --source studies/ixi/runs/src-plain --out studies/spot-ixi
    python docs/studies/spottune.py ultrasound --source studies/us64/runs/dart20/source --out studies/spot-us

Every run is `fewshot_da.experiments.stages.adapt` (as `fewshot-da adapt`); study.md holds the scores (mean and
95% t-interval over seeds) and policy_map.png / policy_map.csv the fraction of test slices that used each unit's
fine-tuned copy, per setting (the paper's figure, magma).
"""
from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np

FIXED = ("first", "last", "all")


def _phantom_source(out: Path, seed: int):
    from fewshot_da.data.datasets import index_cc359
    from fewshot_da.data.manifest import write_manifest
    from fewshot_da.data.phantoms import write_phantom_dataset
    from fewshot_da.data.splits import write_splits
    from fewshot_da.experiments import stages

    write_phantom_dataset(out / "data", domains=("siemens3", "ge15"), scans_per_domain=12, shape=(48, 48, 40),
                          seed=seed)
    records = index_cc359(out / "data")
    manifest = write_manifest(records, out / "manifest.csv")
    write_splits(records, out / "splits.json")
    stages.train(manifest=manifest, splits=out / "splits.json", source="siemens3", out=out / "source", arch="dsa",
                 overrides=dict(epochs=8, iters_per_epoch=20, batch_size=8, crop=48, lr=1e-2, lr_steps={6: 0.1},
                                seed=seed), progress=False)
    return out / "source"


STUDIES = {
    # name: (target, settings [(label, scans, slices)], fine-tune schedule)
    "phantoms": ("ge15", [("1/8", 1, "1/8")],
                 dict(epochs=8, iters_per_epoch=10, batch_size=8, crop=48, lr=1e-3, lr_steps={6: 0.1})),
    "ixi": ("ixi-shift", [("1 scan", 1, None), ("1/12", 1, "1/12")],
            dict(epochs=4, iters_per_epoch=25, batch_size=8, crop=128, lr=1e-3, lr_steps={2: 0.1})),
    "ultrasound": ("bus-bra", [("5 images", 5, None)],
                   dict(epochs=8, iters_per_epoch=8, batch_size=8, crop=64, lr=1e-2, lr_steps={5: 0.1},
                        loss="bce+dice")),
}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", choices=sorted(STUDIES))
    parser.add_argument("--source", type=Path, help="Source run folder (ixi, ultrasound).")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)

    import torch

    from fewshot_da.experiments import stages

    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    source = _phantom_source(args.out, 0) if args.study == "phantoms" else args.source
    target, settings, schedule = STUDIES[args.study]
    scores, policy = {}, {}
    for label, scans, slices in settings:
        for method in (*FIXED, "spottune"):
            for seed in args.seeds:
                strategy, options = ("spottune", {}) if method == "spottune" else ("freeze", {"layers": method})
                out = args.out / "runs" / f"{method}-{label.replace('/', '_').replace(' ', '')}-s{seed}"
                summary = stages.adapt(model=source, target=target, out=out, strategy=strategy,
                                       strategy_options=options, scans=scans, slices=slices,
                                       overrides=dict(schedule, seed=seed), progress=False)
                scores.setdefault((method, label), []).append(summary["mean"])
                if method == "spottune":
                    with open(out / "policy_test.csv", newline="") as f:
                        for row in csv.DictReader(f):
                            policy.setdefault((row["unit"], label), []).append(float(row["fraction_finetuned"]))
                print(f"{method} {label} seed {seed}: {summary['mean']}", flush=True)
    write_outputs(args.out, scores, policy, [s[0] for s in settings], source, target, args.seeds)


def write_outputs(out: Path, scores, policy, labels, source, target, seeds) -> None:
    from fewshot_da.atomic import write_csv_atomic
    from fewshot_da.figures import heatmap
    from fewshot_da.reports.stats import t_interval

    key = "surface_dice_1mm"
    lines = [f"source {source}, target {target}, seeds {seeds}", "",
             "| method | budget | sDSC@1mm | Dice | n |", "|---|---|---|---|---|"]
    for (method, label), means in scores.items():
        values = [m[key] for m in means]
        ci = t_interval(values)
        dice = np.mean([m["dice"] for m in means])
        lines.append(f"| {method} | {label} | {np.mean(values):.3f} [{ci.low:.3f}, {ci.high:.3f}] | {dice:.3f} "
                     f"| {len(values)} |")
    units = list(dict.fromkeys(u for u, _ in policy))
    matrix = [[float(np.mean(policy[(u, b)])) for b in labels] for u in units]
    write_csv_atomic(out / "policy_map.csv", [{"unit": u, **{b: matrix[i][j] for j, b in enumerate(labels)}}
                                              for i, u in enumerate(units)])
    heatmap(matrix, units, labels, out / "policy_map.png", cmap="magma", vmin=0, vmax=1,
            title="fraction of test slices using the fine-tuned unit", colorbar_label="fine-tuned fraction")
    top = sorted(((np.mean(policy[(u, labels[0])]), u) for u in units), reverse=True)[:6]
    lines += ["", f"most fine-tuned units at {labels[0]}: " + ", ".join(f"{u} {v:.2f}" for v, u in top)]
    (out / "study.md").write_text("\n".join(lines) + "\n")
    (out / "study.json").write_text(json.dumps({f"{m}|{b}": v for (m, b), v in scores.items()}, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
