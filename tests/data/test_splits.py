"""Reference splits on the 359 CC359 ids: sizes, disjointness, nesting, fold coverage, sklearn equality;
budgets of any size, image budgets for 2D domains, k-fold CV and explicit fine-tune ids."""
import csv
import json

import numpy as np
import pytest

from fewshot_da.data.budgets import comb_slices, parse_slices
from fewshot_da.data.datasets import CC359_DOMAINS
from fewshot_da.data.manifest import Record
from fewshot_da.data.splits import (REFERENCE_SEED, check_finetune_ids, cv_fold_ids, domain_is_2d,
                                    finetune_ids, kfold_shuffled, make_splits, oracle_fold, oracle_fold_of,
                                    pair_test_ids, remaining_test_ids, shuffle_split_first, source_train_ids,
                                    source_val_ids, write_splits)
from fewshot_da.errors import InputError


@pytest.fixture(scope="module")
def cc359_records(shared_data):
    with open(shared_data / "cc359-names.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    # shuffled input order must not matter: splits sort the ids
    rows = [rows[i] for i in np.random.RandomState(1).permutation(len(rows))]
    return [Record(r["id"], r["image"], r["mask"], r["domain"]) for r in rows]


@pytest.fixture(scope="module")
def splits(cc359_records):
    return make_splits(cc359_records)


def test_seed_is_0xbadcafe():
    assert REFERENCE_SEED == 195939070


# Computed with scikit-learn 1.9.1 (train_test_split / KFold(shuffle=True) / ShuffleSplit, random_state=0xBadCafe)
# on the sorted ids of each domain; kept so the equality is checked where sklearn is not installed.
PINNED_ONE2ALL_VAL = {
    "siemens15": ["CC0122", "CC0150", "CC0126", "CC0144"], "siemens3": ["CC0182", "CC0210", "CC0186", "CC0204"],
    "ge15": ["CC0242", "CC0270", "CC0246", "CC0264"], "ge3": ["CC0302", "CC0330", "CC0306", "CC0324"],
    "philips15": ["CC0003", "CC0031", "CC0007", "CC0025"], "philips3": ["CC0062", "CC0090", "CC0066", "CC0084"],
}
PINNED_SIEMENS15_FOLD0 = {
    "test": ["CC0120", "CC0121", "CC0122", "CC0126", "CC0127", "CC0129", "CC0132", "CC0139", "CC0140", "CC0144",
             "CC0145", "CC0146", "CC0148", "CC0150", "CC0151", "CC0160", "CC0161", "CC0168", "CC0172", "CC0179"],
    "val": ["CC0170", "CC0154"],
}
PINNED_PHILIPS15_FOLD2_TEST = ["CC0005", "CC0006", "CC0014", "CC0016", "CC0017", "CC0024", "CC0028", "CC0030",
                               "CC0034", "CC0036", "CC0044", "CC0046", "CC0047", "CC0050", "CC0051", "CC0053",
                               "CC0054", "CC0056", "CC0058"]


def test_pinned_sklearn_lists(splits):
    assert {d: source_val_ids(splits, d) for d in CC359_DOMAINS} == PINNED_ONE2ALL_VAL
    fold = oracle_fold(splits, "siemens15", 0)
    assert fold["test"] == PINNED_SIEMENS15_FOLD0["test"] and fold["val"] == PINNED_SIEMENS15_FOLD0["val"]
    assert oracle_fold(splits, "philips15", 2)["test"] == PINNED_PHILIPS15_FOLD2_TEST
    # fine-tuning scans = the first scans of the one2all validation permutation (REFERENCE.md §3)
    assert {d: finetune_ids(splits, d, 3) for d in CC359_DOMAINS} == {d: v[:3] for d, v in PINNED_ONE2ALL_VAL.items()}


def test_equal_to_sklearn(splits, cc359_records):
    model_selection = pytest.importorskip("sklearn.model_selection")
    seed = REFERENCE_SEED
    for domain in CC359_DOMAINS:
        ids = sorted(r.id for r in cc359_records if r.domain == domain)
        train, val = model_selection.train_test_split(ids, test_size=4, random_state=seed)
        assert (source_train_ids(splits, domain), source_val_ids(splits, domain)) == (train, val)
        kfold = model_selection.KFold(3, shuffle=True, random_state=seed)
        for k, (train_val, test) in enumerate(kfold.split(ids)):
            rest = [ids[i] for i in train_val]
            inner_train, inner_val = next(model_selection.ShuffleSplit(test_size=2, random_state=seed).split(rest))
            assert oracle_fold(splits, domain, k) == {
                "train": [rest[i] for i in inner_train], "val": [rest[i] for i in inner_val],
                "test": [ids[i] for i in test]}
        for n in (1, 2, 3):
            rest, fine = model_selection.train_test_split(ids, test_size=n, random_state=seed)
            assert finetune_ids(splits, domain, n) == fine and pair_test_ids(splits, domain, n) == rest
    for n, test_size, seed in [(7, 2, 0), (13, 5, 42), (40, 2, 1)]:
        ids = [f"s{i:02d}" for i in range(n)]
        assert shuffle_split_first(ids, test_size, seed) == tuple(
            model_selection.train_test_split(ids, test_size=test_size, random_state=seed))
        ours = kfold_shuffled(ids, 3, seed)
        theirs = [([ids[i] for i in a], [ids[i] for i in b])
                  for a, b in model_selection.KFold(3, shuffle=True, random_state=seed).split(ids)]
        assert ours == theirs


def test_one2all_sizes_and_disjointness(splits, cc359_records):
    assert splits["seed"] == REFERENCE_SEED and splits["domains"] == list(CC359_DOMAINS)
    for domain, part in splits["one2all"].items():
        n = 59 if domain == "philips15" else 60
        assert (len(part["train"]), len(part["val"]), len(part["test"])) == (n - 4, 4, 359 - n)
        assert not set(part["train"]) & set(part["val"])
        assert {r.domain for r in cc359_records if r.id in set(part["test"])} == set(CC359_DOMAINS) - {domain}


def test_oracle_folds_cover_each_domain_once(splits, cc359_records):
    for domain, folds in splits["oracle"].items():
        ids = sorted(r.id for r in cc359_records if r.domain == domain)
        assert len(folds) == 3
        tests = [t for f in folds for t in f["test"]]
        assert sorted(tests) == ids  # every scan in exactly one test fold
        for f in folds:
            assert len(f["val"]) == 2
            assert sorted(f["train"] + f["val"] + f["test"]) == ids
        assert [len(f["test"]) for f in folds] == ([20, 20, 19] if domain == "philips15" else [20, 20, 20])
        assert oracle_fold_of(splits, domain, ids[0]) in (0, 1, 2)


def test_one2one_nested_and_pairs(splits, cc359_records):
    for target in CC359_DOMAINS:
        ids = {r.id for r in cc359_records if r.domain == target}
        one, two, three = (finetune_ids(splits, target, n) for n in (1, 2, 3))
        assert set(one) < set(two) < set(three) <= ids
        for n, fine in ((1, one), (2, two), (3, three)):
            test = pair_test_ids(splits, target, n)
            assert not set(test) & set(fine) and set(test) | set(fine) == ids
            assert len(test) == len(ids) - n
    pairs = splits["pairs"]
    assert [p["index"] for p in pairs] == list(range(30))
    assert pairs[5] == {"index": 5, "source": "siemens3", "target": "siemens15",
                        "val": source_val_ids(splits, "siemens3")[:2]}
    assert all(p["source"] != p["target"] for p in pairs)


def test_deterministic_and_json(tmp_path, cc359_records, splits):
    out = tmp_path / "splits.json"
    written = write_splits(list(reversed(cc359_records)), out)
    assert written == splits and json.loads(out.read_text()) == splits
    assert make_splits(cc359_records, seed=1)["one2all"]["ge3"]["val"] != splits["one2all"]["ge3"]["val"]


def test_small_domains_are_noted_not_fatal():
    records = [Record(f"a{i}", "x", "y", "big") for i in range(8)] + [Record("b0", "x", "y", "tiny"),
                                                                      Record("b1", "x", "y", "tiny")]
    splits = make_splits(records)
    assert list(splits["one2all"]) == ["big"] and list(splits["oracle"]) == ["big"]
    assert splits["one2one"]["tiny"]["finetune"] == {"1": splits["one2one"]["tiny"]["permutation"][:1]}
    assert [p["target"] for p in splits["pairs"]] == ["tiny"]
    assert len(splits["notes"]) == 4 and all("domain tiny" in note for note in splits["notes"])
    assert "too few for 5-fold cross-validation" in splits["notes"][-1] and list(splits["cv"]) == ["big"]
    with pytest.raises(InputError, match="no 2-scan fine-tuning set for 'tiny'"):
        finetune_ids(splits, "tiny", 2)
    with pytest.raises(InputError, match="no one2all entry for domain 'tiny'"):
        source_train_ids(splits, "tiny")


def test_comb_slices():
    # S = 270, k = 48 -> {0, 48, 96, 144, 192}: 5 slices, the last 270 mod 48 = 30 never used
    assert comb_slices(270, 48).tolist() == [0, 48, 96, 144, 192]
    assert [len(comb_slices(270, k)) for k in (3, 6, 12, 24, 36, 48)] == [90, 45, 22, 11, 7, 5]
    assert comb_slices(5, 1).tolist() == [0, 1, 2, 3, 4]
    assert comb_slices(2, 3).tolist() == []
    with pytest.raises(InputError):
        comb_slices(10, 0)


def test_parse_slices():
    assert [parse_slices(t) for t in ("1/48", "1/3", "1", "all", " 1/6 ")] == [48, 3, 1, 1, 6]
    for bad in ("2/48", "1/x", "48", "1/0"):
        with pytest.raises(InputError, match="--slices"):
            parse_slices(bad)


def test_budgets():
    from fewshot_da.data.budgets import REFERENCE_BUDGETS, budget_slices, make_budget

    assert make_budget(1, "1/48") == ("1/48", 1, 48)
    assert make_budget(3) == ("3 scans", 3, 1) == REFERENCE_BUDGETS[-1]
    allowed = budget_slices(make_budget(1, "1/24"), {"CC0122": 270})
    assert allowed["CC0122"].tolist() == [0, 24, 48, 72, 96, 120, 144, 168, 192, 216, 240]  # 270 // 24 = 11
    with pytest.raises(InputError, match="--scans 0"):
        make_budget(0)


def test_budgets_of_any_size_keep_the_reference_1_2_3(splits, cc359_records):
    for domain in CC359_DOMAINS:
        ids = sorted(r.id for r in cc359_records if r.domain == domain)
        # the reference's nested 1-3 scans are unchanged (pinned above) and stored as before
        assert finetune_ids(splits, domain, 3) == PINNED_ONE2ALL_VAL[domain][:3]
        assert {n: finetune_ids(splits, domain, int(n)) for n in splits["one2one"][domain]["finetune"]} == \
            splits["one2one"][domain]["finetune"] and list(splits["one2one"][domain]["finetune"]) == ["1", "2", "3"]
        # any N below the domain's size: nested, seeded, and the test set is the rest
        previous = []
        for n in (1, 2, 3, 4, 5, 10, 20, len(ids) - 1):
            fine, test = finetune_ids(splits, domain, n), pair_test_ids(splits, domain, n)
            assert len(fine) == n and fine[:len(previous)] == previous
            assert sorted(fine + test) == ids and not set(fine) & set(test)
            previous = fine
        with pytest.raises(InputError, match=f"no {len(ids)}-scan fine-tuning set for '{domain}'"):
            finetune_ids(splits, domain, len(ids))
        with pytest.raises(InputError, match="no 0-scan"):
            pair_test_ids(splits, domain, 0)
    assert not domain_is_2d(splits, "ge3") and splits["dims"] == {d: 3 for d in CC359_DOMAINS}
    assert [b["name"] for b in splits["budgets"]][:6] == ["1/48", "1/36", "1/24", "1/12", "1/6", "1/3"]


def _records_2d(domain, n, prefix):
    return [Record(f"{prefix}{i:03d}", f"/data/{domain}/images/{prefix}{i:03d}.png",
                   f"/data/{domain}/masks/{prefix}{i:03d}_mask.png", domain) for i in range(n)]


def test_2d_domains_get_image_budgets_not_slice_fractions():
    from fewshot_da.data.budgets import make_budget

    records = _records_2d("busi", 780, "b") + _records_2d("bus-bra-mini", 36, "m")
    splits = make_splits(records)
    assert splits["dims"] == {"bus-bra-mini": 2, "busi": 2}
    assert domain_is_2d(splits, "bus-bra-mini")
    names = [b["name"] for b in splits["budgets"]]
    assert names == ["1 image", "3 images", "5 images", "10 images", "20 images", "50 images", "100 images",
                     "200 images", "500 images"]  # the menu up to the largest 2D domain (780 images)
    assert all(b["slice_interval"] == 1 for b in splits["budgets"])
    assert list(splits["one2one"]["bus-bra-mini"]["finetune"]) == ["1", "3", "5", "10", "20"]
    assert splits["notes"] == []  # budgets beyond a small 2D domain are not "missing"
    assert len(finetune_ids(splits, "bus-bra-mini", 35)) == 35 and len(pair_test_ids(splits, "bus-bra-mini", 7)) == 29
    with pytest.raises(InputError, match="no 36-image fine-tuning set for 'bus-bra-mini' .*choose 1..35"):
        finetune_ids(splits, "bus-bra-mini", 36)
    assert make_budget(5, images2d=True) == ("5 images", 5, 1)
    with pytest.raises(InputError, match="--slices 1/3: the target is 2D"):
        make_budget(1, "1/3", images2d=True)
    # a manifest mixing 3D and 2D domains keeps the reference budgets and adds image budgets
    mixed = make_splits(records[:10] + [Record(f"v{i}", f"v{i}.nii.gz", f"v{i}_ss.nii.gz", "mri") for i in range(6)])
    assert mixed["dims"] == {"busi": 2, "mri": 3}
    assert [b["name"] for b in mixed["budgets"]][-4:] == ["3 scans", "1 image", "3 images", "5 images"]


def test_cv_folds_cover_each_id_once(splits, cc359_records):
    for domain in ("philips15", "ge3"):
        ids = sorted(r.id for r in cc359_records if r.domain == domain)
        folds = splits["cv"][domain]
        assert len(folds) == 5
        assert [len(f["test"]) for f in folds] == ([12, 12, 12, 12, 11] if domain == "philips15" else [12] * 5)
        assert sorted(i for f in folds for i in f["test"]) == ids
        for k, fold in enumerate(folds):
            train, test = cv_fold_ids(splits, 5, k, domain=domain)
            assert (train, test) == (fold["train"], fold["test"])
            assert sorted(train + test) == ids and not set(train) & set(test)
            # the held-out fold is sklearn KFold(5, shuffle=True, random_state=seed)'s fold k
            assert test == kfold_shuffled(ids, 5, REFERENCE_SEED)[k][1]
            # the same folds from the manifest's records or from bare ids
            assert cv_fold_ids(cc359_records, 5, k, domain=domain) == (train, test)
            assert cv_fold_ids(list(reversed(ids)), 5, k) == (train, test)
            # budgets within a fold are nested prefixes of the fine-tune ids
            assert cv_fold_ids(splits, 5, k, domain=domain, n_finetune=3)[0] == train[:3]
    assert cv_fold_ids(splits, 5, 1, domain="ge3", seed=1) != cv_fold_ids(splits, 5, 1, domain="ge3")
    with pytest.raises(InputError, match="--fold 5: choose 0..4"):
        cv_fold_ids(splits, 5, 5, domain="ge3")
    with pytest.raises(InputError, match="cross-validation over one domain"):
        cv_fold_ids(cc359_records, 5, 0)
    with pytest.raises(InputError, match="--folds 7: need between 2 and 6"):
        cv_fold_ids([f"s{i}" for i in range(6)], 7, 0)
    with pytest.raises(InputError, match="--scans 60: fold 0 of 5 has 48"):
        cv_fold_ids(splits, 5, 0, domain="ge3", n_finetune=60)
    assert make_splits(cc359_records[:40], cv_folds=0)["cv"] == {} and make_splits(cc359_records[:40])["cv"]


def test_explicit_finetune_ids(splits, cc359_records):
    target = "ge3"
    ids = sorted(r.id for r in cc359_records if r.domain == target)
    chosen = [ids[5], ids[0]]
    for source in (splits, cc359_records):
        assert check_finetune_ids(source, target, chosen) == chosen
        assert check_finetune_ids(source, target, f" {ids[5]}, {ids[0]} ") == chosen
        test = remaining_test_ids(source, target, chosen)
        assert sorted(test + chosen) == ids and not set(test) & set(chosen)
    # in the splits' permutation order (the pair's order), sorted for records
    assert remaining_test_ids(splits, target, chosen) == [i for i in splits["one2one"][target]["permutation"]
                                                          if i not in chosen]
    assert remaining_test_ids(cc359_records, target, chosen) == [i for i in ids if i not in chosen]
    other = next(r.id for r in cc359_records if r.domain == "siemens15")
    for bad, match in [([other], f"'{other}' belongs to domain 'siemens15', not the target 'ge3'"),
                       (["CC9999"], "'CC9999' is not an id of the manifest"),
                       ([ids[0], ids[0]], "is given twice"), ([], "no ids given"),
                       (ids, "all 60 ids of 'ge3' chosen")]:
        with pytest.raises(InputError, match=match) as info:
            check_finetune_ids(splits, target, bad)
        assert "\n" not in str(info.value)
    with pytest.raises(InputError, match="target 'nowhere' is not a domain"):
        check_finetune_ids(splits, "nowhere", chosen)
