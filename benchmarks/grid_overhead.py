"""Per-run overhead of an experiment grid outside training steps and prediction, measured on a phantoms grid.

Runs the grid in this process (slots=0, one torch thread) with the scoring function wrapped by a timer, then
splits each run's wall time (grid_timing.json) into: training steps (fit's data_s + compute_s), prediction and
scoring (timed here), fit bookkeeping (checkpoint, metrics.csv, progress.png per epoch) and the rest (reading
volumes, building and loading the model, run files, results append).

    python benchmarks/grid_overhead.py OUT [--plan phantoms|PLAN.yaml] [--sources siemens3] [--seeds 0]
"""
import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--plan", default="phantoms")
    parser.add_argument("--sources", nargs="*", default=["siemens3"])
    parser.add_argument("--seeds", nargs="*", type=int, default=[0])
    args = parser.parse_args()

    import numpy as np
    import torch

    torch.set_num_threads(1)
    from fewshot_da.experiments import grid as grid_mod
    from fewshot_da.experiments import stages
    from fewshot_da.experiments.executors import run_experiment

    predict_s = {}
    original = stages.score_volumes

    def timed(*a, **k):  # the stages call score_volumes through their module
        t0 = time.perf_counter()
        out = original(*a, **k)
        timed.last += time.perf_counter() - t0
        return out

    stages.score_volumes = timed
    orig_execute = grid_mod.runs._run_spec

    def run_spec(spec, context, grid_dir, num_threads):
        timed.last = 0.0
        summary = orig_execute(spec, context, grid_dir, num_threads)
        predict_s[spec.run_id] = timed.last
        return summary

    grid_mod.runs._run_spec = run_spec
    if Path(args.plan).is_file():  # a YAML plan as is
        import yaml

        plan = yaml.safe_load(Path(args.plan).read_text())
    else:
        plan = {"base": args.plan, "sources": args.sources, "seeds": args.seeds}
    t0 = time.perf_counter()
    result = run_experiment(plan, args.out, slots=0, log=lambda _: None)
    total = time.perf_counter() - t0
    rows = {}
    for spec in grid_mod.load_grid(args.out)["specs"]:
        folder = grid_mod.run_dir(args.out, spec.run_id)
        if spec.run_id not in predict_s:
            continue
        wall = json.loads((folder / "grid_timing.json").read_text())["wall_s"]
        fit = (json.loads((folder / "summary.json").read_text()).get("fit") or {}).get("timings_s", {})
        steps = fit.get("data_s", 0.0) + fit.get("compute_s", 0.0)
        book = fit.get("bookkeeping_s", 0.0)
        pred = predict_s[spec.run_id]
        rows.setdefault(spec.kind, []).append((wall, steps, pred, book, wall - steps - pred - book))
    print(f"grid {args.plan} sources={args.sources} seeds={args.seeds}: {result['done']} runs in "
          f"{total:.1f} s "
          f"(this process, 1 torch thread)")
    print(f"{'kind':<9}{'n':>4}{'wall s':>9}{'steps s':>9}{'predict s':>11}{'fit book s':>12}{'other s':>9}"
          f"{'overhead %':>12}")
    for kind, values in rows.items():
        v = np.array(values)
        mean = v.mean(axis=0)
        overhead = (mean[3] + mean[4]) / mean[0] * 100
        print(f"{kind:<9}{len(v):>4}{mean[0]:>9.2f}{mean[1]:>9.2f}{mean[2]:>11.2f}{mean[3]:>12.2f}{mean[4]:>9.2f}"
              f"{overhead:>11.0f}%")


if __name__ == "__main__":
    main()
