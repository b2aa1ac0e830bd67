"""CLI verbs of `fewshot-da data`: index a dataset, preprocess a manifest, write the splits, write phantoms."""
import sys

import click
from fewshot_da_cli.errors import one_line_errors


@click.group()
def data():
    """Datasets -> manifest CSV -> cached preprocessed volumes; reference splits; synthetic phantoms."""


@data.command("index")
@click.argument("layout", type=click.Choice(["cc359", "folder", "images2d"]))
@click.argument("root", type=click.Path(file_okay=False))
@click.option("--out", required=True, type=click.Path(dir_okay=False),
              help="Manifest CSV to write. Its file paths are written relative to the manifest's own folder "
                   "(absolute when outside it) and read back relative to it: to move or filter a manifest into "
                   "another folder, use `fewshot-da data subset`, which rewrites them.")
@click.option("--images", default=None, help="Images subfolder (folder/images2d; default images, or imagesTr).")
@click.option("--masks", default=None, help="Masks subfolder (folder/images2d; default masks, or labelsTr).")
@click.option("--mask-suffix", default=None,
              help="Mask name = image stem + this (default: folder auto-detects, images2d _mask).")
@click.option("--image-suffix", default=None,
              help="Image name = case + this (e.g. _t1 for <case>_t1.nii.gz + <case>_mask.nii.gz); id = case.")
@click.option("--domain", default=None, help="Domain name for all scans (default: subfolder names or ROOT's name).")
@one_line_errors
def index_command(layout, root, out, images, masks, mask_suffix, image_suffix, domain):
    """Index ROOT in LAYOUT (cc359 | folder | images2d) into a manifest; print counts per domain and problems."""
    from fewshot_da.data.datasets import index_dataset
    from fewshot_da.data.manifest import domain_counts

    records, problems = index_dataset(layout, root, out, images=images, masks=masks,
                                      mask_suffix=mask_suffix, image_suffix=image_suffix, domain=domain)
    for name, count in domain_counts(records).items():
        click.echo(f"{name}\t{count}")
    click.echo(f"{len(records)} scans -> {out}")
    for problem in problems:
        click.echo(f"problem: {problem}")
    if not problems:
        click.echo("no problems found")


def _parse_numbers(text, option, kind=float):
    """'1,0.95,0.95' or '1 0.95 0.95' -> a tuple; InputError naming `option` when it is not numbers."""
    from fewshot_da.errors import InputError

    if text is None:
        return None
    try:
        values = tuple(kind(v) for v in text.replace(",", " ").split())
    except ValueError:
        raise InputError(f"{option} {text!r}: expected comma-separated numbers, e.g. 1,1,1") from None
    if not values:
        raise InputError(f"{option} {text!r}: expected comma-separated numbers, e.g. 1,1,1")
    return values


def _parse_spacing(text, option="--spacing-mm"):
    return _parse_numbers(text, option)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


class _SpacingCommand(click.Command):
    """Takes `--spacing-mm Z Y X` (three floats, as every other verb) as well as one word: '1' (isotropic),
    'none', or the older comma form '1,0.95,0.95'."""

    def parse_args(self, ctx, args):
        joined, i = [], 0
        while i < len(args):
            if args[i] == "--":
                joined += args[i:]
                break
            joined.append(args[i])
            following = args[i + 1:i + 4]
            if args[i] == "--spacing-mm" and len(following) == 3 and all(_is_number(v) for v in following):
                joined.append(",".join(following))
                i += 3
            i += 1
        return super().parse_args(ctx, joined)


_SPACING_HELP = ("in mm: three floats, one per array axis, as in every verb (one number: the same on every "
                 "axis; the older comma form 1,0.95,0.95 is still read)")


@data.command("preprocess", cls=_SpacingCommand)
@click.argument("manifest", type=click.Path(dir_okay=False, exists=True))
@click.option("--cache", "cache_dir", required=True, type=click.Path(file_okay=False), help="Cache folder.")
@click.option("--preset", type=click.Choice(["paper", "dart20-code"]), default="paper", show_default=True,
              help="paper: 1 mm isotropic, float32; dart20-code: (1, 0.95, 0.95) mm, float16.")
@click.option("--spacing-mm", default=None, metavar="MM MM MM",
              help=f"Target spacing {_SPACING_HELP}; 'none' keeps the grid. Default: the preset's.")
@click.option("--reorient-ras/--no-reorient-ras", default=None, help="Reorient to RAS first (default: preset, off).")
@click.option("--slice-axis", type=click.IntRange(0, 2), default=None, help="Array axis to slice along (default 2).")
@click.option("--dtype", type=click.Choice(["float32", "float16"]), default=None, help="Storage type (default: preset).")
@click.option("--cache-key", type=click.Choice(["stat", "content"]), default=None,
              help="Identify files by path+size+mtime (stat, default) or by a hash of their bytes (content).")
@click.option("--resize", default=None,
              help="In-plane size of every slice in pixels, '256' or 'H,W' (the ultrasound protocol: 256); "
                   "linear, aspect ratio not kept, spacing grows to match. Default: keep the grid.")
@click.option("--histogram", type=click.Path(dir_okay=False), default=None,
              help="Histogram reference JSON: map intensities onto it after scaling (label-free matching).")
@click.option("--workers", default=2, show_default=True, type=click.IntRange(1), help="Parallel processes.")
@one_line_errors
def preprocess_command(manifest, cache_dir, preset, spacing_mm, reorient_ras, slice_axis, dtype, cache_key,
                       resize, histogram, workers):
    """Resample, clip and scale every scan of MANIFEST into slice-major .npy files under --cache (resumable)."""
    from fewshot_da.data.manifest import read_manifest
    from fewshot_da.data.preprocess import PRESETS, parse_resize
    from fewshot_da.data.cache import preprocess_manifest

    changes = {"reorient_ras": reorient_ras, "slice_axis": slice_axis, "dtype": dtype, "cache_key": cache_key,
               "resize": parse_resize(resize) if resize is not None else None, "histogram": histogram}
    if spacing_mm is not None:
        changes["target_spacing_mm"] = None if spacing_mm.strip().lower() == "none" else _parse_spacing(spacing_mm)
    options = PRESETS[preset].replace(**{k: v for k, v in changes.items() if v is not None or k == "target_spacing_mm"})
    volumes = preprocess_manifest(read_manifest(manifest), cache_dir, options, num_workers=workers,
                                  progress=sys.stderr.isatty())
    click.echo(f"{len(volumes)} volumes cached in {cache_dir}")


@data.command("split")
@click.argument("manifest", type=click.Path(dir_okay=False, exists=True))
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Splits JSON to write.")
@click.option("--seed", default=0xBadCafe, show_default=True, type=int, help="Seed of all splits (0xBadCafe).")
@click.option("--folds", default=5, show_default=True, type=click.IntRange(0),
              help="k of the k-fold cross-validation written per domain (0: none).")
@one_line_errors
def split_command(manifest, out, seed, folds):
    """Write the reference splits of MANIFEST (one2all, oracle CV, nested one2one, k-fold CV, budgets) as JSON."""
    from fewshot_da.data.manifest import read_manifest
    from fewshot_da.data.splits import write_splits

    splits = write_splits(read_manifest(manifest), out, seed, cv_folds=folds)
    click.echo(f"{len(splits['domains'])} domains, {len(splits['one2all'])} one2all sources, "
               f"{sum(len(f) for f in splits['oracle'].values())} oracle folds, {len(splits['pairs'])} pairs, "
               f"{folds}-fold CV of {len(splits['cv'])} domains -> {out}")
    click.echo("budgets: " + ", ".join(b["name"] for b in splits["budgets"]))
    for note in splits["notes"]:
        click.echo(f"note: {note}")


@data.command("phantoms", cls=_SpacingCommand)
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--scans-per-domain", default=3, show_default=True, type=click.IntRange(1), help="Scans per domain.")
@click.option("--shape", default="64,64,48", show_default=True, help="Volume shape in voxels (array order).")
@click.option("--spacing-mm", default="1 1 1", show_default=True, metavar="MM MM MM", help=f"Voxel spacing {_SPACING_HELP}.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of anatomy and scanner noise.")
@one_line_errors
def phantoms_command(out, scans_per_domain, shape, spacing_mm, seed):
    """Write synthetic six-scanner head phantoms to OUT in the CC359 layout, plus OUT/manifest.csv."""
    from fewshot_da.data.phantoms import write_phantom_manifest

    shape = _parse_numbers(shape, "--shape", int)
    spacing = _parse_spacing(spacing_mm)
    records = write_phantom_manifest(out, scans_per_domain=scans_per_domain, shape=shape,
                                     spacing_mm=spacing * 3 if len(spacing) == 1 else spacing, seed=seed)
    click.echo(f"{len(records)} phantoms -> {out} (manifest {out}/manifest.csv)")


@data.command("merge")
@click.argument("manifests", nargs=-1, required=True, type=click.Path(dir_okay=False, exists=True))
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Manifest CSV to write.")
@one_line_errors
def merge_command(manifests, out):
    """Concatenate MANIFESTS (e.g. a source and a target dataset) into one; ids must be unique."""
    from fewshot_da.data.manifest import domain_counts, merge_manifests

    records = merge_manifests(manifests, out)
    click.echo(", ".join(f"{d} {n}" for d, n in domain_counts(records).items()) + f" -> {out}")


@data.command("subset")
@click.argument("manifest", type=click.Path(dir_okay=False, exists=True))
@click.option("--out", required=True, type=click.Path(dir_okay=False),
              help="Manifest CSV to write (any folder: its paths are rewritten to stay valid there).")
@click.option("--domain", "domains", multiple=True, help="Keep the scans of this domain; repeat for several.")
@click.option("--ids", default=None, help="Keep these ids (comma-separated), e.g. the labelled scans for recommend.")
@one_line_errors
def subset_command(manifest, out, domains, ids):
    """Write the scans of MANIFEST in --domain (and/or --ids) to --out, in MANIFEST's order, paths rewritten."""
    from fewshot_da.data.manifest import domain_counts, subset_manifest

    chosen = None if ids is None else [i.strip() for i in ids.split(",") if i.strip()]
    records = subset_manifest(manifest, out, domains=domains or None, ids=chosen)
    click.echo(", ".join(f"{d} {n}" for d, n in domain_counts(records).items()) + f" -> {out}")


@data.command("shift")
@click.argument("manifest", type=click.Path(dir_okay=False, exists=True))
@click.option("--domain", "source_domain", required=True, help="Domain whose scans are drawn for shifting.")
@click.option("--n", "n_scans", type=click.IntRange(1), required=True, help="Number of scans to move and shift.")
@click.option("--new-domain", default=None, help="Name of the shifted domain (default: DOMAIN-shift).")
@click.option("--out-dir", required=True, type=click.Path(file_okay=False), help="Folder for the shifted NIfTI files.")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Manifest CSV to write (all scans).")
@click.option("--gamma", type=float, default=0.6, show_default=True, help="Intensity exponent on [0, 1] intensities.")
@click.option("--bias", type=float, default=0.35, show_default=True, help="Log-amplitude of the smooth bias field.")
@click.option("--noise", type=float, default=0.04, show_default=True, help="Rician noise sigma (x 99th percentile).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the scan choice and the shift.")
@one_line_errors
def shift_command(manifest, source_domain, n_scans, new_domain, out_dir, out, gamma, bias, noise, seed):
    """Simulate a scanner: move N scans of DOMAIN into a new domain with another contrast, bias field and noise."""
    from fewshot_da.data.shift import ScannerShift, shift_domain

    records = shift_domain(manifest, source_domain, n_scans, out_dir, out, new_domain=new_domain,
                           shift=ScannerShift(gamma=gamma, bias_amplitude=bias, noise_sigma=noise), seed=seed)
    click.echo(f"{n_scans} {source_domain} scans shifted into {new_domain or source_domain + '-shift'}; "
               f"{len(records)} scans -> {out}")


COMMANDS = [data]
