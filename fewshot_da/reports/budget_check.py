"""Degenerate budgets of a grid: fine-tune slices (the scans of a budget, each on its 1/k comb) of which fewer than
two show any foreground, e.g. 1/8 of an 8-slice phantom: slices {0} of which slice 0 is empty."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..errors import InputError

MIN_FOREGROUND_SLICES = 2


def _budget(label: str) -> tuple:
    """'3' -> (3, 1); '1/8' -> (1, 8)."""
    head, _, tail = str(label).partition("/")
    return int(head), int(tail or 1)


def degenerate_budgets(grid_dir, min_slices: int = MIN_FOREGROUND_SLICES) -> list:
    """Rows target, budget, fold, scans, n_slices, n_foreground of each (target, budget, fold) of the grid's
    adapted runs whose fine-tune slices hold fewer than `min_slices` slices with foreground (a mask voxel > 0).

    Reads grid.json (the data, splits, cache and preprocessing) and the cached preprocessed masks; [] for a folder
    without grid.json. InputError when the data cannot be read."""
    from ..data import splits as splits_mod
    from ..data.budgets import comb_slices
    from ..data.manifest import read_manifest
    from ..data.preprocess import preprocess_options
    from ..data.cache import preprocess_manifest

    path = Path(grid_dir) / "grid.json"
    if not path.is_file():
        return []
    try:
        grid = json.loads(path.read_text())
        context, specs = grid["context"], grid["specs"]
    except (ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{path}: not a grid description ({exc})") from None
    wanted = {}
    for spec in specs:
        if spec.get("kind") == "adapt" and spec.get("budget"):
            key = (spec["target"], spec["budget"], spec.get("folds"), spec.get("fold") if spec.get("folds") else None)
            wanted.setdefault(key, None)
    if not wanted:
        return []
    split = splits_mod.read_splits(context["splits"])
    records = {r.id: r for r in read_manifest(context["manifest"])}
    options = preprocess_options(context["preprocess"])
    masks = {}
    found = []
    for target, budget, folds, fold in sorted(wanted, key=lambda k: (k[0], k[1], k[3] or 0)):
        scans, k = _budget(budget)
        if folds:
            ids = splits_mod.cv_fold_ids(split, int(folds), int(fold or 0), domain=target, n_finetune=scans)[0]
        else:
            ids = splits_mod.finetune_ids(split, target, scans)
        todo = [i for i in ids if i not in masks]
        if todo:
            volumes = preprocess_manifest([records[i] for i in todo], context["cache"], options, num_workers=1,
                                          progress=False)
            for i, v in zip(todo, volumes):
                mask = np.asarray(v.mask)
                masks[i] = mask.reshape(mask.shape[0], -1).any(axis=1)
        n_slices = n_fg = 0
        for i in ids:
            comb = comb_slices(masks[i].size, k)
            n_slices += comb.size
            n_fg += int(masks[i][comb].sum())
        if n_fg < min_slices:
            found.append({"target": target, "budget": budget, "fold": fold, "scans": list(ids), "n_slices": n_slices,
                          "n_foreground": n_fg})
    return found


def degenerate_runs(run_dirs, min_slices: int = MIN_FOREGROUND_SLICES) -> list:
    """degenerate_budgets' rows for adapt run folders made by hand: the fine-tune scans and slices their
    summary.json records, their masks from the run's cache (run.yaml). Folders that are not adapt runs, or
    trained on every slice of enough scans, are skipped."""
    from ..experiments.run_folder import read_run
    from ..experiments.stages import open_volumes

    found = []
    for run_dir in run_dirs:
        run_dir = Path(run_dir)
        try:
            summary = json.loads((run_dir / "summary.json").read_text())
            spec = read_run(run_dir).get("spec") or {}
        except (OSError, ValueError, InputError):
            continue
        if not isinstance(summary, dict) or summary.get("kind") != "adapt" or not summary.get("finetune_ids"):
            continue
        ids = list(summary["finetune_ids"])
        slices = summary.get("slice_indices")
        volumes = open_volumes(spec["manifest"], ids, cache=spec["cache"], preprocess=spec["preprocess"],
                               progress=False)
        n_slices = n_fg = 0
        for v in volumes:
            mask = np.asarray(v.mask)
            fg = mask.reshape(mask.shape[0], -1).any(axis=1)
            chosen = np.asarray(slices[v.id], dtype=np.int64) if isinstance(slices, dict) else np.arange(fg.size)
            n_slices += chosen.size
            n_fg += int(fg[chosen].sum())
        if n_fg < min_slices:
            k = int(spec.get("slices_k") or 1)
            budget = f"{len(ids)}/{k}" if k > 1 else str(len(ids))
            found.append({"target": spec.get("target"), "budget": budget, "fold": spec.get("fold"), "scans": ids,
                          "n_slices": n_slices, "n_foreground": n_fg, "run": run_dir.name})
    return found
