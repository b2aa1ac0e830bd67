"""The strategies `recommend` validates, each a named (registry strategy, options) pair."""
from __future__ import annotations

from ..errors import InputError
from ..training.strategies import LABEL_FREE

CANDIDATES = {
    "first": ("freeze", {"layers": "first"}),
    "last": ("freeze", {"layers": "last"}),
    "all": ("freeze", {"layers": "all"}),
    "contracting": ("freeze", {"layers": "contracting"}),
    "expanding": ("freeze", {"layers": "expanding"}),
    "gradual": ("gradual", {}),
    "spottune": ("spottune", {}),
    "adabn": ("adabn", {}),
    "histogram": ("histogram", {}),
    "none": ("none", {}),
}


def parse_candidates(text) -> list:
    """'first,last,all' (or a list) -> validated candidate names, in the given order, no repeats."""
    names = [n.strip() for n in (text.split(",") if isinstance(text, str) else text) if n and n.strip()]
    unknown = [n for n in names if n not in CANDIDATES]
    if unknown:
        raise InputError(f"--strategies: {unknown[0]!r} is not a candidate; choose from {', '.join(CANDIDATES)}")
    if not names:
        raise InputError("--strategies: name at least one candidate")
    return list(dict.fromkeys(names))


def uses_labels(name: str) -> bool:
    """Whether the candidate reads target masks (so its score depends on the label budget)."""
    return CANDIDATES[name][0] not in LABEL_FREE
