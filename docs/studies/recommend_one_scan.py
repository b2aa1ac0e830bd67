"""One labelled scan: does recommend pick the measured winner more often with interleaved or slab halves? (issue 21)

    python docs/studies/recommend_one_scan.py --out studies/rec-one-scan [--budgets 1,1/2,1/4] [--seeds 0,1] \
        [--epochs 1 --iters-per-epoch 6]

CPU-sized, on generated phantoms shaped like the `phantoms` grid (siemens3, ge15, philips15; 6 scans of
32x32x12 each; its source schedule, and its fine-tune schedule unless --epochs/--iters-per-epoch say
otherwise). For every source -> target pair, a source model is trained on
the 6 source scans; the first target scan is the user's labelled scan (all slices, or the 1/k comb of a budget)
and the other 5 are the test scans. The measured winner is the candidate whose fine-tune on the whole labelled
scan scores best on the test scans (mean over --seeds). recommend then validates the same candidates on the
labelled scan alone, once with `--one-scan-folds slab` and once with `interleave`, seed 0, and each pick is
compared with the winner on the same decision.

Outputs in --out: decisions.csv (one row per pair x budget x protocol) and one_scan.md (the summary table).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

DOMAINS = ("siemens3", "ge15", "philips15")
SHAPE = (32, 32, 12)
SOURCE = {"epochs": 2, "iters_per_epoch": 15, "batch_size": 8, "crop": 32, "lr": 0.01, "lr_steps": {0: 0.1}}
FINETUNE = {"epochs": 1, "iters_per_epoch": 6, "batch_size": 4, "crop": 32, "lr": 0.01, "lr_steps": {}}
CANDIDATES = ("none", "first", "last", "all")
METRIC = "surface_dice_1mm"


def make_data(root: Path) -> dict:
    """Phantoms and one trained source model per domain: {domain: (source run folder, [records])}."""
    from fewshot_da.data.datasets import index_cc359
    from fewshot_da.data.manifest import write_manifest
    from fewshot_da.data.phantoms import write_phantom_dataset
    from fewshot_da.data.splits import write_splits
    from fewshot_da.experiments import stages

    if not (root / "manifest.csv").is_file():
        write_phantom_dataset(root / "data", domains=DOMAINS, scans_per_domain=6, shape=SHAPE)
        records = index_cc359(root / "data")
        write_manifest(records, root / "manifest.csv")
        write_splits(records, root / "splits.json")
    records = index_cc359(root / "data")
    out = {}
    for domain in DOMAINS:
        mine = [r for r in records if r.domain == domain]
        stages.train(manifest=root / "manifest.csv", splits=root / "splits.json", ids=[r.id for r in mine],
                     eval_ids=[], out=root / "sources" / domain, progress=False, overrides=dict(SOURCE))
        out[domain] = (root / "sources" / domain, mine)
    return out


def measured_scores(source_dir: Path, manifest: Path, records: list, k: int, seeds, out: Path,
                    finetune: dict) -> dict:
    """{candidate: mean test score over seeds} of fine-tuning on the labelled comb of records[0], scored on the
    other records' whole volumes (the same fine-tune and scoring code recommend uses)."""
    from fewshot_da.data.preprocess import preprocess_options
    from fewshot_da.experiments.stages import _train_config, finished_parent, open_volumes
    from fewshot_da.recommend.folds import Fold, Part, labelled_parts
    from fewshot_da.recommend.run import _Context, _validate, quick_overrides

    parent, parent_cfg = finished_parent(source_dir)
    knobs = quick_overrides(dict(finetune))
    knobs.setdefault("base_filters", parent_cfg.get("base_filters", 0))
    cfg = _train_config(parent_cfg.get("preset", "paper"), "finetune", parent["arch"], None, knobs)
    options = preprocess_options(parent["preprocess"])
    ids = [r.id for r in records]
    cache = manifest.resolve().parent / "cache"
    volumes = open_volumes(manifest, ids, cache=cache, preprocess=options, progress=False)
    labelled = labelled_parts([volumes[0].n_slices], k)[0]
    fold = Fold("test", (labelled,), tuple(Part(i, tuple(range(v.n_slices))) for i, v in enumerate(volumes) if i))
    ctx = _Context(source_dir, parent["arch"], manifest, ids, volumes, options, cache, cfg, k,
                   (1.0,), METRIC, 1, out)
    return {c: float(np.mean([_validate(ctx, c, fold, s)["score"] for s in seeds])) for c in CANDIDATES}


def main(argv=None):
    from fewshot_da.atomic import write_csv_atomic
    from fewshot_da.data.manifest import write_manifest
    from fewshot_da.recommend.run import recommend

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--budgets", default="1,1/2,1/4")
    parser.add_argument("--seeds", default="0,1", help="Seeds of the measured (test-set) fine-tunes.")
    parser.add_argument("--epochs", type=int, default=FINETUNE["epochs"], help="Fine-tune epochs.")
    parser.add_argument("--iters-per-epoch", type=int, default=FINETUNE["iters_per_epoch"])
    args = parser.parse_args(argv)
    finetune = {**FINETUNE, "epochs": args.epochs, "iters_per_epoch": args.iters_per_epoch}
    import torch

    torch.set_num_threads(1)
    seeds = [int(s) for s in args.seeds.split(",")]
    sources = make_data(args.out)
    rows = []
    for source in DOMAINS:
        for target in DOMAINS:
            if source == target:
                continue
            records = sources[target][1]
            pair = args.out / "pairs" / f"{source}-{target}"
            pair.mkdir(parents=True, exist_ok=True)
            write_manifest(records, pair / "target.csv")
            write_manifest(records[:1], pair / "labelled.csv")
            for budget in args.budgets.split(","):
                k = 1 if budget == "1" else int(budget.split("/")[1])
                tag = budget.replace("/", "_")
                test = measured_scores(sources[source][0], pair / "target.csv", records, k, seeds,
                                       pair / f"measured-{tag}", finetune)
                winner = max(test, key=test.get)
                for protocol in ("slab", "interleave"):
                    result = recommend(model=sources[source][0], manifest=pair / "labelled.csv",
                                       out=pair / f"rec-{tag}-{protocol}", slices=None if k == 1 else budget,
                                       strategies=list(CANDIDATES), overrides=dict(finetune), metric=METRIC,
                                       one_scan_folds=protocol, shift=False, curve=False, progress=False,
                                       log=lambda line: None, num_threads=1)
                    chosen = result["recommendation"]["strategy"]
                    rows.append({"source": source, "target": target, "budget": budget, "protocol": protocol,
                                 "recommended": chosen, "confidence": result["recommendation"]["confidence"],
                                 "winner": winner, "agree": int(chosen == winner),
                                 "score_lost": test[winner] - test[chosen],
                                 **{f"test_{c}": v for c, v in test.items()},
                                 **{f"val_{r['candidate']}": r["mean"] for r in result["ranking"]}})
                    print(f"{source}->{target} {budget} {protocol}: {chosen} (winner {winner}, lost "
                          f"{rows[-1]['score_lost']:.4f})", flush=True)
    write_csv_atomic(args.out / "decisions.csv", rows)
    lines = ["| protocol | budget | decisions | agreement | mean score lost | max lost | picked `none` |",
             "|---|---|---|---|---|---|---|"]
    for protocol in ("slab", "interleave"):
        for budget in [*args.budgets.split(","), "all"]:
            ds = [r for r in rows if r["protocol"] == protocol and budget in (r["budget"], "all")]
            lines.append(f"| {protocol} | {budget} | {len(ds)} | {np.mean([d['agree'] for d in ds]):.2f} "
                         f"({sum(d['agree'] for d in ds)}/{len(ds)}) | {np.mean([d['score_lost'] for d in ds]):.4f} "
                         f"| {max(d['score_lost'] for d in ds):.4f} | {sum(d['recommended'] == 'none' for d in ds)} |")
    winners = [r["winner"] for r in rows if r["protocol"] == "slab"]
    lines.append("\nMeasured winners: " + ", ".join(f"{c} {winners.count(c)}" for c in CANDIDATES))
    (args.out / "one_scan.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
