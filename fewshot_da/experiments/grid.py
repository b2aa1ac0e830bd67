"""An experiment grid: a plan expanded into frozen run specs with stable ids, run folders and results.csv.

Layout of a grid folder DIR: `grid.json` (plan, data and every spec), `data/` (generated or indexed data,
manifest, splits; `ready.json` names them with their sha256 and the plan's `data`), `cache/` (preprocessed
volumes), `runs/<run id>/` (one run folder each, see stages.py, plus `spec.json`, `grid_run.json` (the data,
preset, preprocessing and tolerances it was made with, and its CPU thread count), `error.txt` on failure and
`.grid-lock` while a grid worker holds it, with its pid and host) and `results.csv`.

A re-run refuses a folder made from other data or settings (naming what differs) before it runs anything.

Run ids: `source/<arch>/<domain>`, `oracle/<arch>/<domain>/f<fold>`, `baseline/<arch>/<source>-<target>`,
`adapt/<arch>/<source>-<target>/<method>/<budget>/s<seed>` (budget 1/8 written 1_8). Source models are shared
by their baseline and adapted runs; a run whose `summary.json` parses is finished and never recomputed.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import socket
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Optional

from ..atomic import write_json_atomic
from ..errors import InputError
from .results import append_results, read_results, rewrite_results, rows_from_summary

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


def budget_slug(budget: str) -> str:
    return budget.replace("/", "_")


def parse_budget(label: str) -> tuple:
    """'3' -> (3, None); '1/8' -> (1, 8). InputError for anything else."""
    text = str(label).strip()
    head, _, tail = text.partition("/")
    try:
        scans, k = int(head), (int(tail) if tail else None)
    except ValueError:
        raise InputError(
            f"budget {label!r}: expected N (scans or images) or 1/k (a share of one scan)"
        ) from None
    if scans < 1 or (k is not None and (scans != 1 or k < 2)):
        raise InputError(f"budget {label!r}: expected N >= 1 or 1/k with k >= 2")
    return scans, k


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
    from ..training.strategies import STRATEGIES

    return tuple(STRATEGIES)


def _slug(options: dict) -> str:
    return "-".join(f"{k}{v}" for k, v in sorted(options.items()))


def build_specs(plan: dict, splits: dict) -> list:
    """The plan's runs in dependency order (sources and oracles first), each with a stable id.

    `splits` is the split dict of the grid's data (domains, one2all, oracle folds, one2one, pairs). Raises
    InputError for a domain, budget or strategy the data or the installed package cannot serve.
    """
    name, arch = plan["name"] or "plan", plan["arch"]
    from ..models import check_arch

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
    if plan["pairs"] is not None:
        if isinstance(plan["pairs"], list) and plan["pairs"] and isinstance(plan["pairs"][0], (list, tuple)):
            wanted = {tuple(p) for p in plan["pairs"]}
            pairs = [p for p in pairs if (p["source"], p["target"]) in wanted]
        else:
            keep = _index_range(plan["pairs"], f"plan {name}")
            pairs = [p for p in pairs if p["index"] in keep]
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


def prepare_data(plan: dict, grid_dir, *, num_workers: int = 2, log=print) -> dict:
    """Make or find the grid's manifest and splits: {manifest, splits} (paths). Generated data go to DIR/data
    and are made once (the marker `data/ready.json` is written last)."""
    from ..data import splits as splits_mod
    from ..data.manifest import read_manifest, write_manifest

    data = plan["data"]
    out = Path(grid_dir) / "data"
    ready = out / "ready.json"
    if ready.is_file():
        return _check_ready(ready, data)
    if data.get("manifest"):
        manifest = Path(data["manifest"])
        if not manifest.is_file():
            raise InputError(f"{manifest}: manifest not found (plan data.manifest or --data)")
        if data.get("splits"):
            if not Path(data["splits"]).is_file():
                raise InputError(f"{data['splits']}: splits file not found (plan data.splits or --splits)")
            info = {"manifest": str(manifest), "splits": str(data["splits"])}
            write_json_atomic(ready, _ready_record(info, data))
            return info
        records = read_manifest(manifest)
    elif data.get("generator") == "phantoms":
        from ..data.phantoms import write_phantom_dataset

        log(
            f"data: phantoms {data.get('domains')} x {data.get('scans_per_domain', 6)} scans "
            f"{data.get('shape')}"
        )
        options = {k: data[k] for k in ("domains", "scans_per_domain", "shape", "seed") if k in data}
        records = write_phantom_dataset(out / "phantoms", **options)
        manifest = write_manifest(records, out / "manifest.csv")
    elif data.get("generator") == "ixi-shift":
        records, manifest = _ixi_shift(data, out, log)
    else:
        records, manifest = _indexed(data, out, log)
    splits_path = out / "splits.json"
    splits_mod.write_splits(records, splits_path, **dict(data.get("splits_options") or {}))
    info = {"manifest": str(Path(manifest).resolve()), "splits": str(splits_path.resolve())}
    write_json_atomic(ready, _ready_record(info, data))
    return info


def data_digests(info: dict) -> dict:
    """sha256 of the grid's manifest and split file contents: {manifest, splits}."""
    from .run_folder import file_digest

    return {key: file_digest(info[key]) for key in ("manifest", "splits")}


def _plain(value):
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def _ready_record(info: dict, data: dict) -> dict:
    """data/ready.json: the manifest and splits the grid uses, their content digests and the plan's `data`."""
    return {**info, "sha256": data_digests(info), "data": _plain(data)}


def _check_ready(ready: Path, data: dict) -> dict:
    """The manifest and splits of data/ready.json, refused (one line naming what differs) when the plan's data
    or the content of those files changed since the grid was made: its finished runs came from that data."""
    try:
        record = json.loads(ready.read_text())
        info = {"manifest": record["manifest"], "splits": record["splits"]}
    except (OSError, ValueError, KeyError, TypeError):
        raise InputError(f"{ready}: not valid JSON naming the grid's manifest and splits; delete it to "
                         "prepare the data again") from None
    hint = "use a new --out folder for other data, or give the data this grid was made from"
    if "data" in record:  # older grids recorded no plan data: nothing to compare
        old, new = record["data"], _plain(data)
        differ = [k for k in dict.fromkeys([*new, *old]) if old.get(k) != new.get(k)]
        if differ:
            shown = "; ".join(f"data.{k}: grid {old.get(k)!r}, now {new.get(k)!r}" for k in differ[:3])
            raise InputError(f"{ready.parent.parent}: this grid was made from other data ({shown}); {hint}")
    for key in ("manifest", "splits"):
        if not Path(info[key]).is_file():
            raise InputError(f"{info[key]}: the grid's {key} file is gone (named by {ready}); {hint}")
    if "sha256" in record:
        now = data_digests(info)
        changed = [k for k in ("manifest", "splits") if now[k] != record["sha256"].get(k)]
        if changed:
            raise InputError(f"{info[changed[0]]}: the grid's {changed[0]} file changed since the grid was made "
                             f"(its sha256 differs); {hint}")
    return info


def _ixi_shift(data: dict, out: Path, log):
    """IXI-HH as domain `ixi`, plus a simulated scanner per data.shifts entry (n subjects each, moved)."""
    from ..data.datasets import index_folder
    from ..data.manifest import write_manifest
    from ..data.shift import ScannerShift, shift_domain

    records = index_folder(data["root"], domain="ixi")
    manifest = write_manifest(records, out / "manifest-0.csv")
    for i, (name, settings) in enumerate(sorted((data.get("shifts") or {}).items())):
        settings = dict(settings)
        if "blur_sigma_vox" in settings:
            settings["blur_sigma_vox"] = tuple(settings["blur_sigma_vox"])
        log(f"data: simulated scanner {name} from {data.get('n', 16)} ixi subjects ({settings})")
        nxt = out / f"manifest-{i + 1}.csv"
        records = shift_domain(
            manifest,
            "ixi",
            int(data.get("n", 16)),
            out / name,
            nxt,
            new_domain=name,
            shift=ScannerShift(**settings),
            seed=i,
        )
        manifest = nxt
    return records, write_manifest(records, out / "manifest.csv")


def _indexed(data: dict, out: Path, log):
    """data.index: [{layout, root, domain, ...options}] indexed and merged into one manifest."""
    from ..data.datasets import index_dataset
    from ..data.manifest import check_unique_ids, write_manifest

    records = []
    for entry in data["index"]:
        entry = dict(entry)
        layout, root = entry.pop("layout", "folder"), entry.pop("root")
        log(f"data: index {layout} {root} {entry}")
        found, problems = index_dataset(layout, root, **entry)
        records += list(found)
        for problem in problems[:5]:
            log(f"data: {problem}")
    check_unique_ids(records, "plan data.index")
    return records, write_manifest(records, out / "manifest.csv")


def preprocess_all(context: dict, domains: Sequence[str], *, num_workers: int, progress: bool) -> None:
    """Preprocess every scan of `domains` into the grid cache once, before any run (runs then only read)."""
    from ..data.manifest import read_manifest
    from ..data.preprocess import preprocess_manifest, preprocess_options

    records = [r for r in read_manifest(context["manifest"]) if r.domain in set(domains)]
    preprocess_manifest(
        records,
        context["cache"],
        preprocess_options(context["preprocess"]),
        num_workers=num_workers,
        progress=progress,
    )


# ---- one run ----------------------------------------------------------------------------------------------


def run_dir(grid_dir, run_id: str) -> Path:
    return Path(grid_dir) / "runs" / run_id


def _run_spec(spec: RunSpec, context: dict, grid_dir, num_threads: Optional[int]) -> dict:
    """The one adapter between the grid and the stages: run `spec` into its folder and return its summary."""
    from ..data import splits as splits_mod
    from . import stages

    out = run_dir(grid_dir, spec.run_id)
    overrides = json.loads(spec.overrides)
    tolerances = tuple(context["tolerances_mm"])
    common = dict(
        arch=spec.arch,
        preset=context["preset"],
        preprocess=context["preprocess"],
        cache=context["cache"],
        overrides=overrides,
        tolerances_mm=tolerances,
        num_threads=num_threads,
        progress=False,
    )
    if spec.kind == "source":
        return stages.train(
            manifest=context["manifest"], splits=context["splits"], source=spec.source, out=out, **common
        )
    split = splits_mod.read_splits(context["splits"])
    if spec.kind == "oracle":
        fold = splits_mod.oracle_fold(split, spec.target, spec.fold)
        return stages.train(
            manifest=context["manifest"],
            splits=context["splits"],
            ids=fold["train"],
            eval_ids=fold["test"],
            out=out,
            **common,
        )
    parent = run_dir(grid_dir, spec.parent)
    if spec.kind == "baseline":  # the source model on the pair's test scans: strategy `none`
        strategy, options = "none", {}
        scans = json.loads(spec.options)["test_scans_of_budget"]
    else:
        strategy, options = spec.strategy, json.loads(spec.options)
        scans = spec.scans
        if strategy == "freeze":
            options = dict(options, layers=spec.layers)
    return stages.adapt(
        model=parent,
        target=spec.target,
        out=out,
        strategy=strategy,
        strategy_options=options,
        scans=scans,
        folds=spec.folds,
        fold=spec.fold if spec.folds else None,
        slices=spec.slices,
        preset=context["preset"],
        overrides=overrides,
        tolerances_mm=tolerances,
        num_threads=num_threads,
        progress=False,
    )


def result_rows(spec: RunSpec, summary: dict) -> list:
    """results.csv rows of a finished run (none for source models: they are scored on their own val scans)."""
    if spec.kind == "source":
        return []
    fields = dict(
        arch=spec.arch,
        source=spec.source,
        target=spec.target,
        strategy=spec.strategy,
        layers=spec.layers,
        budget=spec.budget,
        seed=spec.seed,
        fold="" if spec.fold is None else spec.fold,
    )
    return rows_from_summary(summary, spec.run_id, **fields)


def _read_summary(path: Path) -> Optional[dict]:
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return summary if isinstance(summary, dict) else None


SUMMARY = "summary.json"
CORRUPT = "summary.json.corrupt"  # a summary that did not parse, set aside when its run is done again
RUN_IDENTITY = "grid_run.json"  # what a grid run was made from: data digests, preset, preprocess, tolerances


def is_done(grid_dir, run_id: str) -> bool:
    """A run is finished when its summary.json exists and parses (a truncated one is not finished)."""
    return _read_summary(run_dir(grid_dir, run_id) / SUMMARY) is not None


def run_identity(spec: RunSpec, context: dict) -> dict:
    """What a grid run is made from, beyond its spec: the grid's manifest and splits (paths and content
    digests), preset and preprocessing (refused when they differ), and the scoring tolerances."""
    return _plain({
        "run": spec.run_id,
        "data": context.get("data"),
        "manifest": context["manifest"],
        "splits": context["splits"],
        "sha256": context.get("sha256"),
        "preset": context["preset"],
        "preprocess": context["preprocess"],
        "tolerances_mm": [float(t) for t in context["tolerances_mm"]],
    })


IDENTITY_KEYS = ("data", "manifest", "splits", "sha256", "preset", "preprocess")
_IDENTITY_WORDS = {"data": "plan data", "manifest": "manifest path", "splits": "split file path",
                   "sha256": "manifest or split file content (sha256)", "preset": "preset",
                   "preprocess": "preprocessing"}


def _identity_problem(folder: Path, spec: RunSpec, context: dict) -> Optional[str]:
    """Why `folder` holds a run made from other data or settings than `context` (None when it does not): the
    grid's own record (grid_run.json), else the stage's run.yaml (its manifest and split file paths)."""
    if not any((folder / name).exists() for name in (SUMMARY, CORRUPT, "checkpoint.pt")):
        return None  # not started: the run will be made afresh from the grid's data
    want = run_identity(spec, context)
    saved = _read_summary(folder / RUN_IDENTITY)
    if saved is not None:
        differ = [k for k in IDENTITY_KEYS if saved.get(k) != want.get(k)]
        if differ:
            words = ", ".join(_IDENTITY_WORDS[k] for k in differ)
            key = next((k for k in differ if k not in ("sha256", "data")), None)
            detail = f": was {saved.get(key)!r}, now {want.get(key)!r}" if key else ""
            return f"its {words} {'differs' if len(differ) == 1 else 'differ'}{detail}"
        if spec.kind != "source" and _read_summary(folder / SUMMARY) is not None:  # sources make no rows
            old_tol = [float(t) for t in saved.get("tolerances_mm") or []]
            if old_tol and old_tol != want["tolerances_mm"]:
                return (f"it was scored at tolerances_mm {_mm(old_tol)}, the plan asks {_mm(want['tolerances_mm'])}; "
                        "a finished grid run keeps no predictions to score again (set tolerances_mm back, or "
                        "use a new --out)")
        return None
    run_file = folder / "run.yaml"
    if run_file.is_file():
        from .run_folder import read_run

        old = read_run(folder).get("spec") or {}
        for key in ("manifest", "splits"):
            if old.get(key) and Path(str(old[key])).resolve() != Path(str(context[key])).resolve():
                return f"its {key} differs (was {old[key]}, now {context[key]})"
    return None


def _mm(values) -> str:
    return ", ".join(f"{v:g}" for v in values) + " mm"


def _check_spec_file(folder: Path, spec: RunSpec) -> None:
    path = folder / "spec.json"
    if path.is_file():
        saved = _read_summary(path)
        if saved is not None and saved != spec.to_dict():
            diff = sorted(k for k in spec.to_dict() if saved.get(k) != spec.to_dict()[k])
            raise InputError(
                f"{folder}: made by a different plan ({', '.join(diff)} differ); "
                "use a new --out folder or delete this run"
            )
    else:
        write_json_atomic(path, spec.to_dict())


def check_existing(grid_dir, specs: Sequence[RunSpec], context: Optional[dict] = None) -> None:
    """InputError when a run folder of `specs` already holds a run of a different spec, or (with `context`)
    one made from other data or settings (named: the run, how many runs, what differs)."""
    bad = []
    for spec in specs:
        folder = run_dir(grid_dir, spec.run_id)
        if (folder / "spec.json").is_file():
            _check_spec_file(folder, spec)
        if context is not None and folder.is_dir():
            problem = _identity_problem(folder, spec, context)
            if problem:
                bad.append((folder, problem))
    if bad:
        folder, problem = bad[0]
        more = f" (and {len(bad) - 1} more run folder(s))" if len(bad) > 1 else ""
        raise InputError(f"{folder}: holds a run made from other data or settings: {problem}{more}; use a new "
                         "--out folder, or delete those runs")


def _threads() -> int:
    import torch

    return int(torch.get_num_threads())


def _held_by(lock_path: Path) -> str:
    try:
        text = lock_path.read_text().strip()
    except OSError:
        text = ""
    return text or "another process"


def execute_run(grid_dir, spec: dict, context: dict, num_threads: Optional[int] = None) -> dict:
    """Run one spec (a dict) unless it is finished or held by another worker; append its results rows.

    Returns {run, status: done|skipped|busy|failed, seconds, error}. Errors are caught and written to the
    run's error.txt (one line); busy names the holder (pid and host); SystemExit/KeyboardInterrupt (a
    preemption, a kill) propagate. A summary.json that does not parse is set aside (summary.json.corrupt)
    and the run is done again.
    """
    spec = RunSpec(**spec)
    folder = run_dir(grid_dir, spec.run_id)
    if is_done(grid_dir, spec.run_id):
        return {"run": spec.run_id, "status": "skipped", "seconds": 0.0}
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / GRID_LOCK, "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return {"run": spec.run_id, "status": "busy", "seconds": 0.0,
                    "error": f"held by another process ({_held_by(folder / GRID_LOCK)})"}
        lock.seek(0)
        lock.truncate()
        lock.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        lock.flush()
        if is_done(grid_dir, spec.run_id):
            return {"run": spec.run_id, "status": "skipped", "seconds": 0.0}
        _check_spec_file(folder, spec)
        if (folder / SUMMARY).exists():  # it does not parse (a truncated write): not finished, set it aside
            os.replace(folder / SUMMARY, folder / CORRUPT)
        threads = int(num_threads) if num_threads else _threads()
        write_json_atomic(folder / RUN_IDENTITY, dict(run_identity(spec, context), threads=threads))
        (folder / "error.txt").unlink(missing_ok=True)
        (folder / "error_traceback.txt").unlink(missing_ok=True)
        start = time.perf_counter()
        try:
            summary = _run_spec(spec, context, grid_dir, num_threads)
        except Exception as exc:  # one failed run must not stop the grid; the error is kept with the run
            message = (
                f"{type(exc).__name__}: {exc}".splitlines()[0]
                if not isinstance(exc, InputError)
                else str(exc)
            )
            (folder / "error.txt").write_text(message + "\n")
            if not isinstance(exc, InputError):  # an unexpected error: keep where it came from, for a bug report
                (folder / "error_traceback.txt").write_text(traceback.format_exc())
            return {
                "run": spec.run_id,
                "status": "failed",
                "seconds": time.perf_counter() - start,
                "error": message,
            }
        seconds = time.perf_counter() - start
        (folder / CORRUPT).unlink(missing_ok=True)
        write_json_atomic(
            folder / "grid_timing.json",
            {"wall_s": seconds, "host": socket.gethostname(), "pid": os.getpid(), "threads": threads},
        )
        rows = result_rows(spec, summary)
        if rows:  # the run is finished either way: finish_results rewrites every row from the summaries
            try:
                append_results(Path(grid_dir) / RESULTS, rows)
            except (OSError, InputError) as exc:
                (folder / "append_error.txt").write_text(f"{type(exc).__name__}: {exc}\n")
        if spec.kind in ("adapt", "baseline") and not context.get("keep_checkpoints"):
            (folder / "checkpoint.pt").unlink(missing_ok=True)
    return {"run": spec.run_id, "status": "done", "seconds": seconds}


def run_failure(grid_dir, run_id: str, default: str) -> str:
    """What became of a run that did not finish: the one-line error it left (error.txt), else `default` (e.g.
    where its logs are) with how far it got (interrupted with a checkpoint, or never started)."""
    folder = run_dir(grid_dir, run_id)
    try:
        text = (folder / "error.txt").read_text().strip()
    except OSError:
        text = ""
    if text:
        return text.splitlines()[0]
    if (folder / "checkpoint.pt").is_file():
        return f"{default}; it was interrupted mid-run (checkpoint.pt kept: a re-run resumes it)"
    if (folder / CORRUPT).is_file() or (folder / SUMMARY).is_file():
        return f"{default}; its summary.json is damaged (a re-run does it again)"
    return f"{default}; it was interrupted before its first checkpoint (a re-run starts it again)"


# ---- the grid as a whole ----------------------------------------------------------------------------------


def open_grid(plan: dict, grid_dir, *, num_workers: int = 2, log=print) -> dict:
    """Prepare data, expand the plan and write DIR/grid.json; returns {context, specs}."""
    grid_dir = Path(grid_dir)
    grid_dir.mkdir(parents=True, exist_ok=True)
    from ..data import splits as splits_mod

    data = prepare_data(plan, grid_dir, num_workers=num_workers, log=log)
    splits = splits_mod.read_splits(data["splits"])
    specs = build_specs(plan, splits)
    context = {
        "manifest": data["manifest"],
        "splits": data["splits"],
        "sha256": data_digests(data),
        "data": _plain(plan["data"]),
        "cache": str((grid_dir / "cache").resolve()),
        "preset": plan["preset"],
        "preprocess": plan["preprocess"],
        "tolerances_mm": plan["tolerances_mm"],
        "keep_checkpoints": bool(plan["keep_checkpoints"]),
    }
    check_existing(grid_dir, specs, context)
    write_json_atomic(
        grid_dir / GRID_FILE, {"plan": plan, "context": context, "specs": [s.to_dict() for s in specs]}
    )
    return {"context": context, "specs": specs}


def load_grid(grid_dir) -> dict:
    """{plan, context, specs} of a grid folder made by `open_grid`."""
    path = Path(grid_dir) / GRID_FILE
    if not path.is_file():
        raise InputError(
            f"{grid_dir}: not an experiment grid folder (no {GRID_FILE}); run `fewshot-da experiment`"
        )
    again = f"run `fewshot-da experiment PLAN --out {grid_dir}` again to rewrite it"
    try:
        data = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not valid JSON ({exc}); {again}") from None
    try:
        return {"plan": data["plan"], "context": data["context"], "specs": [RunSpec(**s) for s in data["specs"]]}
    except (KeyError, TypeError):
        raise InputError(f"{path}: not a grid description (plan, context and specs); {again}") from None


def collect_results(grid_dir, specs: Sequence[RunSpec]) -> list:
    """results.csv rows of every finished run of `specs`, read from their summaries."""
    rows = []
    for spec in specs:
        summary = _read_summary(run_dir(grid_dir, spec.run_id) / SUMMARY)
        if summary is not None:
            rows.extend(result_rows(spec, summary))
    return rows


def finish_results(grid_dir, specs: Sequence[RunSpec], *, log: Optional[Callable] = None) -> Path:
    """Rewrite DIR/results.csv in canonical order from the finished runs (an interrupted grid converges).

    A run whose summary.json is damaged (does not parse, or was set aside and its re-run did not finish) keeps
    the rows results.csv already holds for it, and is named through `log`; malformed lines are named too."""
    log = log or (lambda line: None)
    path = Path(grid_dir) / RESULTS
    rows = collect_results(grid_dir, specs)
    damaged = [s.run_id for s in specs if not is_done(grid_dir, s.run_id)
               and any((run_dir(grid_dir, s.run_id) / n).exists() for n in (SUMMARY, CORRUPT))]
    if damaged:
        old = read_results(path, log=log) if path.is_file() and path.stat().st_size else []
        kept = [r for r in old if r["run"] in set(damaged)]
        rows += kept
        log(f"warning: {len(damaged)} run(s) have a damaged summary.json and are not finished "
            f"({', '.join(damaged[:3])}{', ...' if len(damaged) > 3 else ''}); results.csv keeps their "
            f"{len(kept)} earlier row(s)")
    warning = thread_warning(grid_dir, specs)
    if warning:
        log(warning)
    return rewrite_results(path, rows)


def thread_warning(grid_dir, specs: Sequence[RunSpec]) -> Optional[str]:
    """One warning line when the finished CPU runs of the grid ran with different thread counts (CPU numerics
    depend on it, so a grid resumed with another count mixes them), else None."""
    by_threads = {}
    for spec in specs:
        timing = _read_summary(run_dir(grid_dir, spec.run_id) / "grid_timing.json")
        if timing and timing.get("threads") and is_done(grid_dir, spec.run_id):
            by_threads.setdefault(int(timing["threads"]), []).append(spec.run_id)
    if len(by_threads) < 2:
        return None
    parts = "; ".join(f"{n} thread(s): {len(ids)} run(s), e.g. {ids[0]}" for n, ids in sorted(by_threads.items()))
    return (f"warning: the finished runs used different CPU thread counts ({parts}); CPU results depend on the "
            "thread count, so this grid mixes numerics")


def run_state(grid_dir, spec: RunSpec) -> str:
    """done, running (a worker holds its lock), failed (error.txt), interrupted (a checkpoint), pending."""
    folder = run_dir(grid_dir, spec.run_id)
    if (folder / "summary.json").is_file():
        return "done"
    lock_path = folder / GRID_LOCK
    if lock_path.is_file():
        with open(lock_path, "a") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                fcntl.flock(lock, fcntl.LOCK_UN)
            except BlockingIOError:
                return "running"
    if (folder / "error.txt").is_file():
        return "failed"
    if (folder / "checkpoint.pt").is_file():
        return "interrupted"
    return "pending"


STATES = ("done", "running", "failed", "interrupted", "pending")


def grid_status(grid_dir) -> dict:
    """{counts: {kind: {state: n}}, failed: [(run id, error line)], total, results_rows}."""
    grid = load_grid(grid_dir)
    counts = {kind: dict.fromkeys(STATES, 0) for kind in KINDS}
    failed = []
    for spec in grid["specs"]:
        state = run_state(grid_dir, spec)
        counts[spec.kind][state] += 1
        if state == "failed":
            failed.append((spec.run_id, (run_dir(grid_dir, spec.run_id) / "error.txt").read_text().strip()))
    results = Path(grid_dir) / RESULTS
    skipped = []
    n_rows = len(read_results(results, log=skipped.append)) if results.is_file() and results.stat().st_size else 0
    return {
        "counts": {k: v for k, v in counts.items() if sum(v.values())},
        "failed": failed,
        "total": len(grid["specs"]),
        "results_rows": n_rows,
        "results_problems": skipped,
    }


def format_status(status: dict) -> str:
    lines = [f"{'kind':<10}" + "".join(f"{s:>13}" for s in STATES) + f"{'total':>8}"]
    totals = dict.fromkeys(STATES, 0)
    for kind, counts in status["counts"].items():
        lines.append(
            f"{kind:<10}" + "".join(f"{counts[s]:>13}" for s in STATES) + f"{sum(counts.values()):>8}"
        )
        for s in STATES:
            totals[s] += counts[s]
    lines.append(f"{'all':<10}" + "".join(f"{totals[s]:>13}" for s in STATES) + f"{status['total']:>8}")
    lines.append(f"results.csv: {status['results_rows']} rows")
    lines += status.get("results_problems", [])[:5]
    for run_id, error in status["failed"][:20]:
        lines.append(f"failed {run_id}: {error}")
    return "\n".join(lines)


def held_result(run_id: str, parent: dict) -> dict:
    """The result of a run whose parent another grid process holds: busy (held) too, not failed."""
    return {"run": run_id, "status": "busy", "seconds": 0.0,
            "error": f"its parent {parent['run']} is {parent.get('error', 'held by another process')}"}
