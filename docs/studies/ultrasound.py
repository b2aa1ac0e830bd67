"""The ultrasound study (Amiri et al. 2019, REFERENCE.md section 7) on real cross-site data, CPU-sized.

Source BUSI (GE LOGIQ E9, Cairo), target BUS-BRA (Brazil). Every run goes through `fewshot_da.experiments.stages`
(the same code as `fewshot-da train/adapt`) in one process; results.csv is collected from the run folders and the
table (mean and 95% t-interval over replicates: seeds, or CV folds) is written as Markdown.

    python docs/studies/ultrasound.py --data-dir ../shared/data --out studies/us [--quick]

The schedules are sized for 2 CPU cores and say so in the table; rerunning skips finished runs.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

CROP = 64  # images resized to 64 x 64 for 2 CPU cores (the paper: 256 x 256)
SOURCE = dict(epochs=24, iters_per_epoch=25, batch_size=16, lr=1e-2, lr_steps={18: 0.1}, crop=CROP,
              loss="bce+dice")
FINETUNE = dict(epochs=8, iters_per_epoch=8, batch_size=8, lr=1e-2, lr_steps={5: 0.1}, crop=CROP, loss="bce+dice")
ARCHS = {"classic": 16, "dart20": 0}  # base filters (classic narrowed to 16 for the CPU; dart20 as published)


def strategies(arch: str) -> list:
    """(label, strategy, options) compared for `arch`."""
    fixed = [(g, "freeze", {"layers": g}) for g in ("contracting", "expanding", "first", "last", "all")]
    if arch != "classic":
        return fixed
    gradual = [(f"gradual-{o}-K{k}", "gradual", {"order": o, "blocks_trained": k})
               for o in ("shallow-deep", "deep-shallow") for k in (1, 3, 5, 7)]
    return fixed + gradual


def label_free(arch: str) -> list:
    return [("none", "none", {}), ("histogram", "histogram", {})] + ([("adabn", "adabn", {})] if arch != "classic"
                                                                    else [])


def prepare(data_dir: Path, out: Path):
    from fewshot_da.data.datasets import index_images2d
    from fewshot_da.data.manifest import write_manifest
    from fewshot_da.data.splits import write_splits

    records = index_images2d(data_dir / "busi", domain="busi") + index_images2d(data_dir / "bus-bra-mini",
                                                                               domain="bus-bra")
    manifest = write_manifest(records, out / "us.csv")
    write_splits(records, out / "splits.json", cv_folds=5)
    return manifest, out / "splits.json"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=Path(__file__).resolve().parents[3] / "shared" / "data")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--budgets", type=int, nargs="+", default=[1, 3, 5, 10])
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--archs", nargs="+", default=list(ARCHS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cache", type=Path, default=None, help="Preprocessing cache (default OUT/cache).")
    parser.add_argument("--quick", action="store_true", help="Tiny schedules (a smoke run; numbers mean nothing).")
    args = parser.parse_args(argv)
    source_schedule, finetune_schedule = dict(SOURCE), dict(FINETUNE)
    if args.quick:
        source_schedule.update(epochs=1, iters_per_epoch=2, lr_steps={})
        finetune_schedule.update(epochs=1, iters_per_epoch=1, lr_steps={})

    import torch

    from fewshot_da.data.preprocess import preprocess_options
    from fewshot_da.experiments import stages

    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    manifest, splits = prepare(args.data_dir, args.out)
    prep = preprocess_options("paper", resize=CROP)
    t0 = time.perf_counter()
    run_dirs = []
    for arch in args.archs:
        width = ARCHS[arch]
        source = args.out / "runs" / arch / "source"
        stages.train(manifest=manifest, splits=splits, source="busi", out=source, arch=arch, preprocess=prep,
                     cache=args.cache or args.out / "cache", overrides=dict(source_schedule, base_filters=width),
                     progress=False)
        # replicates: (budget label, scans, seed, folds, fold)
        settings = [(f"{n} images", n, s, None, None) for n in args.budgets for s in args.seeds]
        settings += [(f"CV {args.folds}-fold", None, 0, args.folds, f) for f in range(args.folds)]
        for budget, scans, seed, folds, fold in settings:  # every strategy of a setting, then the next setting
            for label, strategy, options in strategies(arch) + label_free(arch):
                if strategy in ("none", "histogram", "adabn") and seed != args.seeds[0]:
                    continue  # label-free runs do not depend on the fine-tuning seed
                name = f"{label}/{budget.replace(' ', '')}{'' if fold is None else f'-f{fold}'}/s{seed}"
                out = args.out / "runs" / arch / name
                stages.adapt(model=source, target="bus-bra", out=out, strategy=strategy,
                             strategy_options=options, scans=scans, folds=folds, fold=fold,
                             overrides=dict(finetune_schedule, seed=seed), progress=False)
                run_dirs.append((arch, label, budget, out))
                print(f"[{time.perf_counter() - t0:7.0f} s] {arch} {name}", flush=True)
            write_table(run_dirs, args.out)
    write_table(run_dirs, args.out)


def write_table(run_dirs, out: Path) -> None:
    """results.csv (one row per run x test image) and study.md: per arch, strategy and budget, the mean over
    replicates of the per-run means of Dice, pixel error (%) and ARI, with a 95% t-interval over replicates."""
    import json

    from fewshot_da.experiments.results import rows_from_summary, write_results
    from fewshot_da.reports.stats import t_interval

    rows, cells = [], {}
    for arch, label, budget, run_dir in run_dirs:
        summary = json.loads((run_dir / "summary.json").read_text())
        rows += rows_from_summary(summary, str(run_dir.relative_to(out)))
        means = summary["mean"]
        cells.setdefault((arch, label, budget), []).append(
            (means["dice"], means.get("pixel_error_pct", np.nan), means.get("ari", np.nan)))
    write_results(out / "results.csv", rows)
    lines = ["| arch | strategy | budget | n | Dice | pixel error (%) | ARI |", "|---|---|---|---|---|---|---|"]
    for (arch, label, budget), values in cells.items():
        values = np.asarray(values, dtype=float)
        parts = []
        for j in range(3):
            ci = t_interval(values[:, j])
            parts.append(f"{np.mean(values[:, j]):.3f} [{ci.low:.3f}, {ci.high:.3f}]" if len(values) > 1
                         else f"{np.mean(values[:, j]):.3f}")
        lines.append(f"| {arch} | {label} | {budget} | {len(values)} | " + " | ".join(parts) + " |")
    (out / "study.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
