"""What a study was: its plan, data, schedules, seeds, runs and their wall times, and the tool that reports it,
as (what, value) text rows for the report page. A grid folder says all of it (grid.json, runs/*/grid_timing.json);
hand-made run folders only their runs."""
from __future__ import annotations

import json
import statistics
import subprocess
from collections import Counter
from pathlib import Path

import fewshot_da

from ..errors import InputError


def tool_version() -> str:
    """'fewshot-da 0.1.0, commit abc1234' (the commit of the checkout the package runs from, when it is one)."""
    commit = ""
    try:
        done = subprocess.run(["git", "-C", str(Path(fewshot_da.__file__).resolve().parent), "rev-parse", "--short",
                               "HEAD"], capture_output=True, text=True, timeout=10, check=False)
        commit = done.stdout.strip() if done.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):
        pass
    return f"fewshot-da {fewshot_da.__version__}, commit {commit or 'unknown (not a git checkout)'}"


def _compact(value) -> str:
    return json.dumps(value, sort_keys=True, separators=(", ", ": ")) if isinstance(value, (dict, list)) else str(value)


def _seconds(s: float) -> str:
    return f"{s:.1f} s" if s < 120 else (f"{s / 60:.1f} min" if s < 7200 else f"{s / 3600:.1f} h")


def describe_study(grid_dir, rows) -> list:
    """(what, value) rows: plan, data, pairs, strategies, budgets, seeds, folds, schedules, runs by kind and state,
    wall times (total and median per kind), results rows, and the tool's version and commit."""
    items = []
    if grid_dir is not None and (Path(grid_dir) / "grid.json").is_file():
        items += _grid_items(Path(grid_dir))
    else:
        items.append(("runs", f"{len({r['run'] for r in rows})} run folders made by hand"))
    items.append(("results", f"{len(rows)} case scores of {len({r['run'] for r in rows})} runs"))
    items.append(("report made with", tool_version()))
    return items


def _grid_items(grid_dir: Path) -> list:
    from ..data.manifest import read_manifest
    from ..experiments import grid as grid_mod

    path = grid_dir / "grid.json"
    try:
        grid = json.loads(path.read_text())
        plan, context, specs = grid["plan"], grid["context"], grid["specs"]
    except (ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{path}: not a grid description ({exc})") from None
    what = (f"{plan.get('name') or '(unnamed)'}: arch {plan.get('arch')}, training preset {plan.get('preset')}, "
            f"preprocessing {_compact(plan.get('preprocess'))}")
    items = [("plan", what)]
    try:
        domains = Counter(r.domain for r in read_manifest(context["manifest"]))
        data = ", ".join(f"{d} ({n} scans)" for d, n in sorted(domains.items()))
    except InputError as exc:
        data = f"manifest unreadable ({exc})"
    items.append(("data", f"{context.get('manifest')}: {data}; plan data {_compact(plan.get('data'))}"))
    pairs = sorted({(s["source"], s["target"]) for s in specs if s.get("kind") in ("adapt", "baseline")})
    items.append(("pairs", f"{len(pairs)}: " + ", ".join(f"{s} -> {t}" for s, t in pairs)))
    strategies = [s if isinstance(s, str) else s.get("name") for s in plan.get("strategies") or []]
    items.append(("strategies", ", ".join(map(str, strategies))))
    items.append(("budgets", ", ".join(map(str, plan.get("budgets") or []))))
    seeds = f"adapted runs {_compact(plan.get('seeds'))}; source and oracle models {plan.get('model_seed')}"
    items.append(("seeds", seeds))
    folds = f"oracle CV folds {_compact(plan.get('folds'))}"
    if plan.get("cv_folds"):
        folds += f"; adapted runs on {plan['cv_folds']}-fold CV"
    items.append(("folds", folds))
    schedules = plan.get("schedules") or {}
    for stage in ("source", "finetune"):
        items.append((f"{stage} schedule", _compact(schedules.get(stage) or {}) + " (over the preset)"))
    items.append(("tolerances", ", ".join(f"{t:g} mm" for t in plan.get("tolerances_mm") or [])))
    kinds = Counter(s.get("kind") for s in specs)
    states = Counter()
    times = {}
    for s in specs:
        spec = grid_mod.RunSpec(**s)
        states[grid_mod.run_state(grid_dir, spec)] += 1
        timing = grid_mod.run_dir(grid_dir, spec.run_id) / "grid_timing.json"
        try:
            times.setdefault(spec.kind, []).append(float(json.loads(timing.read_text())["wall_s"]))
        except (OSError, ValueError, KeyError, TypeError):
            pass
    items.append(("runs", f"{len(specs)}: " + ", ".join(f"{n} {k}" for k, n in kinds.items()) + "; "
                  + ", ".join(f"{n} {state}" for state, n in states.items())))
    if times:
        total = sum(sum(v) for v in times.values())
        items.append(("run times", f"{_seconds(total)} in all (wall, summed over runs); median per run: "
                      + ", ".join(f"{k} {_seconds(statistics.median(v))}" for k, v in times.items())))
    return items
