"""A grid's data: generated, shifted or indexed, split and preprocessed once (`data/ready.json`), and refused when
the plan's data or the files changed."""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from ...atomic import write_json_atomic
from ...errors import InputError


def prepare_data(plan: dict, grid_dir, *, num_workers: int = 2, log=print) -> dict:
    """Make or find the grid's manifest and splits: {manifest, splits} (paths). Generated data go to DIR/data
    and are made once (the marker `data/ready.json` is written last)."""
    from ...data import splits as splits_mod
    from ...data.manifest import read_manifest, write_manifest

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
        from ...data.phantoms import write_phantom_dataset

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
    from ..run_folder import file_digest

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
    from ...data.datasets import index_folder
    from ...data.manifest import write_manifest
    from ...data.shift import ScannerShift, shift_domain

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
    from ...data.datasets import index_dataset
    from ...data.manifest import check_unique_ids, write_manifest

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
    from ...data.manifest import read_manifest
    from ...data.preprocess import preprocess_options
    from ...data.cache import preprocess_manifest

    records = [r for r in read_manifest(context["manifest"]) if r.domain in set(domains)]
    preprocess_manifest(
        records,
        context["cache"],
        preprocess_options(context["preprocess"]),
        num_workers=num_workers,
        progress=progress,
    )


# ---- one run ----------------------------------------------------------------------------------------------
