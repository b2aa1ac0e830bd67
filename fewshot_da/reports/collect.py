"""Results rows from run folders made by hand (train / adapt / predict), labelled as baseline, oracle or method.

A summary with a `spec` (what the run is) is used as is; an older summary without one is read from its top-level
fields (kind, arch, source, target, layers, scans, slices; a predict run's model summary). Roles: a predict run of
a source model on another domain is a baseline; `baseline=` / `oracle=` label folders explicitly; a train run
scored on its own domain's validation scans is neither and is left out with a note.
"""
from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from ..errors import InputError
from ..data.budgets import budget_label
from ..experiments.results import collect_runs
from .gap import BASELINE, ORACLE


def _summary(run_dir: Path) -> dict:
    path = run_dir / "summary.json"
    if not path.is_file():
        raise InputError(f"{run_dir}: not a finished run folder (no summary.json)")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not valid JSON ({exc})") from None


def _seed(run_dir: Path) -> str:
    """The TrainConfig seed from config.yaml ('' when absent)."""
    import yaml

    path = run_dir / "config.yaml"
    try:
        config = yaml.safe_load(path.read_text()) if path.is_file() else None
    except yaml.YAMLError:
        config = None
    seed = config.get("seed") if isinstance(config, dict) else None
    return "" if seed is None else str(seed)


def _score_domains(summary: dict) -> list:
    return sorted({str(s["domain"]) for s in summary.get("scores") or [] if s.get("domain") not in (None, "")})


def _legacy_spec(run_dir: Path, summary: dict) -> dict:
    """A spec read from a summary written before specs existed (top-level kind, arch, source, ...)."""
    kind = summary.get("kind")
    spec = {"kind": kind, "arch": summary.get("arch"), "source": summary.get("source"), "seed": _seed(run_dir)}
    if kind == "adapt":
        slices = str(summary.get("slices") or "all")
        k = int(slices.split("/")[1]) if slices.startswith("1/") else None
        spec.update(target=summary.get("target"), strategy="freeze", layers=summary.get("layers"),
                    budget=budget_label(summary.get("scans"), k))
    elif kind == "train":
        spec.update(target=summary.get("source"))
    return spec


def _run_spec(run_dir: Path, summary: dict) -> dict:
    """What a finished run is. A predict run takes its model's identity (arch, source, target, strategy, budget,
    seed); a predict run of a source model (a train run) on another domain is a baseline, on its own domain
    neither (strategy None)."""
    spec = dict(summary.get("spec") or _legacy_spec(run_dir, summary))
    if spec.get("kind") != "predict":
        return spec
    model_dir = Path(summary.get("model") or "")
    model = _summary(model_dir) if summary.get("model") and (model_dir / "summary.json").is_file() else {}
    model_spec = dict(model.get("spec") or _legacy_spec(model_dir, model)) if model else {}
    if model_spec:
        spec = {**model_spec, "kind": "predict"}
    source_model = model_spec.get("kind") == "train" if model_spec else not spec.get("target")
    if source_model:
        domains = _score_domains(summary)
        if len(domains) == 1 and domains[0] != spec.get("source"):
            spec.update(target=domains[0], strategy=BASELINE, layers="", budget="")
        else:
            spec.update(target=spec.get("source"), strategy=None)
    return spec


def _what_scored(run_dir: Path, summary: dict) -> tuple:
    """(kind, spec, wording) of the model a run folder scored: the run itself, or a predict run's model
    (its summary's spec, else run.yaml's); wording names it for an error ('an adapt run (strategy freeze, ...)')."""
    spec = dict(summary.get("spec") or _legacy_spec(run_dir, summary))
    if spec.get("kind") is None and (run_dir / "run.yaml").is_file():
        spec = _run_yaml_spec(run_dir) or spec
    via = ""
    if spec.get("kind") == "predict" and summary.get("model"):
        model_dir = Path(summary["model"])
        model = {}
        if (model_dir / "summary.json").is_file():
            model = _summary(model_dir)
        model_spec = dict(model.get("spec") or _legacy_spec(model_dir, model)) if model else {}
        if model_spec.get("kind") is None:
            model_spec = _run_yaml_spec(model_dir) or model_spec
        spec, via = model_spec, f"a predict run of {model_dir}, which is "
    kind = spec.get("kind")
    details = ", ".join(f"{k} {spec[k]}" for k in ("strategy", "layers", "budget") if spec.get(k) not in (None, ""))
    if kind is None:
        wording = f"{via}a run of unknown kind (no spec or kind in its summary.json or run.yaml)"
    else:
        wording = f"{via}{'an' if str(kind)[:1] in 'aeiou' else 'a'} {kind} run" + (f" ({details})" if details else "")
    return kind, spec, wording


def _run_yaml_spec(run_dir: Path) -> dict:
    import yaml

    try:
        info = yaml.safe_load((Path(run_dir) / "run.yaml").read_text())
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return {}
    spec = info.get("spec") if isinstance(info, dict) else None
    return dict(spec) if isinstance(spec, dict) else {}


def check_role(run_dir: Path, summary: dict, role: str) -> None:
    """InputError unless the run folder can be the `role` ('baseline' or 'oracle') of a report: a baseline is an
    unadapted source model (a train run, an adapt run with strategy none, or a predict run of either); an oracle
    is a model trained from scratch (a train run, or a predict run of one) scored on the domain it was trained on."""
    kind, spec, wording = _what_scored(run_dir, summary)
    if role == BASELINE:
        if kind == "train" or (kind == "adapt" and spec.get("strategy") == "none"):
            return
        raise InputError(f"{run_dir}: --baseline needs an unadapted source model (a train run, an adapt run with "
                         f"strategy none, or a predict run of one), but this is {wording}")
    if kind != "train":
        raise InputError(f"{run_dir}: --oracle needs a model trained on the target itself (a train run, or a "
                         f"predict run of one), but this is {wording}")
    domains = _score_domains(summary)
    trained_on = spec.get("source")
    if trained_on and len(domains) == 1 and domains[0] != trained_on:
        raise InputError(f"{run_dir}: --oracle needs a model scored on the domain it was trained on, but this "
                         f"{wording} trained on {trained_on} is scored on {domains[0]} (a baseline?)")


def collect_hand_runs(run_dirs: Sequence, baseline: Sequence = (), oracle: Sequence = ()) -> tuple:
    """(rows, notes): results rows of finished run folders, each labelled; `baseline` / `oracle` folders (also
    accepted when not in `run_dirs`) become strategy 'baseline' / 'oracle'. Notes say which folders were left out."""
    roles = {}
    for role, dirs in ((None, run_dirs), (BASELINE, baseline), (ORACLE, oracle)):
        for d in dirs:
            key = Path(d).resolve()
            if role or key not in roles:
                roles[key] = (Path(d), role)
    rows, notes = [], []
    names = Counter(d.name for d, _ in roles.values())  # folders of one name (runs/x, preds/x) get parent/name
    for run_dir, role in roles.values():
        summary = _summary(run_dir)
        if role:
            check_role(run_dir, summary, role)
        spec = _run_spec(run_dir, summary)
        domains = _score_domains(summary)
        if role == BASELINE:
            target = spec.get("target") if spec.get("kind") != "train" and spec.get("target") != spec.get("source") \
                else None
            target = target or (domains[0] if len(domains) == 1 else None)
            if not target:
                raise InputError(f"{run_dir}: --baseline needs a run scored on one target domain, found {domains}")
            spec.update(strategy=BASELINE, target=target, layers="", budget="", fold="")
        elif role == ORACLE:
            domain = domains[0] if len(domains) == 1 else spec.get("target") or spec.get("source")
            if not domain:
                raise InputError(f"{run_dir}: --oracle needs a run scored on one domain, found {domains}")
            spec.update(strategy=ORACLE, source=domain, target=domain, layers="", budget="")
        elif not spec.get("strategy") or spec.get("kind") == "train":
            notes.append(f"{run_dir.name}: a {spec.get('kind') or 'run'} scored on its own domain, neither baseline "
                         "nor oracle nor adaptation; left out (label it with --baseline or --oracle)")
            continue
        if not summary.get("scores"):
            notes.append(f"{run_dir.name}: no scored cases; left out")
            continue
        fields = {k: spec.get(k) for k in ("arch", "source", "target", "strategy", "layers", "budget", "seed", "fold")}
        name = run_dir.name if names[run_dir.name] == 1 else f"{run_dir.resolve().parent.name}/{run_dir.name}"
        rows.extend({**row, "run": name} for row in collect_runs([run_dir], **fields))
    return rows, notes
