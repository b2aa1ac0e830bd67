"""The built-in main job on synthetic data: train on one scanner, adapt first/last/all layers to another, score.

Everything is generated (phantom heads in the CC359 layout), so it needs no data and runs on a laptop CPU.
The flow is the real one: manifest -> cached preprocessing -> splits -> `train` -> `adapt` -> predict ->
surface Dice -> gap closed D_R = (D - D_B) / (D_O - D_B).

Demo simplifications (stated in the printed report): one source -> target pair; the oracle D_O is one model
trained from scratch on the target scans outside the demo test set (the papers use 3-fold CV over 60 scans);
every method is scored on the same fixed test scans (the target minus its three fine-tune candidates).
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from .atomic import write_csv_atomic
from .checkpoint import load_pretrained
from .data import splits as splits_mod
from .data.datasets import index_cc359
from .data.manifest import write_manifest
from .data.phantoms import write_phantom_dataset
from .data.volumes import open_volumes
from .experiments import stages
from .experiments.run_folder import read_run
from .experiments.scoring import score_volumes
from .figures import plot_examples
from .models import build_model
from .reports.gap import format_mean_std, pair_gap_closed, scan_gap_closed, sign_test

CC359_HINT = """To run the real study on CC359 (359 T1 scans, 6 scanner domains):
  fewshot-da data index cc359 /path/to/CC359 --out cc359.csv
  fewshot-da data split cc359.csv --out splits.json
  fewshot-da train --data cc359.csv --splits splits.json --source ge15 --arch dart20 --out runs/ge15
  fewshot-da adapt --model runs/ge15 --target siemens3 --layers first --scans 1 --out runs/ge15-s3-first-1
  fewshot-da adapt --model runs/ge15 --target siemens3 --layers first --slices 1/48 --out runs/ge15-s3-first-1_48
  fewshot-da predict --model runs/ge15-s3-first-1 --ids test --out preds/ge15-s3-first-1"""

# Small enough for 2 CPU cores in a few minutes, large enough that the domain gap and its closing show.
LABEL_FREE = ("adabn", "histogram")
DEMO = dict(source="siemens3", target="ge15", scans_per_domain=12, n_test=6, shape=(48, 48, 40),
            source_steps=(8, 20), finetune_steps=(4, 10), batch_size=8, slices_k=8)


def _schedule(epochs_iters, lr, drop_epoch, batch_size, crop, seed):
    epochs, iters = epochs_iters
    # a drop after the last epoch never fires (and is refused): such a schedule has none
    return {"epochs": epochs, "iters_per_epoch": iters, "lr": lr,
            "lr_steps": {drop_epoch: 0.1} if drop_epoch <= epochs - 2 else {},
            "batch_size": batch_size, "crop": crop, "seed": seed, "device": "auto"}


def run_demo(out="fewshot-da-demo", *, arch: str = "dart20", seed: int = 0, quick: bool = False,
             num_threads=None, progress: bool = True, log=print) -> dict:
    """Run the demo into `out` and return {rows, table, elapsed_s}; finished stages are reused on a re-run.

    quick=True shrinks every schedule (for tests): the numbers then show the pipeline, not a result.
    num_threads: CPU threads of every stage (None: torch's default and all cores for the slice loader).
    """
    cfg = dict(DEMO)
    if quick:
        cfg.update(scans_per_domain=6, n_test=2, shape=(48, 48, 16), source_steps=(2, 4), finetune_steps=(1, 3),
                   batch_size=4, slices_k=4)
    t0 = time.perf_counter()
    out = Path(out)
    source, target = cfg["source"], cfg["target"]
    crop = cfg["shape"][0]

    log(f"[1/7] phantoms: {cfg['scans_per_domain']} scans each of {source} (source) and {target} (target) "
        f"{cfg['shape']} voxels")
    records = write_phantom_dataset(out / "data", domains=(source, target), scans_per_domain=cfg["scans_per_domain"],
                                    shape=cfg["shape"], seed=seed)
    records = index_cc359(out / "data")
    manifest = write_manifest(records, out / "manifest.csv")
    log("[2/7] splits (seed 0xBadCafe, as the reference)")
    splits_path = out / "splits.json"
    split = splits_mod.write_splits(records, splits_path)

    finetune_pool = splits_mod.finetune_ids(split, target, 3)
    test_ids = splits_mod.pair_test_ids(split, target, 3)[: cfg["n_test"]]
    oracle_ids = [r.id for r in records if r.domain == target and r.id not in set(test_ids)]

    common = dict(manifest=manifest, splits=splits_path, arch=arch, cache=out / "cache", progress=progress,
                  num_threads=num_threads)
    log(f"[3/7] source model on {source}")
    source_overrides = _schedule(cfg["source_steps"], 1e-2, cfg["source_steps"][0] * 3 // 4, cfg["batch_size"], crop, seed)
    stages.train(source=source, out=out / "runs" / "source", overrides=source_overrides, **common)
    log(f"[4/7] oracle model on {target} ({len(oracle_ids)} scans outside the test set)")
    stages.train(ids=oracle_ids, eval_ids=[], out=out / "runs" / "oracle", overrides=source_overrides, **common)

    log(f"[5/7] source model on {source} with intensity augmentation (a label-free baseline, as M3DA)")
    stages.train(source=source, out=out / "runs" / "source-intensity-aug",
                 overrides=dict(source_overrides, augment={"preset": "intensity", "mode": "intensity"}), **common)
    log(f"[6/7] adapt to {target}: layers first/last/all x budgets 1 scan, 1/{cfg['slices_k']} of a scan; "
        "AdaBN and histogram matching (no labels)")
    ft_overrides = _schedule(cfg["finetune_steps"], 1e-3, cfg["finetune_steps"][0] * 3 // 4, cfg["batch_size"],
                             crop, seed)
    adapted = {}
    for budget in ("1 scan", f"1/{cfg['slices_k']} scan"):
        slices = None if budget == "1 scan" else f"1/{cfg['slices_k']}"
        for layers in ("first", "last", "all"):
            name = f"{layers}-{'1scan' if slices is None else 'k' + str(cfg['slices_k'])}"
            stages.adapt(model=out / "runs" / "source", target=target, out=out / "runs" / name,
                         strategy_options={"layers": layers}, scans=1, slices=slices, overrides=ft_overrides,
                         evaluate=False, num_threads=num_threads, progress=progress)
            adapted[(layers, budget)] = out / "runs" / name
    for strategy in LABEL_FREE:  # no target label: BN statistics or intensities of the fine-tune scan only
        stages.adapt(model=out / "runs" / "source", target=target, out=out / "runs" / strategy, strategy=strategy,
                     scans=1, overrides=ft_overrides, evaluate=False, num_threads=num_threads, progress=progress)
        adapted[(strategy, "no labels")] = out / "runs" / strategy
    adapted[("src+aug", "no labels")] = out / "runs" / "source-intensity-aug"

    log(f"[7/7] predict and score {len(test_ids)} held-out {target} scans (surface Dice at 1 mm)")
    models = {("baseline", "-"): out / "runs" / "source", ("oracle", "-"): out / "runs" / "oracle", **adapted}
    scores, masks = {}, {}
    for key, run_dir in models.items():
        volumes = open_volumes(manifest, test_ids, cache=out / "cache", progress=False,
                               preprocess=read_run(run_dir)["spec"]["preprocess"])
        net = build_model(arch)
        load_pretrained(net, Path(run_dir) / "checkpoint.pt", arch=arch)
        preds = []
        rows = score_volumes(net, arch, volumes, tolerances_mm=(1.0, 2.0), progress=False,
                             on_prediction=lambda v, m: preds.append(m))
        scores[key], masks[key] = rows, preds
    table = _table(scores, finetune_pool[0])
    write_csv_atomic(out / "scores.csv",
                     [dict(method=k[0], budget=k[1], **r) for k, rows in scores.items() for r in rows])
    _figure(volumes[0], {k: v[0] for k, v in masks.items()}, out / "demo.png")
    elapsed = time.perf_counter() - t0
    report = "\n".join([
        f"fewshot-da demo: source {source} -> target {target}, {arch}, {len(test_ids)} test scans, "
        f"surface Dice at 1 mm per scan (mean ± std), D_R = (D - D_B)/(D_O - D_B)",
        table["text"],
        "Demo data are synthetic phantoms with a short schedule: the numbers show the pipeline, not the papers'.",
        f"Outputs: {out / 'table.txt'}, {out / 'scores.csv'}, {out / 'demo.png'}; runs in {out / 'runs'}",
        f"Finished in {elapsed:.0f} s.", "", CC359_HINT])
    (out / "table.txt").write_text(report + "\n")
    log(report)
    return {"rows": table["rows"], "table": table["text"], "elapsed_s": elapsed, "out": str(out)}


def _table(scores: dict, finetune_id: str) -> dict:
    """Rows per (method, budget) with mean sDSC and pair-level D_R; per budget, the winner by D_R and the sign
    test of scan-level D_R against the runner-up (the papers' significance rule)."""
    base = [r["surface_dice_1mm"] for r in scores[("baseline", "-")]]
    oracle = [r["surface_dice_1mm"] for r in scores[("oracle", "-")]]
    rows, lines = [], [f"{'method':<10}{'budget':<12}{'sDSC@1mm':<28}{'sDSC@2mm':<10}{'D_R':>7}"]
    for key, rs in scores.items():
        d1 = [r["surface_dice_1mm"] for r in rs]
        d2 = [r["surface_dice_2mm"] for r in rs]
        gap = pair_gap_closed(d1, base, oracle)
        rows.append({"method": key[0], "budget": key[1], "surface_dice_1mm": float(np.nanmean(d1)),
                     "surface_dice_2mm": float(np.nanmean(d2)), "gap_closed": gap})
        lines.append(f"{key[0]:<10}{key[1]:<12}{format_mean_std(d1):<28}{np.nanmean(d2):<10.3f}{gap:>7.2f}")
    budgets = [b for b in dict.fromkeys(k[1] for k in scores if k[0] not in ("baseline", "oracle"))
               if sum(k[1] == b for k in scores) > 1]
    for budget in budgets:
        ranked = sorted((r for r in rows if r["budget"] == budget), key=lambda r: -np.nan_to_num(r["gap_closed"], nan=-1e9))
        top, second = ranked[0], ranked[1]
        per_scan = {m: scan_gap_closed([r["surface_dice_1mm"] for r in scores[(m, budget)]], base, oracle)
                    for m in (top["method"], second["method"])}
        p = sign_test(per_scan[top["method"]], per_scan[second["method"]])
        top["sign_test_p_vs_runner_up"] = p
        lines.append(f"{budget}: {top['method']} closes most of the gap (D_R {top['gap_closed']:.2f}) vs "
                     f"{second['method']} ({second['gap_closed']:.2f}); sign test on per-scan D_R p = {p:.3f}")
    lines.append(f"(fine-tune scan {finetune_id}; the 1/k budget uses its slices {{0, k, 2k, ...}})")
    return {"rows": rows, "text": "\n".join(lines)}


def _figure(volume, masks: dict, path) -> None:
    """The test scan's slice with the most brain: the true outline and each method's prediction ({(method, budget):
    (S, H, W) mask})."""
    gt = np.asarray(volume.mask)
    s = int(np.argmax(gt.reshape(gt.shape[0], -1).sum(1)))
    plot_examples([np.asarray(volume.image, dtype=np.float32)[s]], [gt[s]],
                  [{f"{method} {budget}": np.asarray(mask)[s] for (method, budget), mask in masks.items()}],
                  [f"{volume.id} slice {s}"], path)
