"""Example segmentations for the report: a few test slices of one pair, each method's model predicting them.

The models are the run folders' checkpoints (the baseline's source model, the oracle fold that held the case
out, each adapted method at its largest budget and first seed); a method whose run kept no checkpoint (a grid
without keep_checkpoints) is shown as 'no prediction'. Only the chosen slices are predicted.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .gap import BASELINE, ORACLE, method_label


def _model_folder(folder: Path):
    """The folder whose checkpoint.pt and run.yaml make the model of a run (a predict run: its model)."""
    if (folder / "checkpoint.pt").is_file() and (folder / "run.yaml").is_file():
        return folder
    try:
        summary = json.loads((folder / "summary.json").read_text())
    except (OSError, ValueError):
        return None
    model = Path(summary.get("model") or "") if isinstance(summary, dict) else Path("")
    return model if summary.get("model") and (model / "checkpoint.pt").is_file() else None


def example_panels(rows, folders: dict, grid_specs: dict, metric: str, n_cases: int = 2) -> tuple:
    """(panels, note): panels = (images, truths, predictions, row titles) for `plots.plot_examples`, or None with a
    note saying why. `folders` maps a results run name to its folder; `grid_specs` a grid run id to its spec
    (for the baseline's source model)."""
    from ..experiments.run_folder import read_run
    from ..experiments.stages import open_volumes, run_model
    from ..models import pad_multiple
    from ..predict import predict_volume

    pairs = sorted({(r["arch"], r["source"], r["target"]) for r in rows if r["strategy"] == BASELINE})
    adapted = [r for r in rows if r["strategy"] not in (BASELINE, ORACLE)]
    pair = next((p for p in pairs if any((r["arch"], r["source"], r["target"]) == p for r in adapted)),
                pairs[0] if pairs else None)
    if pair is None:
        return None, "no baseline rows: no example segmentations"
    arch, source, target = pair
    base_rows = [r for r in rows if r["strategy"] == BASELINE and (r["arch"], r["source"], r["target"]) == pair]
    cases = sorted({r["case"] for r in base_rows})
    def folder_of(run):
        """A grid baseline run keeps no checkpoint: its model is its parent source run's."""
        spec = grid_specs.get(run) or {}
        return folders.get(spec["parent"]) if spec.get("kind") == "baseline" and spec.get("parent") \
            else folders.get(run)

    chosen = {}  # method -> {case: run folder}
    chosen[BASELINE] = {c: folder_of(base_rows[0]["run"]) for c in cases}
    by_method = {}
    for r in adapted:
        if (r["arch"], r["source"], r["target"]) == pair:
            by_method.setdefault(method_label(r["strategy"], r["layers"]), []).append(r)
    for method, members in sorted(by_method.items()):
        top = max(members, key=lambda r: (_scans(r["budget"]), -_num(r["seed"])))
        label = f"{method} {top['budget']}".strip()
        run = top["run"]
        chosen[label] = {r["case"]: folder_of(run) for r in members if r["run"] == run}
    oracle = {r["case"]: folder_of(r["run"]) for r in rows if r["strategy"] == ORACLE and r["arch"] == arch
              and r["target"] == target}
    if oracle:
        chosen[ORACLE] = oracle
    # cases every method scored first; then those only the oracle lacks (its other folds trained on them)
    shared = [c for c in cases if all(c in m for m in chosen.values())]
    shared += [c for c in cases if c not in shared and all(c in m for k, m in chosen.items() if k != ORACLE)]
    shared = shared[:n_cases]
    if not shared:
        return None, f"{source} -> {target}: no test case scored by every method; no example segmentations"
    models, images, truths, predictions, titles = {}, [], [], [], []
    missing = set()
    for case in shared:
        predictions.append({})
        s = None
        for method, runs in chosen.items():
            if runs.get(case) is None:  # not a test case of that method (an oracle fold trained on it)
                predictions[-1][method] = None
                continue
            folder = _model_folder(Path(runs[case]))
            if folder is None:
                predictions[-1][method] = None
                missing.add(method)
                continue
            spec = read_run(folder)["spec"]
            volume = open_volumes(spec["manifest"], [case], cache=spec["cache"], preprocess=spec["preprocess"],
                                  progress=False)[0]
            if s is None:
                mask = np.asarray(volume.mask)
                s = int(np.argmax(mask.reshape(mask.shape[0], -1).sum(axis=1)))
                images.append(np.asarray(volume.image[s], dtype=np.float32))
                truths.append(mask[s])
                titles.append(f"{case} slice {s}")
            if folder not in models:
                models[folder] = run_model(folder)[0]
            predictions[-1][method] = predict_volume(models[folder], np.asarray(volume.image[s:s + 1]),
                                                     pad_multiple=pad_multiple(spec["arch"]))[0]
        if s is None:
            return None, "no run of the pair kept a model checkpoint: no example segmentations"
    note = (f"example segmentations: {', '.join(sorted(missing))} kept no model checkpoint (a grid keeps them with "
            "keep_checkpoints: true in its plan)") if missing else ""
    return (images, truths, predictions, titles), note


def _scans(budget) -> float:
    from ..data.budgets import budget_scans

    return budget_scans(budget)


def _num(text) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return 0.0
