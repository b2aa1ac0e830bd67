"""Reference splits (REFERENCE.md §3): one2all baseline, oracle 3-fold CV, one2one nested fine-tuning scans.

scikit-learn's shuffling is reimplemented here bit-exactly with `numpy.random.RandomState` (no
dependency): with an int `random_state`,
- `train_test_split(ids, test_size=n, random_state=s)` / `ShuffleSplit(test_size=n)` first split:
  p = RandomState(s).permutation(len(ids)); test = ids[p[:n]], train = ids[p[n:]] (both in p order);
- `KFold(k, shuffle=True, random_state=s)`: p = RandomState(s).permutation(len(ids)); fold i's test is
  p[start_i:stop_i] (the first len % k folds are one larger), returned sorted, and train the sorted rest.
tests/test_data_splits.py checks this against scikit-learn when it is installed and against pinned lists.

All splits operate on the ids of a domain sorted as strings, as the reference's id-sorted table.
Small domains: a part that needs more scans than a domain has is left out and named in `notes`
(one2all needs more than `val_scans` scans, the oracle needs `oracle_folds` scans and more than
`oracle_val_scans` outside each test fold, a fine-tuning budget of n scans needs more than n).
"""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

from fewshot_da.data.budgets import REFERENCE_BUDGETS
from fewshot_da.data.manifest import Record, check_unique_ids, domain_counts
from fewshot_da.atomic import write_text_atomic
from fewshot_da.errors import InputError

REFERENCE_SEED = 0xBadCafe  # 195939070


def shuffle_split_first(ids: Sequence[str], test_size: int, seed: int) -> tuple[list, list]:
    """(train, test) of sklearn's `train_test_split(ids, test_size=test_size, random_state=seed)`."""
    n = len(ids)
    if not 0 < test_size < n:
        raise InputError(f"test_size={test_size} must be between 1 and {n - 1} for {n} ids")
    permutation = np.random.RandomState(seed).permutation(n)
    return [ids[i] for i in permutation[test_size:]], [ids[i] for i in permutation[:test_size]]


def kfold_shuffled(ids: Sequence[str], n_splits: int, seed: int) -> list[tuple[list, list]]:
    """[(train, test)] of sklearn's `KFold(n_splits, shuffle=True, random_state=seed).split(ids)`."""
    n = len(ids)
    if not 2 <= n_splits <= n:
        raise InputError(f"{n_splits}-fold split needs between 2 and {n} folds for {n} ids")
    permutation = np.random.RandomState(seed).permutation(n)
    sizes = np.full(n_splits, n // n_splits)
    sizes[: n % n_splits] += 1
    folds, start = [], 0
    for size in sizes:
        test_mask = np.zeros(n, dtype=bool)
        test_mask[permutation[start:start + size]] = True
        folds.append(([ids[i] for i in np.flatnonzero(~test_mask)], [ids[i] for i in np.flatnonzero(test_mask)]))
        start += size
    return folds


def _ids_by_domain(records: Iterable[Record]) -> dict[str, list[str]]:
    records = list(records)
    if not records:
        raise InputError("no scans in the manifest")
    check_unique_ids(records, "manifest")
    for r in records:
        if not r.domain:
            raise InputError(f"{r.image}: scan {r.id} has an empty domain")
    return {d: sorted(r.id for r in records if r.domain == d) for d in sorted(domain_counts(records))}


def _domain_order(domains: Iterable[str]) -> list[str]:
    """CC359 domains in the reference index order (fold 0..5), anything else after them by name."""
    from fewshot_da.data.datasets import CC359_DOMAINS

    domains = set(domains)
    return [d for d in CC359_DOMAINS if d in domains] + sorted(domains - set(CC359_DOMAINS))


def make_splits(records: Sequence[Record], seed: int = REFERENCE_SEED, *, val_scans: int = 4,
                oracle_folds: int = 3, oracle_val_scans: int = 2, finetune_scans: Sequence[int] = (1, 2, 3),
                pair_val_scans: int = 2) -> dict:
    """All reference splits as a JSON-able dict (ids in sklearn's output order).

    - `one2all[source]`: train/val (train_test_split(test_size=val_scans)), test = every other domain.
    - `oracle[domain]`: `oracle_folds` folds of {train, val, test}: KFold(shuffle) test folds, then
      ShuffleSplit(test_size=oracle_val_scans) of the rest into train/val, all with `seed`.
    - `one2one[target]`: the permutation of train_test_split(test_size=n) (the same for every n, so the
      fine-tuning scans are nested 1 in 2 in 3); `finetune[n]` = its first n ids, `test[n]` = the rest.
    - `pairs`: (index = 5 * source + j, source, target, val = the first `pair_val_scans` of the source's
      permutation as in DART20); `budgets`: the reference settings (n scans, slice interval k).
    """
    by_domain = _ids_by_domain(records)
    domains = _domain_order(by_domain)
    all_ids = sorted(i for ids in by_domain.values() for i in ids)
    notes = []
    one2all, oracle, one2one = {}, {}, {}
    for domain in domains:
        ids = by_domain[domain]
        n = len(ids)
        if n > val_scans:
            train, val = shuffle_split_first(ids, val_scans, seed)
            own = set(ids)
            one2all[domain] = {"train": train, "val": val, "test": [i for i in all_ids if i not in own]}
        else:
            notes.append(f"domain {domain}: {n} scans, too few for one2all (needs > {val_scans}); not a source")
        smallest_rest = n - -(-n // oracle_folds)
        if n >= oracle_folds and smallest_rest > oracle_val_scans:
            folds = []
            for train_val, test in kfold_shuffled(ids, oracle_folds, seed):
                train, val = shuffle_split_first(train_val, oracle_val_scans, seed)
                folds.append({"train": train, "val": val, "test": test})
            oracle[domain] = folds
        else:
            notes.append(f"domain {domain}: {n} scans, too few for {oracle_folds}-fold oracle CV "
                         f"with {oracle_val_scans} val scans; no oracle")
        permutation = [ids[i] for i in np.random.RandomState(seed).permutation(n)]
        usable = [k for k in finetune_scans if 0 < k < n]
        if len(usable) < len(finetune_scans):
            notes.append(f"domain {domain}: {n} scans; fine-tuning budgets of "
                         f"{', '.join(str(k) for k in finetune_scans if k not in usable)} scans left out")
        one2one[domain] = {
            "permutation": permutation,
            "finetune": {str(k): permutation[:k] for k in usable},
            "test": {str(k): permutation[k:] for k in usable},
        }
    pairs = []
    for s, source in enumerate(domains):
        if source not in one2all:
            continue
        source_perm = one2one[source]["permutation"]
        for j, target in enumerate(t for t in domains if t != source):
            pairs.append({"index": (len(domains) - 1) * s + j, "source": source, "target": target,
                          "val": source_perm[:pair_val_scans]})
    return {
        "seed": int(seed),
        "domains": domains,
        "counts": {d: len(by_domain[d]) for d in domains},
        "one2all": one2all,
        "oracle": oracle,
        "one2one": one2one,
        "pairs": pairs,
        "budgets": [{"name": b.name, "n_scans": b.n_scans, "slice_interval": b.slice_interval}
                    for b in REFERENCE_BUDGETS],
        "notes": notes,
    }


def _get(splits: dict, part: str, domain: str, role: str):
    try:
        return splits[part][domain]
    except KeyError:
        raise InputError(f"splits have no {part} entry for domain {domain!r} ({role})") from None


def source_train_ids(splits: dict, source: str) -> list[str]:
    return list(_get(splits, "one2all", source, "source train")["train"])


def source_val_ids(splits: dict, source: str) -> list[str]:
    return list(_get(splits, "one2all", source, "source val")["val"])


def source_test_ids(splits: dict, source: str) -> list[str]:
    return list(_get(splits, "one2all", source, "source test")["test"])


def finetune_ids(splits: dict, target: str, n_scans: int) -> list[str]:
    """The first n_scans of the target's permutation (nested: 1 in 2 in 3)."""
    entry = _get(splits, "one2one", target, "fine-tuning target")
    if str(n_scans) not in entry["finetune"]:
        raise InputError(f"splits have no {n_scans}-scan fine-tuning set for {target!r} "
                         f"(available: {', '.join(entry['finetune']) or 'none'})")
    return list(entry["finetune"][str(n_scans)])


def pair_test_ids(splits: dict, target: str, n_scans: int) -> list[str]:
    """Target scans minus its n_scans fine-tuning scans: the test set of every pair into `target`."""
    entry = _get(splits, "one2one", target, "fine-tuning target")
    if str(n_scans) not in entry["test"]:
        raise InputError(f"splits have no {n_scans}-scan fine-tuning set for {target!r}")
    return list(entry["test"][str(n_scans)])


def oracle_fold(splits: dict, domain: str, fold: int) -> dict:
    folds = _get(splits, "oracle", domain, "oracle")
    if not 0 <= fold < len(folds):
        raise InputError(f"oracle fold {fold} out of range 0..{len(folds) - 1} for {domain!r}")
    return {k: list(v) for k, v in folds[fold].items()}


def oracle_fold_of(splits: dict, domain: str, scan_id: str) -> int:
    """The oracle fold in which `scan_id` is a test scan (its oracle score comes from that fold)."""
    for i, fold in enumerate(_get(splits, "oracle", domain, "oracle")):
        if scan_id in fold["test"]:
            return i
    raise InputError(f"scan {scan_id!r} is in no oracle test fold of {domain!r}")


def write_splits(records: Sequence[Record], out, seed: int = REFERENCE_SEED, **options) -> dict:
    """make_splits + write it as JSON (sorted keys) to `out`; returns the dict."""
    import json

    splits = make_splits(records, seed, **options)
    write_text_atomic(out, json.dumps(splits, indent=1, sort_keys=True))
    return splits


def read_splits(path) -> dict:
    import json
    from pathlib import Path

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: splits file not found")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: not valid JSON ({exc})") from None
