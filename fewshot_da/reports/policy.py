"""SpotTUnet policy fractions: per-run `policy_test.csv` files (unit, fraction_finetuned) -> a units x budgets matrix."""
from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..data.budgets import budget_scans

POLICY_FILE = "policy_test.csv"


def read_policy_csv(path, budget: str | None = None) -> list:
    """Rows {unit, budget, fraction_finetuned} of a policy CSV; `budget` fills a file without a budget column."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            names = reader.fieldnames or []
            if "unit" not in names or "fraction_finetuned" not in names:
                raise InputError(f"{path}: a policy CSV needs columns unit and fraction_finetuned, has {names}")
            if "budget" not in names and budget is None:
                raise InputError(f"{path}: no budget column and no budget given for this policy file")
            rows = []
            for row in reader:
                try:
                    fraction = float(row["fraction_finetuned"])
                except ValueError:
                    raise InputError(f"{path}: fraction_finetuned {row['fraction_finetuned']!r} is not a number") \
                        from None
                label = str(row.get("budget") or budget or "")
                budget_scans(label)
                rows.append({"unit": str(row["unit"]), "budget": label, "fraction_finetuned": fraction})
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read policy CSV ({exc})") from None
    return rows


def policy_matrix(rows: Sequence[dict]) -> tuple:
    """(units, budgets, fractions): the mean fraction per (unit, budget) over runs; units in numeric order when
    they are integers (else first seen), budgets by scans; NaN where a unit has no value at a budget."""
    values = {}
    for r in rows:
        values.setdefault((r["unit"], r["budget"]), []).append(r["fraction_finetuned"])
    units = list(dict.fromkeys(r["unit"] for r in rows))
    if all(u.lstrip("-").isdigit() for u in units):
        units.sort(key=int)
    budgets = sorted({r["budget"] for r in rows}, key=budget_scans)
    matrix = np.full((len(units), len(budgets)), np.nan)
    for (unit, budget), v in values.items():
        finite = [x for x in v if math.isfinite(x)]
        if finite:
            matrix[units.index(unit), budgets.index(budget)] = float(np.mean(finite))
    return units, budgets, matrix


def find_policy_files(folder, results_rows: Sequence[dict]) -> list:
    """(path, budget) of every `policy_test.csv` under `folder`; the budget is that of the run named by the
    file's folder in results.csv, else the `spec.budget` of the folder's summary.json. Files of unknown
    budget come with None (their own budget column, if any, then applies)."""
    by_run = {r["run"]: r["budget"] for r in results_rows}
    found = []
    for path in sorted(Path(folder).rglob(POLICY_FILE)):
        budget = by_run.get(path.parent.name)
        summary = path.parent / "summary.json"
        if budget is None and summary.is_file():
            try:
                spec = json.loads(summary.read_text()).get("spec") or {}
                budget = None if spec.get("budget") in (None, "") else str(spec["budget"])
            except (json.JSONDecodeError, UnicodeDecodeError):
                budget = None
        found.append((path, budget))
    return found
