"""Reference splits (REFERENCE.md §3): one2all baseline, oracle 3-fold CV, one2one nested fine-tuning scans.

scikit-learn's shuffling is reimplemented here bit-exactly with `numpy.random.RandomState` (no
dependency): with an int `random_state`,
- `train_test_split(ids, test_size=n, random_state=s)` / `ShuffleSplit(test_size=n)` first split:
  p = RandomState(s).permutation(len(ids)); test = ids[p[:n]], train = ids[p[n:]] (both in p order);
- `KFold(k, shuffle=True, random_state=s)`: p = RandomState(s).permutation(len(ids)); fold i's test is
  p[start_i:stop_i] (the first len % k folds are one larger), returned sorted, and train the sorted rest.
tests/data/test_splits.py checks this against scikit-learn when it is installed and against pinned lists.

All splits operate on the ids of a domain sorted as strings, as the reference's id-sorted table.
Small domains: a part that needs more scans than a domain has is left out and named in `notes`
(one2all needs more than `val_scans` scans, the oracle needs `oracle_folds` scans and more than
`oracle_val_scans` outside each test fold, a fine-tuning budget of n scans needs more than n, k-fold CV
needs k scans).

Beyond the reference: fine-tuning sets of any size N are the first N of the same permutation (nested, and
the reference's 1, 2, 3 unchanged); a domain of 2D images (one-slice volumes) is offered image budgets
(IMAGE_BUDGETS) instead of slice fractions; `cv[domain]` holds k-fold cross-validation folds over a
target's labelled scans (the ultrasound paper's 5 folds); explicit fine-tune ids are checked against the
target (`check_finetune_ids`) and tested on the rest (`remaining_test_ids`).
"""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

from fewshot_da.data.budgets import IMAGE_BUDGETS, REFERENCE_BUDGETS, image_budgets
from fewshot_da.data.io import is_image2d
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


def _domain_dims(records: Iterable[Record]) -> dict[str, int]:
    """2 for a domain whose images are all 2D files (PNG, JPEG, ...), else 3."""
    dims: dict[str, int] = {}
    for r in records:
        dims[r.domain] = 2 if is_image2d(r.image) and dims.get(r.domain, 2) == 2 else 3
    return dims


def make_splits(records: Sequence[Record], seed: int = REFERENCE_SEED, *, val_scans: int = 4,
                oracle_folds: int = 3, oracle_val_scans: int = 2, finetune_scans: Sequence[int] | None = None,
                pair_val_scans: int = 2, cv_folds: int = 5) -> dict:
    """All reference splits as a JSON-able dict (ids in sklearn's output order).

    - `one2all[source]`: train/val (train_test_split(test_size=val_scans)), test = every other domain.
    - `oracle[domain]`: `oracle_folds` folds of {train, val, test}: KFold(shuffle) test folds, then
      ShuffleSplit(test_size=oracle_val_scans) of the rest into train/val, all with `seed`.
    - `one2one[target]`: the permutation of train_test_split(test_size=n) (the same for every n, so the
      fine-tuning scans are nested 1 in 2 in 3 in ...); `finetune[n]` = its first n ids, `test[n]` = the
      rest, listed for n in `finetune_scans` (default: 1, 2, 3 for 3D domains, IMAGE_BUDGETS for 2D
      ones); `finetune_ids` serves any other n.
    - `cv[domain]`: `cv_folds` folds of {train, test} (`cv_folds_of`); left out when cv_folds is 0.
    - `pairs`: (index = 5 * source + j, source, target, val = the first `pair_val_scans` of the source's
      permutation as in DART20); `dims`: 2 or 3 per domain; `budgets`: the reference settings (n scans,
      slice interval k) when a domain is 3D, image budgets when a domain is 2D.
    """
    by_domain = _ids_by_domain(records)
    dims = _domain_dims(records)
    domains = _domain_order(by_domain)
    all_ids = sorted(i for ids in by_domain.values() for i in ids)
    notes = []
    one2all, oracle, one2one, cv = {}, {}, {}, {}
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
        if finetune_scans is None and dims[domain] == 2:
            usable = [k for k in IMAGE_BUDGETS if k < n]  # a menu: sizes beyond the domain are not missing
        else:
            wanted = (1, 2, 3) if finetune_scans is None else finetune_scans
            usable = [k for k in wanted if 0 < k < n]
            if len(usable) < len(wanted):
                notes.append(f"domain {domain}: {n} scans; fine-tuning budgets of "
                             f"{', '.join(str(k) for k in wanted if k not in usable)} scans left out")
        if cv_folds:
            if n >= cv_folds >= 2:
                cv[domain] = cv_folds_of(ids, cv_folds, seed)
            else:
                notes.append(f"domain {domain}: {n} scans, too few for {cv_folds}-fold cross-validation; no cv")
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
    budgets = list(REFERENCE_BUDGETS) if any(dims[d] == 3 for d in domains) else []
    if any(dims[d] == 2 for d in domains):
        budgets += image_budgets(max(len(by_domain[d]) for d in domains if dims[d] == 2))
    return {
        "seed": int(seed),
        "domains": domains,
        "counts": {d: len(by_domain[d]) for d in domains},
        "dims": {d: dims[d] for d in domains},
        "one2all": one2all,
        "oracle": oracle,
        "one2one": one2one,
        "cv": cv,
        "pairs": pairs,
        "budgets": [{"name": b.name, "n_scans": b.n_scans, "slice_interval": b.slice_interval} for b in budgets],
        "notes": notes,
    }


def _get(splits: dict, part: str, domain: str, role: str):
    """splits[part][domain], or a one-line InputError that says why it is missing (the split's note, or the
    domains the split file knows)."""
    try:
        return splits[part][domain]
    except (KeyError, TypeError):
        pass
    known = list(splits.get("domains") or splits.get("counts") or splits.get("one2one") or [])
    if known and domain not in known:
        why = f"the split file has no domain {domain!r}; its domains: {', '.join(map(str, known))}"
    else:
        notes = [n for n in splits.get("notes") or [] if n.startswith(f"domain {domain}:") and part in n]
        why = notes[0].split(": ", 1)[1] if notes else None
    raise InputError(f"splits have no {part} entry for domain {domain!r} ({role})" + (f": {why}" if why else ""))


def source_train_ids(splits: dict, source: str) -> list[str]:
    return list(_get(splits, "one2all", source, "source train")["train"])


def source_val_ids(splits: dict, source: str) -> list[str]:
    return list(_get(splits, "one2all", source, "source val")["val"])


def source_test_ids(splits: dict, source: str) -> list[str]:
    return list(_get(splits, "one2all", source, "source test")["test"])


def domain_is_2d(splits: dict, domain: str) -> bool:
    """True when every image of `domain` is a 2D file (budgets then count images; no slice fractions)."""
    _get(splits, "one2one", domain, "domain")
    return splits.get("dims", {}).get(domain, 3) == 2


def _target_permutation(splits: dict, target: str, n_scans: int) -> list[str]:
    permutation = list(_get(splits, "one2one", target, "fine-tuning target")["permutation"])
    if not 0 < int(n_scans) < len(permutation):
        unit = "image" if splits.get("dims", {}).get(target) == 2 else "scan"
        choose = f"choose 1..{len(permutation) - 1}" if len(permutation) > 1 else "none possible"
        raise InputError(f"splits have no {n_scans}-{unit} fine-tuning set for {target!r} "
                         f"({len(permutation)} {unit}s, at least one kept for testing: {choose})")
    return permutation


def finetune_ids(splits: dict, target: str, n_scans: int) -> list[str]:
    """The first n_scans of the target's permutation: nested (1 in 2 in 3 in ...) for any n_scans below the
    domain's size, equal to train_test_split(test_size=n_scans)'s test part."""
    return _target_permutation(splits, target, n_scans)[: int(n_scans)]


def pair_test_ids(splits: dict, target: str, n_scans: int) -> list[str]:
    """Target scans minus its n_scans fine-tuning scans: the test set of every pair into `target`."""
    return _target_permutation(splits, target, n_scans)[int(n_scans):]


def _domain_of(source) -> tuple[dict, dict]:
    """({id: domain}, {domain: ids in order}) of a splits dict (permutation order) or Records (sorted)."""
    if isinstance(source, dict):
        if "one2one" not in source:
            raise InputError("not a splits dict (no one2one part); pass the splits or the manifest's records")
        ordered = {d: list(e["permutation"]) for d, e in source["one2one"].items()}
    else:
        records = list(source)
        ordered = _ids_by_domain(records)
    return {i: d for d, ids in ordered.items() for i in ids}, ordered


def check_finetune_ids(source, target: str, ids) -> list[str]:
    """`--finetune-ids`: the ids (a list or a comma string) checked against `source` (a splits dict or the
    manifest's Records). Refuses, in one line: no ids, a repeated id, an unknown id, an id of another domain,
    or every id of the target (none left to test). Returns them in the given order."""
    if isinstance(ids, str):
        ids = [i.strip() for i in ids.split(",") if i.strip()]
    ids = [str(i) for i in ids]
    owner, ordered = _domain_of(source)
    if target not in ordered:
        raise InputError(f"--finetune-ids: target {target!r} is not a domain ({', '.join(sorted(ordered))})")
    if not ids:
        raise InputError("--finetune-ids: no ids given")
    seen = set()
    for i in ids:
        if i in seen:
            raise InputError(f"--finetune-ids: {i!r} is given twice")
        seen.add(i)
        if i not in owner:
            raise InputError(f"--finetune-ids: {i!r} is not an id of the manifest")
        if owner[i] != target:
            raise InputError(f"--finetune-ids: {i!r} belongs to domain {owner[i]!r}, not the target {target!r}")
    if len(ids) >= len(ordered[target]):
        raise InputError(f"--finetune-ids: all {len(ordered[target])} ids of {target!r} chosen; "
                         "leave at least one to test on")
    return ids


def remaining_test_ids(source, target: str, finetune) -> list[str]:
    """The test ids that go with explicit fine-tune ids: the target's ids minus them (in the splits'
    permutation order, or sorted for Records), after `check_finetune_ids`."""
    chosen = set(check_finetune_ids(source, target, finetune))
    return [i for i in _domain_of(source)[1][target] if i not in chosen]


def cv_folds_of(ids: Sequence[str], n_folds: int, seed: int = REFERENCE_SEED) -> list[dict]:
    """k-fold cross-validation of one domain's ids: fold i's `test` is sklearn KFold(n_folds, shuffle=True,
    random_state=seed) fold i of the sorted ids (sorted), `train` the rest in the seeded permutation order
    (so train[:N] are nested fine-tune sets within the fold). Every id is tested exactly once."""
    ids = sorted(ids)
    if not 2 <= n_folds <= len(ids):
        raise InputError(f"--folds {n_folds}: need between 2 and {len(ids)} folds for {len(ids)} labelled ids")
    permutation = [ids[i] for i in np.random.RandomState(seed).permutation(len(ids))]
    folds = []
    for _, test in kfold_shuffled(ids, n_folds, seed):
        held_out = set(test)
        folds.append({"train": [i for i in permutation if i not in held_out], "test": list(test)})
    return folds


def cv_fold_ids(source, n_folds: int, fold: int, *, domain: str | None = None, seed: int | None = None,
                n_finetune: int | None = None) -> tuple[list[str], list[str]]:
    """(fine-tune ids, test ids) of `--folds n_folds --fold fold` (fold counts from 0) over one domain.

    `source`: a splits dict (with `domain`; seed defaults to the splits' seed), Records (of `domain`, or of
    a single domain) or a list of ids (seed defaults to REFERENCE_SEED). Fine-tune ids = the other
    n_folds - 1 folds in the seeded permutation order, cut to the first `n_finetune` when given (nested).
    """
    if isinstance(source, dict):
        if domain is None:
            raise InputError("cv folds of a splits file need the target domain")
        ids = _domain_of(source)[1].get(domain)
        if ids is None:
            raise InputError(f"splits have no domain {domain!r} for cross-validation")
        seed = source.get("seed", REFERENCE_SEED) if seed is None else seed
    else:
        items = list(source)
        if items and isinstance(items[0], Record):
            by_domain = _ids_by_domain(items)
            if domain is None and len(by_domain) > 1:
                raise InputError(f"cross-validation over one domain: choose one of {', '.join(by_domain)}")
            ids = by_domain.get(domain) if domain is not None else next(iter(by_domain.values()))
            if ids is None:
                raise InputError(f"no records of domain {domain!r} for cross-validation")
        else:
            ids = [str(i) for i in items]
            if len(set(ids)) != len(ids):
                raise InputError("cross-validation ids must be unique")
    seed = REFERENCE_SEED if seed is None else int(seed)
    if not isinstance(fold, (int, np.integer)) or not 0 <= fold < n_folds:
        raise InputError(f"--fold {fold}: choose 0..{n_folds - 1} for --folds {n_folds}")
    chosen = cv_folds_of(ids, n_folds, seed)[fold]
    train = chosen["train"]
    if n_finetune is not None:
        if not 1 <= n_finetune <= len(train):
            raise InputError(f"--scans {n_finetune}: fold {fold} of {n_folds} has {len(train)} fine-tune ids")
        train = train[:n_finetune]
    return list(train), list(chosen["test"])


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
