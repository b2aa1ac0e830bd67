"""An experiment grid: a plan expanded into frozen run specs with stable ids, run folders and results.csv.

Layout of a grid folder DIR: `grid.json` (plan, data and every spec), `data/` (generated or indexed data,
manifest, splits), `cache/` (preprocessed volumes), `runs/<run id>/` (one run folder each, see stages.py, plus
`spec.json`, `error.txt` on failure and `.grid-lock` while a grid worker holds it) and `results.csv`.

Run ids: `source/<arch>/<domain>`, `oracle/<arch>/<domain>/f<fold>`, `baseline/<arch>/<source>-<target>`,
`adapt/<arch>/<source>-<target>/<method>/<budget>/s<seed>` (budget 1/8 written 1_8). Source models are shared
by their baseline and adapted runs; a run with `summary.json` is finished and never recomputed.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import socket
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

from ..atomic import write_json_atomic
from ..errors import InputError
from .results import append_results, read_results, rows_from_summary, write_results

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
        return json.loads(ready.read_text())
    if data.get("manifest"):
        manifest = Path(data["manifest"])
        if not manifest.is_file():
            raise InputError(f"{manifest}: manifest not found (plan data.manifest or --data)")
        if data.get("splits"):
            if not Path(data["splits"]).is_file():
                raise InputError(f"{data['splits']}: splits file not found (plan data.splits or --splits)")
            return {"manifest": str(manifest), "splits": str(data["splits"])}
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
    write_json_atomic(ready, info)
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
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def is_done(grid_dir, run_id: str) -> bool:
    return (run_dir(grid_dir, run_id) / "summary.json").is_file()


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


def check_existing(grid_dir, specs: Sequence[RunSpec]) -> None:
    """InputError when a run folder of `specs` already holds a run of a different spec."""
    for spec in specs:
        path = run_dir(grid_dir, spec.run_id) / "spec.json"
        if path.is_file():
            _check_spec_file(path.parent, spec)


def execute_run(grid_dir, spec: dict, context: dict, num_threads: Optional[int] = None) -> dict:
    """Run one spec (a dict) unless it is finished or held by another worker; append its results rows.

    Returns {run, status: done|skipped|busy|failed, seconds, error}. Errors are caught and written to the
    run's
    error.txt (one line); SystemExit/KeyboardInterrupt (a preemption, a kill) propagate.
    """
    spec = RunSpec(**spec)
    folder = run_dir(grid_dir, spec.run_id)
    if (folder / "summary.json").is_file():
        return {"run": spec.run_id, "status": "skipped", "seconds": 0.0}
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / GRID_LOCK, "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return {"run": spec.run_id, "status": "busy", "seconds": 0.0}
        if (folder / "summary.json").is_file():
            return {"run": spec.run_id, "status": "skipped", "seconds": 0.0}
        _check_spec_file(folder, spec)
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
        write_json_atomic(
            folder / "grid_timing.json",
            {"wall_s": seconds, "host": socket.gethostname(), "pid": os.getpid(), "threads": num_threads},
        )
        rows = result_rows(spec, summary)
        if rows:
            append_results(Path(grid_dir) / RESULTS, rows)
        if spec.kind in ("adapt", "baseline") and not context.get("keep_checkpoints"):
            (folder / "checkpoint.pt").unlink(missing_ok=True)
    return {"run": spec.run_id, "status": "done", "seconds": seconds}


# ---- the grid as a whole ----------------------------------------------------------------------------------


def open_grid(plan: dict, grid_dir, *, num_workers: int = 2, log=print) -> dict:
    """Prepare data, expand the plan and write DIR/grid.json; returns {context, specs}."""
    grid_dir = Path(grid_dir)
    grid_dir.mkdir(parents=True, exist_ok=True)
    from ..data import splits as splits_mod

    data = prepare_data(plan, grid_dir, num_workers=num_workers, log=log)
    splits = splits_mod.read_splits(data["splits"])
    specs = build_specs(plan, splits)
    check_existing(grid_dir, specs)
    context = {
        "manifest": data["manifest"],
        "splits": data["splits"],
        "cache": str((grid_dir / "cache").resolve()),
        "preset": plan["preset"],
        "preprocess": plan["preprocess"],
        "tolerances_mm": plan["tolerances_mm"],
        "keep_checkpoints": bool(plan["keep_checkpoints"]),
    }
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
    data = json.loads(path.read_text())
    return {"plan": data["plan"], "context": data["context"], "specs": [RunSpec(**s) for s in data["specs"]]}


def collect_results(grid_dir, specs: Sequence[RunSpec]) -> list:
    """results.csv rows of every finished run of `specs`, read from their summaries."""
    rows = []
    for spec in specs:
        summary = _read_summary(run_dir(grid_dir, spec.run_id) / "summary.json")
        if summary is not None:
            rows.extend(result_rows(spec, summary))
    return rows


def finish_results(grid_dir, specs: Sequence[RunSpec]) -> Path:
    """Rewrite DIR/results.csv in canonical order from the finished runs (an interrupted grid converges)."""
    return write_results(Path(grid_dir) / RESULTS, collect_results(grid_dir, specs))


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
    n_rows = len(read_results(results)) if results.is_file() and results.stat().st_size else 0
    return {
        "counts": {k: v for k, v in counts.items() if sum(v.values())},
        "failed": failed,
        "total": len(grid["specs"]),
        "results_rows": n_rows,
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
    for run_id, error in status["failed"][:20]:
        lines.append(f"failed {run_id}: {error}")
    return "\n".join(lines)
