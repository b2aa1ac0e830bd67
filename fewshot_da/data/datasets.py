"""Dataset builders: CC359, generic image/mask folders (incl. nnU-Net) and 2D image folders -> Records."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Optional, Sequence

from fewshot_da.data.io import IMAGE2D_SUFFIXES, NIFTI_SUFFIXES, is_image2d, is_nifti, strip_suffix
from fewshot_da.data.manifest import Record, check_id_lengths, check_unique_ids
from fewshot_da.errors import InputError

# Index in this tuple = the reference code's `fold` (product of (siemens, ge, philips) x (15, 3)).
CC359_DOMAINS = ("siemens15", "siemens3", "ge15", "ge3", "philips15", "philips3")
CC359_NAME = re.compile(r"^(CC\d{4})_(siemens|ge|philips)_(15|3)_(\d+)_([MF])(_ss)?\.nii(\.gz)?$")
# Tried in this order when `mask_suffix` is None ("" = same file name in the masks folder, as nnU-Net).
MASK_SUFFIXES = ("", "_mask", "_brain", "_seg", "_ss", "_label", "_labels")


def cc359_domain(vendor: str, tesla: str) -> str:
    return f"{vendor}{tesla}"


def _nifti_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and is_nifti(p))


def index_cc359(root) -> list[Record]:
    """Index the CC359 layout: `images/CC0001_philips_15_55_M.nii.gz` + `masks/<stem>_ss.nii.gz`.

    Images and masks may also share one folder (`root` itself). The domain is vendor + field strength
    (`philips15`, ...; see CC359_DOMAINS for the reference index). Sorted by id, as the reference.
    Raises InputError naming the file for a name that does not follow the pattern or a missing mask.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: CC359 folder not found")
    image_dir, mask_dir = root / "images", root / "masks"
    if image_dir.is_dir() != mask_dir.is_dir():
        missing = mask_dir if image_dir.is_dir() else image_dir
        raise InputError(f"{missing}: folder not found (CC359 keeps images/ and masks/ side by side)")
    if not image_dir.is_dir():
        image_dir = mask_dir = root
    images, masks = {}, {}
    for folder in {image_dir, mask_dir}:
        for path in _nifti_files(folder):
            match = CC359_NAME.match(path.name)
            if match is None:
                raise InputError(f"{path}: not a CC359 name (expected e.g. CC0001_philips_15_55_M[_ss].nii.gz)")
            (masks if match.group(6) else images)[match.group(1)] = (path, match)
    if not images:
        raise InputError(f"{image_dir}: no CC359 images (*.nii.gz) found")
    records = []
    for scan_id in sorted(images):
        path, match = images[scan_id]
        if scan_id not in masks:
            raise InputError(f"{path}: no mask {strip_suffix(path.name)}_ss.nii.gz in {mask_dir}")
        records.append(Record(scan_id, str(path), str(masks[scan_id][0]), cc359_domain(match.group(2), match.group(3))))
    return records


def _pick_mask_suffix(image_names: Sequence[str], mask_names: set, suffixes: Sequence[str]) -> str:
    best, best_hits = suffixes[0], -1
    for suffix in suffixes:
        hits = sum(f"{stem}{suffix}" in mask_names for stem in image_names)
        if hits > best_hits:
            best, best_hits = suffix, hits
    return best


def _missing_mask_error(path: Path, case: str, mask_dir: Path, tried: Sequence[str], mask_files: dict,
                        image_suffix: str) -> InputError:
    """One line naming the image, the mask names looked for and, when it fits, the --image-suffix to use."""
    names = ", ".join(f"{case}{s}.*" for s in tried)
    hint = ""
    if not image_suffix and "_" in case:
        prefix, tail = case.rsplit("_", 1)
        found = [s for s in MASK_SUFFIXES if s and f"{prefix}{s}" in mask_files]
        if found:
            hint = f"; {prefix}{found[0]} exists: try --image-suffix _{tail} --mask-suffix {found[0]}"
    return InputError(f"{path}: no mask in {mask_dir}; looked for {names}{hint}")


def _index_pairs(image_dir: Path, mask_dir: Path, domain: str, mask_suffix: Optional[str], *,
                 image_ok, strip_channel: bool, image_suffix: str = "") -> list[Record]:
    if not image_dir.is_dir():
        raise InputError(f"{image_dir}: images folder not found")
    if not mask_dir.is_dir():
        raise InputError(f"{mask_dir}: masks folder not found")
    mask_files = {strip_suffix(p.name): p for p in mask_dir.iterdir() if p.is_file() and image_ok(p)}
    image_files = sorted(p for p in image_dir.iterdir() if p.is_file() and image_ok(p))
    stems = {}
    for p in image_files:
        stem = strip_suffix(p.name)
        case = stem[:-5] if strip_channel and stem.endswith("_0000") else stem
        stems[case] = p
    if strip_channel:
        extra = [p for p in image_files if re.search(r"_\d{4}$", strip_suffix(p.name))
                 and not strip_suffix(p.name).endswith("_0000")]
        if extra:
            raise InputError(f"{extra[0]}: multi-channel nnU-Net input (_0001...) is not supported; one channel only")
    if image_suffix:
        stems = {case[:-len(image_suffix)]: p for case, p in stems.items()
                 if case.endswith(image_suffix) and len(case) > len(image_suffix)}
        if not stems:
            raise InputError(f"{image_dir}: no images named <case>{image_suffix}.* (--image-suffix {image_suffix})")
    shared = image_dir.resolve() == mask_dir.resolve()
    tried = [mask_suffix]
    if mask_suffix is None:
        candidates = [s for s in MASK_SUFFIXES if s] if shared else MASK_SUFFIXES
        mask_suffix = _pick_mask_suffix(list(stems), set(mask_files), candidates)
        tried = [mask_suffix] + [s for s in candidates if s != mask_suffix]
    if shared and not mask_suffix:
        raise InputError(f"{image_dir}: images and masks share a folder, so a mask suffix is needed")
    if shared:
        extra_masks = [p for case, p in stems.items() if re.search(re.escape(mask_suffix) + r"_\d+$", case)]
        if extra_masks:
            raise InputError(f"{extra_masks[0]}: a second mask of one image; merge them into one "
                             f"<name>{mask_suffix} file first (one binary mask per image)")
        if not image_suffix:
            stems = {case: p for case, p in stems.items() if not case.endswith(mask_suffix)}
    if not stems:
        raise InputError(f"{image_dir}: no images found for domain {domain!r}")
    records = []
    for case, path in sorted(stems.items()):
        mask = mask_files.get(f"{case}{mask_suffix}")
        if mask is None:
            raise _missing_mask_error(path, case, mask_dir, tried, mask_files, image_suffix)
        records.append(Record(case, str(path), str(mask), domain))
    return records


def _domain_folders(root: Path, images: str) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and (p / images).is_dir())


def index_folder(root, *, images: str = "images", masks: str = "masks", mask_suffix: Optional[str] = None,
                 domain: Optional[str] = None, image_suffix: str = "") -> list[Record]:
    """Index NIfTI pairs `root/<images>/<case>.nii.gz` + `root/<masks>/<case><mask_suffix>.nii.gz`.

    - nnU-Net layout (`imagesTr/<case>_0000.nii.gz`, `labelsTr/<case>.nii.gz`) is detected automatically.
    - `images` and `masks` may be the same folder ("."): files ending in `mask_suffix` are then masks.
    - `mask_suffix=None` picks the first of MASK_SUFFIXES that matches most images.
    - `image_suffix` (e.g. "_t1"): images are `<case><image_suffix>.nii.gz`, their masks
      `<case><mask_suffix>.nii.gz` and the id is `<case>`; other files in the images folder are ignored.
    - `domain=None`: each subfolder of `root` that has an `<images>` folder is a domain; if `root` itself
      has it, the domain is `root`'s name.
    Sorted by id within a domain, domains in name order.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: folder not found")
    strip_channel = False
    if (root / "imagesTr").is_dir() and images == "images":
        images, masks, strip_channel = "imagesTr", "labelsTr", True
        mask_suffix = "" if mask_suffix is None else mask_suffix
    if (root / images).is_dir():
        return _index_pairs(root / images, root / masks, domain or root.name, mask_suffix,
                            image_ok=is_nifti, strip_channel=strip_channel, image_suffix=image_suffix)
    if domain is not None:
        raise InputError(f"{root / images}: images folder not found")
    folders = _domain_folders(root, images)
    if not folders:
        raise InputError(f"{root}: neither {images}/ nor domain subfolders with {images}/ found")
    records = []
    for folder in folders:
        records += _index_pairs(folder / images, folder / masks, folder.name, mask_suffix,
                                image_ok=is_nifti, strip_channel=strip_channel, image_suffix=image_suffix)
    check_unique_ids(records, str(root))
    return records


def index_images2d(root, *, images: str = "images", masks: str = "masks", mask_suffix: str = "_mask",
                   domain: Optional[str] = None, image_suffix: str = "") -> list[Record]:
    """Index 2D image folders (PNG/JPEG); each image is a one-slice volume.

    Layouts: `root/images/<name>.png` + `root/masks/<name>_mask.png` (BUS-BRA, chest X-ray demo), or the
    same one level down per class (`root/<class>/images`, `root/<class>/masks`, as the BUSI copy here);
    with `images=masks="."` images and masks share a folder (`root/<class>/<name>.png` +
    `<name>_mask.png`, the original BUSI download, whose extra `_mask_1` files must be merged first).
    Classes are not domains: the domain is `domain` or `root`'s name. Ids are file stems (prefixed with
    the class folder when stems repeat across classes).
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: folder not found")
    domain = domain or root.name
    root_has_images = any(p.is_file() and is_image2d(p) for p in (root / images).iterdir()) \
        if (root / images).is_dir() else False
    if root_has_images or (images != "." and (root / images).is_dir()):
        groups = [root]
    else:
        groups = _domain_folders(root, images)
        if not groups:
            raise InputError(f"{root}: neither {images}/ nor class subfolders with {images}/ found")
    records = []
    for group in groups:
        records += [(group, r) for r in _index_pairs(group / images, group / masks, domain, mask_suffix,
                                                     image_ok=is_image2d, strip_channel=False,
                                                     image_suffix=image_suffix)]
    ids = [r.id for _, r in records]
    if len(set(ids)) != len(ids):
        records = [(g, Record(f"{g.name}/{r.id}", r.image, r.mask, r.domain)) for g, r in records]
    return sorted((r for _, r in records), key=lambda r: r.id)


def index_dataset(layout: str, root, out=None, **options):
    """Index `root` with the builder named `layout` (cc359, folder, images2d), write the manifest to `out`
    (when given) and return (records, problems) where problems are one-line findings of `find_problems`."""
    from fewshot_da.data.checks import find_problems
    from fewshot_da.data.manifest import write_manifest

    if layout not in LAYOUTS:
        raise InputError(f"layout {layout!r} unknown (choose from {', '.join(LAYOUTS)})")
    options = {k: v for k, v in options.items() if v is not None}
    if layout == "cc359" and options:
        raise InputError(f"layout cc359 takes no options (got {', '.join('--' + k.replace('_', '-') for k in options)})")
    records = LAYOUTS[layout](root, **options)
    check_id_lengths(records)
    problems = find_problems(records)
    if out is not None:
        write_manifest(records, out)
    return records, problems


LAYOUTS = {"cc359": index_cc359, "folder": index_folder, "images2d": index_images2d}
__all__ = ["CC359_DOMAINS", "LAYOUTS", "index_dataset", "index_cc359", "index_folder", "index_images2d",
           "IMAGE2D_SUFFIXES", "NIFTI_SUFFIXES"]
