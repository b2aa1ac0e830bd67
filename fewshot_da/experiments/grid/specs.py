"""A plan expanded into frozen run specs with stable ids (RunSpec, build_specs) and the grid folder's names."""
from __future__ import annotations

import dataclasses
import json
from typing import Optional

from ...data.budgets import budget_slug
from ...data.budgets import parse_budget_label as parse_budget
from ...errors import InputError


KINDS = ("source", "oracle", "baseline", "adapt")
RESULTS = "results.csv"
GRID_FILE = "grid.json"
GRID_LOCK = ".grid-lock"  # the stages hold .lock themselves while they write


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """One run of a grid. budget: '' or a label ('3', '1/8'); options: strategy options as sorted JSON;
    overrides: TrainConfig overrides as sorted JSON; parent: the run id of the source model ('' if none)."""

    run_id: str
    kind: str
    arch: str
    source: str = ""
    target: str = ""
    strategy: str = ""
    layers: str = ""
    options: str = "{}"
    budget: str = ""
    seed: int = 0
    fold: Optional[int] = None
    folds: Optional[int] = None  # adapted runs on CV fold `fold` of `folds` over the target
    parent: str = ""
    overrides: str = "{}"
    pair_index: Optional[int] = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def scans(self) -> int:
        return int(self.budget.split("/")[0]) if self.budget else 0

    @property
    def slices(self) -> Optional[str]:
        return f"1/{self.budget.split('/')[1]}" if "/" in self.budget else None


def _json(value) -> str:
    return json.dumps(value or {}, sort_keys=True)


def _index_range(text, where: str) -> set:
    """'5-29' or '0,3,7' or [0, 3] -> a set of pair indices."""
    if isinstance(text, (list, tuple)):
        return {int(v) for v in text}
    out = set()
    for part in str(text).split(","):
        lo, _, hi = part.strip().partition("-")
        try:
            out.update(range(int(lo), int(hi or lo) + 1))
        except ValueError:
            raise InputError(f"{where}: pairs {text!r}: expected a range like 5-29 or a list") from None
    return out


def chosen_pairs(pairs: list, chosen, where: str) -> list:
    """The split's `pairs` a plan's `pairs` entry keeps: [[source, target], ...], an index range ('5-29', '0,3')
    or a list of indices; None keeps all."""
    if chosen is None:
        return pairs
    if isinstance(chosen, list) and chosen and isinstance(chosen[0], (list, tuple)):
        wanted = {tuple(p) for p in chosen}
        return [p for p in pairs if (p["source"], p["target"]) in wanted]
    keep = _index_range(chosen, where)
    return [p for p in pairs if p["index"] in keep]


def _strategy_entries(plan: dict) -> list:
    """Every plan strategy as {name, layers, options, pairs, options_by_budget, grid}. A bare name is a registered
    strategy with its defaults (`spottune`, `gradual`, `adabn`, ...) or else a layer group to fine-tune (`first`)."""
    out = []
    registered = set(available_strategies()) - {"freeze"}
    for entry in plan["strategies"]:
        if isinstance(entry, str):
            name, layers = (entry, "") if entry in registered else ("freeze", entry)
            out.append({"name": name, "layers": layers, "options": {}, "pairs": None, "by_budget": {}, "grid": {}})
            continue
        if not isinstance(entry, dict) or "name" not in entry:
            raise InputError(
                f"plan {plan['name']}: a strategy is a layer group name or a mapping with a name"
            )
        unknown = set(entry) - {"name", "layers", "options", "pairs", "options_by_budget", "grid"}
        if unknown:
            raise InputError(
                f"plan {plan['name']}: strategy {entry['name']}: unknown key {sorted(unknown)[0]!r}"
            )
        out.append(
            {
                "name": entry["name"],
                "layers": entry.get("layers", ""),
                "options": dict(entry.get("options") or {}),
                "pairs": entry.get("pairs"),
                "by_budget": dict(entry.get("options_by_budget") or {}),
                "grid": dict(entry.get("grid") or {}),
            }
        )
    return out


def available_strategies() -> tuple:
    """Adaptation strategies registered in this install (training.strategies.STRATEGIES)."""
    from ...training.strategies import STRATEGIES

    return tuple(STRATEGIES)


def _slug(options: dict) -> str:
    return "-".join(f"{k}{v}" for k, v in sorted(options.items()))


def build_specs(plan: dict, splits: dict) -> list:
    """The plan's runs in dependency order (sources and oracles first), each with a stable id.

    `splits` is the split dict of the grid's data (domains, one2all, oracle folds, one2one, pairs). Raises
    InputError for a domain, budget or strategy the data or the installed package cannot serve.
    """
    name, arch = plan["name"] or "plan", plan["arch"]
    from ...models import check_arch

    check_arch(arch)
    domains = list(splits["domains"])
    for key in ("sources", "targets"):
        if plan[key] != "all":
            missing = [d for d in plan[key] if d not in domains]
            if missing:
                raise InputError(
                    f"plan {name}: {key[:-1]} {missing[0]!r} is not a domain of the data "
                    f"({', '.join(domains)})"
                )
    sources = domains if plan["sources"] == "all" else plan["sources"]
    targets = domains if plan["targets"] == "all" else plan["targets"]
    pairs = [p for p in splits["pairs"] if p["source"] in sources and p["target"] in targets]
    pairs = chosen_pairs(pairs, plan["pairs"], f"plan {name}")
    if not pairs:
        raise InputError(f"plan {name}: no source -> target pair in the data (domains {', '.join(domains)})")
    strategies = _strategy_entries(plan)
    known = available_strategies()
    for s in strategies:
        if s["name"] not in known:
            raise InputError(
                f"plan {name}: strategy {s['name']!r} is not registered in this install "
                f"(available: {', '.join(known)})"
            )
    budgets = [(b, *parse_budget(b)) for b in plan["budgets"]]
    cv = plan["cv_folds"]
    fold_list = list(range(cv)) if cv else [None]
    for target in sorted({p["target"] for p in pairs}) if not cv else []:
        have = set((splits["one2one"].get(target) or {}).get("finetune", {}))
        for label, scans, _ in budgets:
            if str(scans) not in have:
                raise InputError(
                    f"plan {name}: budget {label} needs {scans} fine-tune scan(s) of {target}; the "
                    f"splits have {', '.join(sorted(have, key=int)) or 'none'} (data.splits_options)"
                )
    source_over = dict(plan["schedules"].get("source") or {}, seed=plan["model_seed"])
    augmented = plan.get("augmented_baseline") if plan["baselines"] else None
    source_kinds = [("source", source_over)] + ([("source-aug", dict(source_over, augment=augmented))]
                                                if augmented else [])
    specs = []
    for source in dict.fromkeys(p["source"] for p in pairs):
        for prefix, over in source_kinds:
            specs.append(
                RunSpec(
                    f"{prefix}/{arch}/{source}",
                    "source",
                    arch,
                    source=source,
                    target=source,
                    seed=plan["model_seed"],
                    overrides=_json(over),
                )
            )
    if plan["oracles"]:
        for domain in [d for d in domains if d in {p["target"] for p in pairs}]:  # D_O of every target
            folds = splits["oracle"].get(domain) or []
            for fold in [f for f in plan["folds"] if f < len(folds)]:
                specs.append(
                    RunSpec(
                        f"oracle/{arch}/{domain}/f{fold}",
                        "oracle",
                        arch,
                        source=domain,
                        target=domain,
                        strategy="oracle",
                        seed=plan["model_seed"],
                        fold=fold,
                        overrides=_json(source_over),
                    )
                )
    min_scans = min(scans for _, scans, _ in budgets)
    fold_suffix = {f: ("" if f is None else f"/f{f}") for f in fold_list}
    baseline_kinds = [("baseline", "source")] + ([("baseline-aug", "source-aug")] if augmented else [])
    for p in pairs if plan["baselines"] else []:
        pair = f"{p['source']}-{p['target']}"
        for f in fold_list:  # with CV folds, one baseline per fold scores that fold's test part
            for strategy, parent in baseline_kinds:
                specs.append(
                    RunSpec(
                        f"{strategy}/{arch}/{pair}{fold_suffix[f]}",
                        "baseline",
                        arch,
                        source=p["source"],
                        target=p["target"],
                        strategy=strategy,
                        seed=plan["model_seed"],
                        fold=f,
                        folds=cv,
                        parent=f"{parent}/{arch}/{p['source']}",
                        options=_json({"test_scans_of_budget": min_scans}),
                        pair_index=p["index"],
                    )
                )
    for p in pairs:
        pair = f"{p['source']}-{p['target']}"
        for s in strategies:
            if s["pairs"] is not None and p["index"] not in _index_range(s["pairs"], f"plan {name}"):
                continue
            grid_keys = sorted(s["grid"])
            grid_points = [dict()]
            for key in grid_keys:
                grid_points = [dict(g, **{key: v}) for g in grid_points for v in s["grid"][key]]
            for label, _, _ in budgets:
                for point in grid_points:
                    options = dict(
                        s["options"],
                        **{k: v[label] for k, v in s["by_budget"].items() if label in v},
                        **point,
                    )
                    if s["name"] == "freeze":
                        method, layers = s["layers"], s["layers"]
                    else:
                        layers = s["layers"] or _slug(point)
                        method = "-".join(x for x in (s["name"], s["layers"], _slug(point)) if x)
                    for seed, f in [(seed, f) for seed in plan["seeds"] for f in fold_list]:
                        over = dict(plan["schedules"].get("finetune") or {}, seed=seed)
                        specs.append(
                            RunSpec(
                                f"adapt/{arch}/{pair}/{method}/{budget_slug(label)}/s{seed}{fold_suffix[f]}",
                                "adapt",
                                arch,
                                source=p["source"],
                                target=p["target"],
                                strategy=s["name"],
                                layers=layers,
                                options=_json(options),
                                budget=label,
                                seed=seed,
                                fold=f,
                                folds=cv,
                                parent=f"source/{arch}/{p['source']}",
                                overrides=_json(over),
                                pair_index=p["index"],
                            )
                        )
    ids = [s.run_id for s in specs]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise InputError(f"plan {name}: two runs share the id {dup!r} (repeated strategy or budget?)")
    return specs


# ---- data -------------------------------------------------------------------------------------------------
