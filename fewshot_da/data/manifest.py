"""Manifest: one CSV (`id,image,mask,domain[,spacing]`) that every stage after indexing consumes."""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence

from fewshot_da.atomic import atomic_path
from fewshot_da.errors import InputError

# The label name of a binary mask's 1s when no label set names it (results.csv's `label` column, models/labels.py).
BINARY_FOREGROUND = "foreground"

COLUMNS = ("id", "image", "mask", "domain")
# An id names files (cache entries <id>-<key>/, predictions <id>.nii.gz), which most file systems cap at 255 bytes.
MAX_ID_BYTES = 128


@dataclass(frozen=True)
class Record:
    """One scan: `image` and `mask` are file paths (str), `domain` a scanner/site name.

    `spacing_mm` is optional metadata in the NIfTI array-axis order (the header is read again at
    preprocessing, which is what counts).
    """

    id: str
    image: str
    mask: str
    domain: str
    spacing_mm: Optional[tuple] = None


def _format_spacing(spacing_mm) -> str:
    return "" if spacing_mm is None else " ".join(f"{float(s):g}" for s in spacing_mm)


def _parse_spacing(text: str, where: str):
    text = text.strip()
    if not text:
        return None
    try:
        values = tuple(float(v) for v in text.replace("x", " ").replace(";", " ").split())
    except ValueError:
        raise InputError(f"{where}: spacing {text!r} is not a list of numbers (e.g. '1 0.95 0.95')") from None
    if not values or any(v <= 0 for v in values):
        raise InputError(f"{where}: spacing {text!r} must be positive numbers")
    return values


def write_manifest(records: Iterable[Record], path) -> Path:
    """Write `records` as CSV; paths are written relative to the manifest's folder when inside it."""
    path = Path(path)
    base = path.parent.resolve()
    records = list(records)
    with_spacing = any(r.spacing_mm is not None for r in records)

    def rel(p: str) -> str:
        absolute = Path(p).resolve()
        try:
            return str(absolute.relative_to(base))
        except ValueError:
            return str(absolute)

    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(COLUMNS + (("spacing",) if with_spacing else ()))
        for r in records:
            row = [r.id, rel(r.image), rel(r.mask) if r.mask else "", r.domain]
            if with_spacing:
                row.append(_format_spacing(r.spacing_mm))
            writer.writerow(row)
    return path


def read_manifest(path) -> list[Record]:
    """Read a manifest CSV; relative paths are resolved against the manifest's folder."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: manifest not found")
    base = path.parent.resolve()
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[:exc.start].count(b"\n") + 1
        raise InputError(f"{path}: manifest is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} on line {line})") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read manifest ({exc.strerror or exc})") from None
    if "\0" in text:
        raise InputError(f"{path}: manifest holds NUL bytes; not a CSV text file")
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise InputError(f"{path}: manifest lacks column(s) {', '.join(missing)} (need id,image,mask,domain)")
        records = []
        for row in reader:
            where = f"{path}:{reader.line_num}"
            if not row["id"] or not row["image"] or not row["domain"]:
                raise InputError(f"{where}: empty id, image or domain")
            too_long = id_length_problem(row["id"])
            if too_long:
                raise InputError(f"{where}: {too_long}")
            records.append(Record(
                id=row["id"],
                image=str(base / row["image"]),
                mask=str(base / row["mask"]) if row["mask"] else "",
                domain=row["domain"],
                spacing_mm=_parse_spacing(row.get("spacing") or "", where),
            ))
    except csv.Error as exc:
        raise InputError(f"{path}:{reader.line_num}: not a valid CSV manifest ({exc})") from None
    check_unique_ids(records, str(path))
    return records


def id_length_problem(scan_id: str):
    """None, or why `scan_id` is too long to name files (more than MAX_ID_BYTES bytes in UTF-8)."""
    size = len(scan_id.encode("utf-8"))
    if size <= MAX_ID_BYTES:
        return None
    return (f"id {scan_id[:32]!r}... is {size} bytes long; ids name cache entries and prediction files, "
            f"so at most {MAX_ID_BYTES} bytes: rename the file or shorten the id")


def check_id_lengths(records: Sequence[Record]) -> None:
    """A one-line error naming the image of the first record whose id is too long (`id_length_problem`)."""
    for r in records:
        problem = id_length_problem(r.id)
        if problem:
            raise InputError(f"{r.image}: {problem}")


def check_unique_ids(records: Sequence[Record], where: str) -> None:
    seen = set()
    for r in records:
        if r.id in seen:
            raise InputError(f"{where}: duplicate id {r.id!r}")
        seen.add(r.id)


def domain_counts(records: Iterable[Record]) -> dict[str, int]:
    """Number of records per domain, in first-seen order."""
    counts: dict[str, int] = {}
    for r in records:
        counts[r.domain] = counts.get(r.domain, 0) + 1
    return counts


def merge_manifests(paths: Sequence, out) -> list[Record]:
    """Concatenate manifests (e.g. a source dataset and a target one) into `out`; ids must stay unique."""
    records = [r for p in paths for r in read_manifest(p)]
    check_unique_ids(records, f"merging {', '.join(str(p) for p in paths)}")
    write_manifest(records, out)
    return records


def subset_manifest(path, out, *, domains: Optional[Sequence[str]] = None,
                    ids: Optional[Sequence[str]] = None) -> list[Record]:
    """Write the records of manifest `path` in `domains` and/or with `ids` (both given: both must hold) to `out`,
    in `path`'s order; paths are rewritten for `out`'s folder, as `write_manifest` does. A domain or id that
    the manifest lacks, and an empty selection, are one-line errors."""
    if not domains and ids is None:
        raise InputError("data subset: give --domain and/or --ids (otherwise the subset is the whole manifest)")
    records = read_manifest(path)
    present = domain_counts(records)
    for domain in domains or ():
        if domain not in present:
            raise InputError(f"--domain {domain!r} names no scan of {path} (domains: {', '.join(present)})")
    known = {r.id for r in records}
    if ids is not None:
        if not ids:
            raise InputError("--ids: no id given")
        unknown = [i for i in ids if i not in known]
        if unknown:
            raise InputError(f"--ids: {unknown[0]!r} is not an id of {path}")
    wanted = None if ids is None else set(ids)
    chosen = [r for r in records if (not domains or r.domain in domains) and (wanted is None or r.id in wanted)]
    if not chosen:
        raise InputError(f"{path}: no scan is in --domain {', '.join(domains)} with one of the --ids given")
    write_manifest(chosen, out)
    return chosen
