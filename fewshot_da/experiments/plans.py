"""Study plans: which sources, targets, strategies, budgets, seeds and folds a grid runs (presets and YAML).

A plan is a plain dict (STYLE 17: a grid is data). Keys and defaults are in `DEFAULTS`; a YAML plan may name
`base: <preset>` and override any key (nested dicts merge). Budgets are labels: "3" (scans, or images for 2D
data), "1/48" (1/k of one scan's slices). Strategies are names ("first", "last", "all", "contracting", ... =
fine-tune that layer group, the `freeze` strategy) or mappings {name, options, pairs, options_by_budget,
grid} for strategies with parameters (SpotTUnet). REFERENCE.md §3 and §10 item 11 give the CC359 grid.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Optional

import yaml

from ..data.budgets import LAMBDA_GRID, PAPER_LAMBDA, budget_label
from ..errors import InputError

CC359_DART20_BUDGETS = ["3", "1", "1/3", "1/6", "1/12", "1/24", "1/36", "1/48"]  # REFERENCE §3 (DART20)
CC359_DSA_BUDGETS = ["3", "2", "1", "1/3", "1/6", "1/12", "1/24", "1/36", "1/48"]  # DSA adds 2 scans
# SpotTUnet's chosen lambda per budget and its search grid (REFERENCE §6), as plan entries: the one table of
# data/budgets.py spelt with budget labels.
SPOTTUNE_LAMBDA = {budget_label(scans, k): lam for (scans, k), lam in PAPER_LAMBDA.items()}
SPOTTUNE_LAMBDA_GRID = list(LAMBDA_GRID)

DEFAULTS = {
    "name": "",
    "arch": "dart20",
    "preset": "paper",  # TrainConfig preset of every stage (training/config.py)
    "preprocess": "paper",  # preprocessing preset name or a dict of PreprocessOptions fields
    "data": {},  # {manifest, splits} | {generator: phantoms|ixi-shift, ...} | {index: [...]}; splits_options
    "sources": "all",
    "targets": "all",
    "pairs": None,  # None (every source x target), "5-29" (pair indices) or [[source, target], ...]
    "strategies": ["first", "last", "all"],
    "budgets": ["1"],
    "seeds": [0],  # seeds of the adapted runs
    "model_seed": 0,  # seed of the source and oracle models (shared by every adapted run)
    "folds": [0, 1, 2],  # oracle cross-validation folds to train
    "cv_folds": None,  # k: adapted runs fine-tune on CV fold f of k of the target (f < k), test on the rest
    "baselines": True,
    # The source + intensity augmentation baseline (issue 10; M3DA): each source is also trained with this
    # TrainConfig `augment` and scored unadapted on the pair's test scans as strategy `baseline-aug`; null: off.
    "augmented_baseline": {"preset": "intensity", "mode": "intensity"},
    "oracles": True,
    "schedules": {"source": {}, "finetune": {}},  # TrainConfig overrides (epochs, iters_per_epoch, lr, ...)
    "tolerances_mm": [1.0],
    "keep_checkpoints": False,  # keep adapted runs' checkpoint.pt once finished (sources/oracles always kept)
}

_PHANTOM_SCHEDULES = {
    "source": {
        "epochs": 2,
        "iters_per_epoch": 15,
        "batch_size": 8,
        "crop": 32,
        "lr": 0.01,
        "lr_steps": {0: 0.1},
    },
    "finetune": {"epochs": 1, "iters_per_epoch": 6, "batch_size": 4, "crop": 32, "lr": 0.01, "lr_steps": {}},
}

PRESETS = {
    # The first-layers paper (Zakazov et al. 2020): 6 one2all sources, 3-fold CV oracles, 30 pairs x 3 x 8.
    "cc359-dart20": {
        "name": "cc359-dart20",
        "arch": "dart20",
        "preset": "paper",
        "preprocess": "paper",
        "data": {"manifest": "cc359.csv", "splits": "splits.json"},
        "strategies": ["first", "last", "all"],
        "budgets": CC359_DART20_BUDGETS,
    },
    # SpotTUnet (Zakazov et al. 2021): dsa net, the code's schedules; SpotTUnet on pairs 5-29 with the chosen
    # lambda per budget, and the lambda search on pairs 0-4 (source siemens15).
    "cc359-dsa": {
        "name": "cc359-dsa",
        "arch": "dsa",
        "preset": "dsa-code",
        "preprocess": "dart20-code",
        "data": {"manifest": "cc359.csv", "splits": "splits.json"},
        "budgets": CC359_DSA_BUDGETS,
        "strategies": [
            "first",
            "last",
            "all",
            {
                "name": "spottune",
                "pairs": "5-29",
                "options": {"temperature": 0.1},
                "options_by_budget": {"lam": SPOTTUNE_LAMBDA},
            },
            {
                "name": "spottune",
                "pairs": "0-4",
                "options": {"temperature": 0.1},
                "grid": {"lam": SPOTTUNE_LAMBDA_GRID},
            },
        ],
    },
    # Amiri et al. 2019 on open data: BUSI (source) -> BUS-BRA (target), 2D images resized to 256 x 256;
    # budgets are images. Needs the 2D resize preprocessing (lands separately).
    "ultrasound": {
        "name": "ultrasound",
        "arch": "vanilla",
        "preset": "paper",
        "preprocess": {"resize": 256},  # every image resized to 256 x 256 (REFERENCE §7)
        "data": {
            "index": [
                {"layout": "images2d", "root": "shared:busi", "domain": "busi"},
                {"layout": "images2d", "root": "shared:bus-bra-mini", "domain": "bus-bra"},
            ],
            "splits_options": {"finetune_scans": [5, 10, 20], "cv_folds": 5},
        },
        "sources": ["busi"],
        "targets": ["bus-bra"],
        "strategies": ["contracting", "expanding", "first", "last", "all"],
        "budgets": ["5", "10", "20"],
        "seeds": [0],
        "cv_folds": 5,  # 5-fold cross-validation on the target, as the paper
        "folds": [0, 1, 2],
        "schedules": {
            "source": {"epochs": 40, "iters_per_epoch": 50, "batch_size": 16, "lr_steps": {30: 0.1}},
            "finetune": {"epochs": 20, "iters_per_epoch": 25, "batch_size": 8, "lr_steps": {}},
        },
        "tolerances_mm": [1.0],
    },
    # The README's real-data check as a grid: IXI-HH plus three simulated scanners (`data shift` settings).
    "ixi-shift": {
        "name": "ixi-shift",
        "arch": "dart20",
        "preset": "paper",
        "preprocess": {"target_spacing_mm": [2.0, 2.0, 2.0], "reorient_ras": True},
        "data": {
            "generator": "ixi-shift",
            "root": "shared:ixi-hh",
            "n": 16,
            "shifts": {
                "shift-gamma": {
                    "gamma": 0.6,
                    "bias_amplitude": 0.35,
                    "noise_sigma": 0.04,
                    "blur_sigma_vox": [0.0, 0.0, 1.0],
                },
                "shift-bright": {
                    "gamma": 1.6,
                    "bias_amplitude": 0.2,
                    "noise_sigma": 0.02,
                    "blur_sigma_vox": [0.0, 0.0, 0.0],
                },
                "shift-noisy": {
                    "gamma": 0.85,
                    "bias_amplitude": 0.5,
                    "noise_sigma": 0.08,
                    "blur_sigma_vox": [1.0, 0.0, 0.0],
                },
            },
        },
        "sources": ["ixi"],
        "targets": "all",
        "strategies": ["first", "last", "all"],
        "budgets": ["1", "1/12"],
        "seeds": [0, 1],
        "schedules": {
            "source": {
                "epochs": 10,
                "iters_per_epoch": 100,
                "batch_size": 8,
                "crop": 128,
                "lr_steps": {7: 0.1},
            },
            "finetune": {
                "epochs": 4,
                "iters_per_epoch": 25,
                "batch_size": 8,
                "crop": 128,
                "lr_steps": {2: 0.1},
            },
        },
        "tolerances_mm": [1.0, 2.0],
    },
    # Generated CC359-like phantoms: 3 scanners (6 pairs) x first/last/all x 3 budgets x 2 seeds, tiny
    # schedules:
    # the whole grid runs end to end on 2 CPU cores in a few minutes.
    "phantoms": {
        "name": "phantoms",
        "arch": "dart20",
        "preset": "paper",
        "data": {
            "generator": "phantoms",
            "domains": ["siemens3", "ge15", "philips15"],
            "scans_per_domain": 6,
            "shape": [32, 32, 12],
            "seed": 0,
            "splits_options": {"val_scans": 2},
        },
        "strategies": ["first", "last", "all"],
        "budgets": ["1", "1/2", "1/4"],
        "seeds": [0, 1],
        "schedules": _PHANTOM_SCHEDULES,
    },
}


# How deep a YAML override merges into its base: data keys and each stage's schedule keys are replaced one by
# one; anything deeper (lr_steps, shifts, options) is replaced whole, so `lr_steps: {}` clears the drops.
_MERGE_DEPTH = {"data": 1, "schedules": 2}


def _merge(base: dict, override: dict, depth: Optional[int] = None) -> dict:
    """`override` on top of `base`: top-level keys are replaced, except `data` and `schedules`, which merge
    key by key down to _MERGE_DEPTH levels."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        level = _MERGE_DEPTH.get(key, 0) if depth is None else depth
        if level > 0 and isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value, level - 1)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_plan(plan, *, data: Optional[str] = None, splits: Optional[str] = None) -> dict:
    """A complete plan from a preset name, a YAML path or a dict; `data`/`splits` replace its manifest/splits.

    Relative data paths in a YAML plan are resolved against the YAML's folder. Raises InputError naming the
    plan and key for unknown keys, a bad type or an unknown preset, and for any entry the runs would refuse
    later (check_plan): a strategy or layer group typo, strategy options, preprocessing, schedules, tolerances.
    """
    where = plan_origin(plan)
    if isinstance(plan, dict):
        raw, folder = plan, Path.cwd()
    elif str(plan) in PRESETS:
        raw, folder = PRESETS[str(plan)], Path.cwd()
    else:
        path = Path(plan)
        if not path.is_file():
            raise InputError(f"plan {plan!r}: neither a preset ({', '.join(PRESETS)}) nor a YAML file")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise InputError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
        if not isinstance(raw, dict):
            raise InputError(f"{path}: a plan is a mapping of keys, got {type(raw).__name__}")
        folder = path.resolve().parent
        raw = dict(raw)
        raw.setdefault("name", path.stem)
    raw = dict(raw)
    base = raw.pop("base", None)
    if base is not None:
        if base not in PRESETS:
            raise InputError(f"{where}: base {base!r} is not a preset ({', '.join(PRESETS)})")
        raw = _merge(PRESETS[base], raw)
    unknown = sorted(set(raw) - set(DEFAULTS))
    if unknown:
        raise InputError(f"{where}: unknown key {unknown[0]!r}; valid: {', '.join(sorted(DEFAULTS))}")
    out = _merge(DEFAULTS, raw)
    out["data"] = _resolve_data(dict(out["data"] or {}), folder, where)
    if data:
        out["data"] = {k: v for k, v in out["data"].items() if k == "splits_options"}
        out["data"]["manifest"] = str(Path(data).resolve())
    if splits:
        out["data"]["splits"] = str(Path(splits).resolve())
    _check(out, where)
    from .plan_checks import check_plan  # builds the network once to check layer groups and strategies

    check_plan(out, where)
    return out


def plan_origin(plan) -> str:
    """How errors name a plan: its YAML path, `preset NAME`, or `plan NAME` for a dict."""
    if isinstance(plan, dict):
        return f"plan {plan.get('name') or plan.get('base') or 'plan'}"
    return f"preset {plan}" if str(plan) in PRESETS else str(plan)


def _path(text: str, folder: Path) -> str:
    """A plan path: 'shared:NAME' is NAME in $FEWSHOT_DA_SHARED_DATA (default ../shared/data, the project's
    real-data folder); anything else is relative to the plan's folder."""
    if str(text).startswith("shared:"):
        base = Path(os.environ.get("FEWSHOT_DA_SHARED_DATA", "../shared/data"))
        return str((base / str(text)[len("shared:"):]).resolve())
    return str((folder / text).resolve())


def _resolve_data(data: dict, folder: Path, where: str) -> dict:
    for key in ("manifest", "splits", "root"):
        if data.get(key):
            data[key] = _path(data[key], folder)
    for entry in data.get("index") or []:
        if not isinstance(entry, dict) or "root" not in entry:
            raise InputError(f"{where}: data.index entries need a root (and layout, domain)")
        entry["root"] = _path(entry["root"], folder)
    return data


def _check(plan: dict, where: str) -> None:
    def need_list(key, kind=str):
        value = plan[key]
        if not isinstance(value, list) or not value or not all(isinstance(v, kind) for v in value):
            raise InputError(f"{where}: {key} must be a non-empty list, got {value!r}")

    plan["budgets"] = [str(b) for b in plan["budgets"]]
    need_list("budgets")
    need_list("seeds", int)
    if plan["cv_folds"] is not None and (not isinstance(plan["cv_folds"], int) or plan["cv_folds"] < 2):
        raise InputError(f"{where}: cv_folds must be a number of folds >= 2, got {plan['cv_folds']!r}")
    if not isinstance(plan["folds"], list) or not all(isinstance(v, int) for v in plan["folds"]):
        raise InputError(f"{where}: folds must be a list of oracle fold indices, got {plan['folds']!r}")
    if not isinstance(plan["strategies"], list) or not plan["strategies"]:
        raise InputError(f"{where}: strategies must be a non-empty list")
    for key in ("sources", "targets"):
        if plan[key] != "all" and not (
            isinstance(plan[key], list) and all(isinstance(v, str) for v in plan[key])
        ):
            raise InputError(f"{where}: {key} must be 'all' or a list of domains, got {plan[key]!r}")
    data = plan["data"]
    if not (data.get("manifest") or data.get("generator") or data.get("index")):
        raise InputError(
            f"{where}: data needs a manifest (and splits), a generator or an index list "
            "(or pass --data manifest.csv --splits splits.json)"
        )
    if data.get("generator") not in (None, "phantoms", "ixi-shift"):
        raise InputError(f"{where}: data.generator {data['generator']!r}: choose phantoms or ixi-shift")
    if plan["augmented_baseline"] is not None and not isinstance(plan["augmented_baseline"], dict):
        raise InputError(f"{where}: augmented_baseline must be an augment mapping (e.g. {{preset: intensity, "
                         f"mode: intensity}}) or null, got {plan['augmented_baseline']!r}")
    for stage in ("source", "finetune"):
        if not isinstance(plan["schedules"].get(stage, {}), dict):
            raise InputError(f"{where}: schedules.{stage} must be a mapping of TrainConfig keys")
