"""Checks of a whole study plan before anything runs: each entry a run would refuse is refused here, in one line
naming the plan and the entry (issue 22, 18 §4), and budgets too thin to learn from are warned about (issue 23 §4).

`check_plan` needs only the plan (it runs when the plan is loaded); `check_plan_data` needs the grid's splits
(folds, cv_folds and budgets against the data); `budget_warnings` needs the preprocessed fine-tune scans.
"""

from __future__ import annotations

import difflib
import functools
import json
import math
from collections.abc import Sequence

from ..errors import InputError

STRATEGY_KEYS = ("name", "layers", "options", "pairs", "options_by_budget", "grid")  # as grid.py reads them
SCHEDULE_STAGES = ("source", "finetune")
MIN_FOREGROUND_SLICES = 2  # a budget whose allowed slices hold fewer slices with foreground is degenerate


def check_plan(plan: dict, where: str) -> None:
    """InputError `WHERE: ENTRY: problem` for the first entry of a loaded plan that a run would refuse."""
    from ..models import check_arch
    from ..training.config import PRESETS as TRAIN_PRESETS

    _refuse(where, "arch", check_arch, plan["arch"])
    if plan["preset"] not in TRAIN_PRESETS:
        raise InputError(f"{where}: preset {plan['preset']!r} is not a training preset ({', '.join(TRAIN_PRESETS)})")
    for key in ("baselines", "oracles", "keep_checkpoints"):
        if not isinstance(plan[key], bool):
            raise InputError(f"{where}: {key} must be true or false, got {plan[key]!r}")
    if not isinstance(plan["model_seed"], int) or isinstance(plan["model_seed"], bool):
        raise InputError(f"{where}: model_seed must be an integer, got {plan['model_seed']!r}")
    folds = plan["folds"]
    if any(f < 0 for f in folds) or len(set(folds)) != len(folds):
        raise InputError(f"{where}: folds {folds!r}: oracle folds are distinct indices >= 0")
    _check_preprocess(plan, where)
    _check_tolerances(plan, where)
    budgets = _check_budgets(plan, where)
    _check_schedules(plan, where)
    _check_pairs(plan["pairs"], f"{where}: pairs")
    _check_strategies(plan, where, budgets)


def _refuse(where: str, entry: str, check, *args, **kwargs):
    """check(*args), with an InputError (or a constructor's TypeError) re-worded as `WHERE: ENTRY: message`."""
    try:
        return check(*args, **kwargs)
    except (InputError, TypeError, ValueError) as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"{where}: {entry}: {message}") from None


def _check_preprocess(plan: dict, where: str) -> None:
    from ..data.preprocess import PRESETS as PREPROCESS_PRESETS
    from ..data.preprocess import preprocess_options

    value = plan["preprocess"]
    if isinstance(value, str) and value not in PREPROCESS_PRESETS:
        raise InputError(
            f"{where}: preprocess {value!r} is not a preprocessing preset ({', '.join(PREPROCESS_PRESETS)}) "
            "or a mapping of its options"
        )
    if not isinstance(value, (str, dict)):
        raise InputError(f"{where}: preprocess must be a preset name or a mapping of options, got {value!r}")
    if isinstance(value, dict):
        from dataclasses import fields

        from ..data.preprocess import PreprocessOptions

        valid = sorted(f.name for f in fields(PreprocessOptions))
        unknown = sorted(set(value) - set(valid))
        if unknown:
            raise InputError(f"{where}: preprocess: unknown option {unknown[0]!r}; valid: {', '.join(valid)}")
    _refuse(where, "preprocess", preprocess_options, value)


def _check_tolerances(plan: dict, where: str) -> None:
    from .stages import check_tolerances

    value = plan["tolerances_mm"]
    if not isinstance(value, list) or not all(
        isinstance(t, (int, float)) and not isinstance(t, bool) for t in value
    ):
        raise InputError(f"{where}: tolerances_mm must be a list of numbers of mm, got {value!r}")
    _refuse(where, "tolerances_mm", check_tolerances, value)


def _check_budgets(plan: dict, where: str) -> list:
    """[(label, scans, k or None)] of the plan's budgets, each parsed once."""
    from ..data.budgets import parse_budget_label as parse_budget

    out = []
    for label in plan["budgets"]:
        scans, k = _refuse(where, "budgets", parse_budget, label)
        out.append((label, scans, k))
    labels = [b for b, _, _ in out]
    if len(set(labels)) != len(labels):
        raise InputError(f"{where}: budgets: {next(b for b in labels if labels.count(b) > 1)!r} is listed twice")
    return out


def _check_schedules(plan: dict, where: str) -> None:
    """Each stage's overrides make a valid TrainConfig, as the runs will build it (seed and augment included)."""
    schedules = plan["schedules"]
    if not isinstance(schedules, dict):
        raise InputError(f"{where}: schedules must be a mapping with source and finetune, got {schedules!r}")
    unknown = sorted(set(schedules) - set(SCHEDULE_STAGES))
    if unknown:
        raise InputError(
            f"{where}: schedules: unknown stage {unknown[0]!r}; valid: {', '.join(SCHEDULE_STAGES)}"
            + _did_you_mean(unknown[0], SCHEDULE_STAGES)
        )
    for stage in SCHEDULE_STAGES:
        if not isinstance(schedules.get(stage) or {}, dict):
            raise InputError(f"{where}: schedules.{stage} must be a mapping of training settings")
    source = dict(schedules.get("source") or {}, seed=plan["model_seed"])
    _train_config(plan, "source", source, f"{where}: schedules.source")
    finetune = dict(schedules.get("finetune") or {}, seed=plan["seeds"][0])
    _train_config(plan, "finetune", finetune, f"{where}: schedules.finetune")
    if plan["augmented_baseline"] and plan["baselines"]:
        _train_config(plan, "source", dict(source, augment=plan["augmented_baseline"]), f"{where}: augmented_baseline")


def _train_config(plan: dict, stage: str, overrides: dict, entry: str):
    from ..training.config import preset_config, with_overrides

    try:
        return with_overrides(preset_config(plan["preset"], stage, plan["arch"]), overrides)
    except (InputError, TypeError, ValueError) as exc:
        raise InputError(f"{entry}: {str(exc).strip().splitlines()[0]}") from None


def _check_pairs(pairs, entry: str) -> None:
    if pairs is None:
        return
    if isinstance(pairs, list) and pairs and isinstance(pairs[0], (list, tuple)):
        bad = [p for p in pairs if not (isinstance(p, (list, tuple)) and len(p) == 2
                                        and all(isinstance(d, str) for d in p))]
        if bad:
            raise InputError(f"{entry}: {bad[0]!r} is not a [source, target] pair of domain names")
        return
    _pair_indices(pairs, entry)


def _pair_indices(pairs, entry: str) -> set:
    from .grid.specs import _index_range

    try:
        return _index_range(pairs, entry)
    except (TypeError, ValueError):
        raise InputError(f"{entry}: {pairs!r}: expected a range like 5-29, a list of indices or of pairs") from None


@functools.lru_cache(maxsize=8)
def _model(arch: str):
    """One untrained network per architecture per process: strategies are checked against it. Built under a
    forked RNG, so checking a plan never moves torch's global random state."""
    import torch

    from ..models import build_model

    with torch.random.fork_rng(devices=[]):
        return build_model(arch)


@functools.lru_cache(maxsize=256)
def _build_strategy(arch: str, name: str, options_json: str) -> None:
    import torch

    from ..training.strategies import make_strategy

    with torch.random.fork_rng(devices=[]):  # SpotTUnet's policy network draws its initial weights
        make_strategy(name, _model(arch), arch, json.loads(options_json))


def _check_strategies(plan: dict, where: str, budgets: list) -> None:
    """Every strategy entry names a registered strategy or a layer selection of the plan's network, with keys,
    options and option values its runs accept. Each distinct option set is built once on an untrained network;
    float values, which only the value rules constrain, are built with the first value seen, so a lambda grid
    costs one build. YAML's numeric budget keys of options_by_budget (`1:`) become text, as the budgets are."""
    from ..models import GROUP_NAMES
    from ..training.strategies import STRATEGIES

    arch = plan["arch"]
    registered = [n for n in STRATEGIES if n != "freeze"]
    for i, entry in enumerate(plan["strategies"]):
        label = f"{where}: strategies[{i}]"
        if isinstance(entry, str):
            if entry in registered:
                _strategy_builds(arch, entry, {}, f"{label} {entry!r}")
                continue
            _layer_selection(arch, entry, f"{label} {entry!r}", registered, GROUP_NAMES)
            continue
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise InputError(f"{label}: a strategy is a name or a mapping with a name, got {entry!r}")
        name = entry["name"]
        label = f"{label} {name!r}"
        unknown = sorted(set(entry) - set(STRATEGY_KEYS))
        if unknown:
            raise InputError(f"{label}: unknown key {unknown[0]!r}; valid: {', '.join(STRATEGY_KEYS)}"
                             + _did_you_mean(unknown[0], STRATEGY_KEYS))
        if name not in STRATEGIES:
            raise InputError(f"{where}: strategies[{i}]: strategy {name!r} is not registered in this install "
                             f"(available: {', '.join(STRATEGIES)})" + _did_you_mean(name, list(STRATEGIES)))
        for key in ("options", "options_by_budget", "grid"):
            if not isinstance(entry.get(key) or {}, dict):
                raise InputError(f"{label}: {key} must be a mapping, got {entry[key]!r}")
        if entry.get("pairs") is not None:
            _pair_indices(entry["pairs"], f"{label}: pairs")
        layers = entry.get("layers") or ""
        if not isinstance(layers, str):
            raise InputError(f"{label}: layers must be a layer selection (text), got {layers!r}")
        if name == "freeze":
            if not layers:
                raise InputError(f"{label}: freeze needs layers (a group such as first, or module paths)")
            _layer_selection(arch, layers, f"{label}: layers {layers!r}", [], GROUP_NAMES)
        labels = [b for b, _, _ in budgets]
        by_budget = {}
        for option, values in dict(entry.get("options_by_budget") or {}).items():
            if not isinstance(values, dict):
                raise InputError(f"{label}: options_by_budget.{option} must map budget -> value, got {values!r}")
            by_budget[option] = {str(b): v for b, v in values.items()}  # YAML reads `1:` as a number
            if not set(by_budget[option]) & set(labels):
                raise InputError(f"{label}: options_by_budget.{option} names none of the plan's budgets "
                                 f"({', '.join(labels)}); it has {', '.join(by_budget[option])}")
        if by_budget:
            entry["options_by_budget"] = by_budget
        points = [{}]
        for option, values in sorted((entry.get("grid") or {}).items()):
            if not isinstance(values, list) or not values:
                raise InputError(f"{label}: grid.{option} must be a non-empty list of values, got {values!r}")
            points = [dict(p, **{option: v}) for p in points for v in values]
        base = dict(entry.get("options") or {})
        if name == "freeze":
            base["layers"] = layers
        for budget in labels:
            for point in points:
                options = dict(base, **{o: v[budget] for o, v in by_budget.items() if budget in v}, **point)
                _strategy_builds(arch, name, options, f"{label} (budget {budget})")


_FIRST_FLOAT = {}  # (arch, strategy, option) -> the first float value checked for it in this process


def _strategy_builds(arch: str, name: str, options: dict, label: str) -> None:
    """Build the strategy with `options`, except that each float option takes the first value seen for it (a
    value of the plan), so a grid over lambda is one build; the value rules check every value."""
    _option_values(options, label)
    structural = {o: (_FIRST_FLOAT.setdefault((arch, name, o), v) if isinstance(v, float) else v)
                  for o, v in options.items()}
    try:
        _build_strategy(arch, name, json.dumps(structural, sort_keys=True, default=str))
    except (InputError, TypeError, ValueError) as exc:
        raise InputError(f"{label}: {str(exc).strip().splitlines()[0]}") from None


def _option_values(options: dict, label: str) -> None:
    """The value rules of numeric options: every float finite, lambda (`lam`) >= 0, temperature > 0."""
    for option, value in options.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise InputError(f"{label}: option {option} = {value!r} must be a finite number")
    if "lam" in options and not (_number(options["lam"]) and options["lam"] >= 0):
        raise InputError(f"{label}: lam {options['lam']!r}: the policy penalty's weight lambda must be >= 0")
    if "temperature" in options and not (_number(options["temperature"]) and options["temperature"] > 0):
        raise InputError(f"{label}: temperature {options['temperature']!r} must be > 0")


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _layer_selection(arch: str, spec: str, label: str, registered: Sequence[str], groups: Sequence[str]) -> None:
    """A bare strategy entry that is not a registered strategy is a layer selection of `arch` (freeze)."""
    from ..training.layers import trainable_names

    try:
        trainable_names(_model(arch), arch, spec)
    except InputError as exc:
        simple = spec.strip().isidentifier()
        if simple:
            kinds = (f"is neither a strategy ({', '.join(registered)}) nor" if registered else "is not")
            raise InputError(
                f"{label} {kinds} a layer group of {arch} ({', '.join(groups)}, bn, regex:PATTERN or module "
                f"paths)" + _did_you_mean(spec, [*groups, *registered])
            ) from None
        raise InputError(f"{label}: {str(exc).strip().splitlines()[0]}") from None


def _did_you_mean(word: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(str(word), list(choices), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


# ---- against the data -------------------------------------------------------------------------------------


def plan_targets(plan: dict, splits: dict) -> list:
    """The target domains the plan's pairs reach in this data (the grid's own pair rule)."""
    from .grid.specs import chosen_pairs

    domains = list(splits["domains"])
    sources = domains if plan["sources"] == "all" else [d for d in plan["sources"] if d in domains]
    targets = domains if plan["targets"] == "all" else [d for d in plan["targets"] if d in domains]
    pairs = [p for p in splits["pairs"] if p["source"] in sources and p["target"] in targets]
    pairs = chosen_pairs(pairs, plan["pairs"], "pairs")
    return [d for d in domains if d in {p["target"] for p in pairs}]


def check_plan_data(plan: dict, splits: dict, where: str) -> None:
    """InputError for a plan entry this data cannot serve: an oracle fold the split does not have (it would be
    left out silently), a cv_folds the target cannot be split into with every budget, a slice budget on a
    2D target."""
    from ..data import splits as splits_mod
    from ..data.budgets import make_budget
    from ..data.budgets import parse_budget_label as parse_budget

    targets = plan_targets(plan, splits)
    budgets = [(b, *parse_budget(b)) for b in plan["budgets"]]
    if plan["oracles"]:
        for domain in targets:
            n = len((splits.get("oracle") or {}).get(domain) or [])
            missing = [f for f in plan["folds"] if f >= n]
            if missing:
                have = f"0-{n - 1}" if n > 1 else ("0" if n == 1 else "none")
                raise InputError(
                    f"{where}: folds: fold {missing[0]} is not an oracle fold of {domain} (the splits have "
                    f"{n}: {have}); drop it or set oracles: false"
                )
    for domain in targets:
        images2d = splits_mod.domain_is_2d(splits, domain)
        for label, scans, k in budgets:
            _refuse(where, f"budgets {label} on {domain}", make_budget, scans, f"1/{k}" if k else "all",
                    images2d=images2d)
    cv = plan["cv_folds"]
    if cv:
        for domain in targets:
            n = len(splits["one2one"][domain]["permutation"])
            if cv > n:
                raise InputError(f"{where}: cv_folds {cv}: {domain} has only {n} scan(s) to split into folds")
            for fold in range(cv):
                for label, scans, _ in budgets:
                    try:
                        splits_mod.cv_fold_ids(splits, cv, fold, domain=domain, n_finetune=scans)
                    except InputError:
                        train, _ = splits_mod.cv_fold_ids(splits, cv, fold, domain=domain)
                        raise InputError(
                            f"{where}: budgets {label} with cv_folds {cv}: fold {fold} of {domain} has "
                            f"{len(train)} fine-tune scan(s)"
                        ) from None


# ---- degenerate budgets -----------------------------------------------------------------------------------


def budget_slices(specs: Sequence, splits: dict) -> dict:
    """{(target, budget, fold): (fine-tune ids, slice interval k)} of the adapted runs that read target masks."""
    from ..data import splits as splits_mod
    from ..training.strategies import LABEL_FREE

    out = {}
    for spec in specs:
        if spec.kind != "adapt" or spec.strategy in LABEL_FREE or not spec.budget:
            continue
        key = (spec.target, spec.budget, spec.fold if spec.folds else None)
        if key in out:
            continue
        if spec.folds:
            ids, _ = splits_mod.cv_fold_ids(splits, int(spec.folds), int(spec.fold), domain=spec.target,
                                            n_finetune=spec.scans)
        else:
            ids = splits_mod.finetune_ids(splits, spec.target, spec.scans)
        k = int(spec.slices.split("/")[1]) if spec.slices else 1
        out[key] = (list(ids), k)
    return out


def budget_warnings(specs: Sequence, context: dict, *, num_workers: int = 1) -> list:
    """One line per budget whose allowed fine-tune slices hold fewer than MIN_FOREGROUND_SLICES slices with any
    foreground voxel (e.g. 1/8 of a 12-slice scan: slices 0 and 8, and slice 0 is empty). Opens (and caches) the
    preprocessed fine-tune scans, since the slice count is that of the preprocessed grid."""
    from ..data import splits as splits_mod
    from ..data.budgets import comb_slices
    from .stages import open_volumes

    wanted = budget_slices(specs, splits_mod.read_splits(context["splits"]))
    ids = list(dict.fromkeys(i for scan_ids, _ in wanted.values() for i in scan_ids))
    if not ids:
        return []
    volumes = {v.id: v for v in open_volumes(context["manifest"], ids, cache=context["cache"],
                                             preprocess=context["preprocess"], num_workers=num_workers,
                                             progress=False)}
    lines = []
    for (target, budget, fold), (scan_ids, k) in wanted.items():
        allowed = foreground = 0
        for scan_id in scan_ids:
            mask = volumes[scan_id].mask
            comb = comb_slices(mask.shape[0], k)
            allowed += len(comb)
            foreground += int(sum(bool(mask[int(z)].any()) for z in comb))
        if foreground < MIN_FOREGROUND_SLICES:
            where = f"{target}" + ("" if fold is None else f" fold {fold}")
            lines.append(
                f"warning: budget {budget} of {where} is degenerate: its {allowed} fine-tune slice(s) "
                f"({len(scan_ids)} scan(s), every {k}th slice) hold {foreground} with foreground, fewer than "
                f"{MIN_FOREGROUND_SLICES}; its fine-tuned runs learn from almost no object"
            )
    return lines
