"""`fewshot-da eval` end to end vs a plain script with DeepMind's surface-distance, plus HD95 in one process.

Part A (whole processes, as users run them): the same gt/pred folders, all metrics (Dice, surface Dice at 1
and 2 mm, HD95, ASSD), values compared to 1e-9. Contenders: `fewshot-da eval` of this checkout (1 and 2
workers), the installed `fewshot-da` of /work/main when present (the code before this work), a plain
Python script with DeepMind's package, and the same script with seung-lab `edt` for the distance
transforms. Inputs: (1) the first 20 IXI brain masks (120x120x90, 2 mm) against perturbed copies;
(2) 10 brain-sized pairs (256x256x170, 1 mm: IXI masks upsampled, prediction = smooth boundary error,
every other case with a small false-positive blob far away). Best of `--repeats` wall times.
Part B (one process): HD95 alone on a brain-sized pair: ours vs DeepMind, MONAI
compute_hausdorff_distance / compute_average_surface_distance and edt + NumPy. Best of repeats.
Part C: the time split of both end-to-end contenders (interpreter start, imports, decoding, compute).

    python benchmarks/bench_eval.py [--repeats 3] [--skip-brain] [--tmp /tmp/fewshot_da_bench_eval]

Test data are written under --tmp (never into the repository) and reused by later runs.
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
IXI_MASKS = Path(os.environ.get("FEWSHOT_DA_SHARED_DATA", ROOT.parent / "shared" / "data")) / "ixi-hh" / "masks"
if not IXI_MASKS.is_dir():
    IXI_MASKS = Path("/work/shared/data/ixi-hh/masks")

# `fewshot-da` of this checkout: the console script's two lines, with cli/ mapped as fewshot_da_cli
CLI = textwrap.dedent(f"""
    import importlib.util, sys
    sys.path.insert(0, {str(ROOT)!r})
    spec = importlib.util.spec_from_file_location(
        "fewshot_da_cli", {str(ROOT / 'cli' / '__init__.py')!r}, submodule_search_locations=[{str(ROOT / 'cli')!r}])
    module = importlib.util.module_from_spec(spec)
    sys.modules["fewshot_da_cli"] = module
    spec.loader.exec_module(module)
    from fewshot_da_cli.main import cli
    sys.argv[0] = "fewshot-da"
    cli()
""")

# DeepMind's compute_surface_distances with edt.edt for the two distance transforms (edt returns float32).
EDT_FN = """
def edt_distances(gt, pred, spacing):
    both = gt | pred
    idx = np.argwhere(both)
    lo, hi = idx.min(0), idx.max(0)
    box = tuple(slice(a, b + 1) for a, b in zip(lo, hi))
    shape = tuple(int(b - a + 2) for a, b in zip(lo, hi))
    codes = []
    for m in (gt, pred):
        crop = np.zeros(shape, np.uint8)
        crop[tuple(slice(0, s - 1) for s in shape)] = m[box]
        pad = np.pad(crop, ((1, 0), (1, 0), (1, 0)))
        c = np.zeros(shape, np.int32)
        for k, (a, b, d) in enumerate(np.ndindex(2, 2, 2)):
            c += pad[a:a + shape[0], b:b + shape[1], d:d + shape[2]].astype(np.int32) << (7 - k)
        codes.append(c)
    area = lookup_tables.create_table_neighbour_code_to_surface_area(spacing)
    borders = [(c != 0) & (c != 255) for c in codes]
    dist = [edt.edt(~b, anisotropy=spacing, black_border=False, parallel=1).astype(np.float64) for b in borders]
    d_gt, d_pred = dist[1][borders[0]], dist[0][borders[1]]
    a_gt, a_pred = area[codes[0][borders[0]]], area[codes[1][borders[1]]]
    o1, o2 = np.argsort(d_gt), np.argsort(d_pred)
    return {"distances_gt_to_pred": d_gt[o1], "distances_pred_to_gt": d_pred[o2],
            "surfel_areas_gt": a_gt[o1], "surfel_areas_pred": a_pred[o2]}
"""


# The plain user script: DeepMind's package for everything (or seung-lab edt for the distance transforms).
PLAIN = textwrap.dedent("""
    import csv, os, sys, time
    t0 = time.perf_counter()
    import numpy as np
    import nibabel as nib
    if not hasattr(np, "Inf"):
        np.Inf, np.NaN = np.inf, np.nan  # surface-distance 0.1 uses the NumPy 1 names
    import warnings
    warnings.filterwarnings("ignore")
    import surface_distance as sd
    USE_EDT = sys.argv[4] == "edt"
    if USE_EDT:
        import edt
        from surface_distance import lookup_tables
    t_import = time.perf_counter() - t0
    gt_dir, pred_dir, out = sys.argv[1:4]
    t_decode = t_compute = 0.0

    EDT_FN
    rows = []
    for name in sorted(os.listdir(gt_dir)):
        case = name.replace(".nii.gz", "").replace("_brain", "")
        t = time.perf_counter()
        gi = nib.load(os.path.join(gt_dir, name))
        gt = np.asanyarray(gi.dataobj) > 0
        pred = np.asanyarray(nib.load(os.path.join(pred_dir, case + ".nii.gz")).dataobj) > 0
        spacing = tuple(float(z) for z in gi.header.get_zooms()[:3])
        t_decode += time.perf_counter() - t
        t = time.perf_counter()
        d = edt_distances(gt, pred, spacing) if USE_EDT else sd.compute_surface_distances(gt, pred, spacing)
        ag, ap = d["surfel_areas_gt"], d["surfel_areas_pred"]
        assd = (np.dot(d["distances_gt_to_pred"], ag) + np.dot(d["distances_pred_to_gt"], ap)) / (ag.sum() + ap.sum())
        rows.append([case, sd.compute_dice_coefficient(gt, pred), sd.compute_surface_dice_at_tolerance(d, 1.0),
                     sd.compute_surface_dice_at_tolerance(d, 2.0), sd.compute_robust_hausdorff(d, 95), assd])
        t_compute += time.perf_counter() - t
    with open(out, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["case", "dice", "surface_dice_1mm", "surface_dice_2mm", "hd95_mm", "assd_mm"])
        w.writerows(rows)
    print(f"SPLIT imports {t_import:.3f} decode {t_decode:.3f} compute {t_compute:.3f}", file=sys.stderr)
""").replace("EDT_FN\n", EDT_FN + "\n")


def perturb(mask, seed, sigma_vox, amplitude_vox):
    """Boundary moved by a smooth random displacement (std `amplitude_vox` voxels), as a model's error."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    noise = ndimage.gaussian_filter(rng.standard_normal(mask.shape).astype(np.float32), sigma_vox)
    noise *= amplitude_vox / noise.std()
    signed = ndimage.distance_transform_edt(~mask).astype(np.float32)
    signed -= ndimage.distance_transform_edt(mask).astype(np.float32)
    return (signed + noise) < 0.5


def make_ixi(tmp: Path) -> tuple[Path, Path]:
    """20 real IXI masks (gt, symlinked) and eroded / dilated / shifted copies (pred)."""
    import nibabel as nib
    from scipy import ndimage

    gt_dir, pred_dir = tmp / "ixi_gt", tmp / "ixi_pred"
    if (pred_dir / ".done").exists():
        return gt_dir, pred_dir
    shutil.rmtree(gt_dir, ignore_errors=True)
    shutil.rmtree(pred_dir, ignore_errors=True)
    gt_dir.mkdir(parents=True)
    pred_dir.mkdir(parents=True)
    for k, src in enumerate(sorted(IXI_MASKS.glob("*_brain.nii.gz"))[:20]):
        (gt_dir / src.name).symlink_to(src)
        image = nib.load(str(src))
        mask = np.asanyarray(image.dataobj) > 0
        pred = [ndimage.binary_erosion(mask), ndimage.binary_dilation(mask), np.roll(mask, 1, axis=k % 3),
                perturb(mask, k, 3.0, 0.7)][k % 4]
        nib.save(nib.Nifti1Image(pred.astype(np.uint8), image.affine, image.header),
                 pred_dir / src.name.replace("_brain", ""))
    (pred_dir / ".done").touch()
    return gt_dir, pred_dir


def make_brains(tmp: Path, n: int = 10) -> tuple[Path, Path]:
    """n brain-sized pairs, 256x256x170 at 1 mm, from IXI masks upsampled 2x; pred = smooth boundary error."""
    import nibabel as nib
    from scipy import ndimage

    gt_dir, pred_dir = tmp / "brain_gt", tmp / "brain_pred"
    if (pred_dir / ".done").exists():
        return gt_dir, pred_dir
    shutil.rmtree(gt_dir, ignore_errors=True)
    shutil.rmtree(pred_dir, ignore_errors=True)
    gt_dir.mkdir(parents=True)
    pred_dir.mkdir(parents=True)
    affine = np.eye(4)
    for k, src in enumerate(sorted(IXI_MASKS.glob("*_brain.nii.gz"))[20 : 20 + n]):
        mask = np.asanyarray(nib.load(str(src)).dataobj) > 0
        up = ndimage.zoom(mask.astype(np.float32), 2.0, order=1) > 0.5
        gt = np.zeros((256, 256, 170), bool)
        idx = np.argwhere(up)
        centre = (idx.min(0) + idx.max(0)) // 2
        src_box = tuple(slice(max(0, c - s // 2), max(0, c - s // 2) + min(s, u))
                        for c, s, u in zip(centre, gt.shape, up.shape))
        block = up[src_box]
        gt[tuple(slice((s - b) // 2, (s - b) // 2 + b) for s, b in zip(gt.shape, block.shape))] = block
        pred = perturb(gt, 100 + k, 8.0, 1.0 + 0.5 * (k % 3))
        if k % 2:
            pred[10:16, 10:16, 10:16] = True  # a false positive far from the brain
        case = src.name.replace("_brain.nii.gz", "")
        nib.save(nib.Nifti1Image(gt.astype(np.uint8), affine), gt_dir / f"{case}_brain.nii.gz")
        nib.save(nib.Nifti1Image(pred.astype(np.uint8), affine), pred_dir / f"{case}.nii.gz")
    (pred_dir / ".done").touch()
    return gt_dir, pred_dir


def run(cmd, repeats):
    """Best wall time and best CPU time (user + sys of the child) of `repeats` runs, and the last stderr."""
    import resource

    best, best_cpu, err = float("inf"), float("inf"), ""
    for _ in range(repeats):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        elapsed = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if proc.returncode != 0:
            raise SystemExit(f"{cmd[:3]} failed: {proc.stderr.strip().splitlines()[-1:]}")
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        best, best_cpu, err = min(best, elapsed), min(best_cpu, cpu), proc.stderr
    return best, best_cpu, err


def read_csv(path):
    with open(path) as f:
        return {r["case"]: {k: float(v) for k, v in r.items() if k != "case"} for r in csv.DictReader(f)}


def max_diff(a, b):
    worst = 0.0
    for case in a:
        for key in ("dice", "surface_dice_1mm", "surface_dice_2mm", "hd95_mm", "assd_mm"):
            x, y = a[case][key], b[case][key]
            if x != y and not (np.isnan(x) and np.isnan(y)):
                worst = max(worst, abs(x - y))
    return worst


def end_to_end(name, gt_dir, pred_dir, tmp, repeats):
    out = tmp / f"out_{name}"
    plain = tmp / "plain.py"
    plain.write_text(PLAIN)
    common = ["--gt", str(gt_dir), "--pred", str(pred_dir), "--tolerance", "1", "--tolerance", "2"]
    contenders = []
    for workers in (1, 2):
        contenders.append((f"fewshot-da eval --workers {workers} (this checkout)",
                           [sys.executable, "-c", CLI, "eval", *common, "--workers", str(workers),
                            "--out", str(out / f"w{workers}")], out / f"w{workers}" / "metrics.csv"))
    installed = shutil.which("fewshot-da")
    if installed and os.environ.get("BENCH_BEFORE", "1") == "1":
        contenders.append(("fewshot-da eval of /work/main (before: whole-crop EDT)",
                           [installed, "eval", *common, "--out", str(out / "main")], out / "main" / "metrics.csv"))
    contenders.append(("plain script, DeepMind surface-distance",
                       [sys.executable, str(plain), str(gt_dir), str(pred_dir), str(out / "dm.csv"), "dm"],
                       out / "dm.csv"))
    contenders.append(("plain script, DeepMind rules + seung-lab edt",
                       [sys.executable, str(plain), str(gt_dir), str(pred_dir), str(out / "edt.csv"), "edt"],
                       out / "edt.csv"))
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for label, cmd, csv_path in contenders:
        reps = repeats if "DeepMind surface-distance" not in label or name == "ixi" else max(1, repeats - 1)
        seconds, cpu, err = run(cmd, reps)
        split = next((line for line in err.splitlines() if line.startswith("SPLIT")), "")
        results.append((label, seconds, cpu, csv_path, split))
        print(f"  {name}: {label}: {seconds:.2f} s wall, {cpu:.2f} s CPU {split}", flush=True)
    reference = read_csv(out / "dm.csv")
    ours, ours_cpu = results[0][1], results[0][2]
    print(f"\n| {name}: contender | best wall s | x ours (1 worker) | best CPU s | CPU x ours | "
          "max abs diff vs DeepMind |")
    print("|---|---:|---:|---:|---:|---:|")
    for label, seconds, cpu, csv_path, _ in results:
        diff = max_diff(read_csv(csv_path), reference)
        print(f"| {label} | {seconds:.2f} | {seconds / ours:.1f} | {cpu:.2f} | {cpu / ours_cpu:.1f} | {diff:.2g} |")
    return results


def split_ours(gt_dir, pred_dir, repeats):
    """In-process split of this checkout's eval: imports (fresh interpreter), decoding, compute."""
    code = (
        "import time, sys\nt0 = time.perf_counter()\n"
        + CLI.replace("cli()", "")
        + "t1 = time.perf_counter()\nfrom fewshot_da.metrics import evaluate\nimport nibabel\n"
        + "t2 = time.perf_counter()\nprint(f'IMPORTS cli {t1 - t0:.3f} eval {t2 - t1:.3f}')\n"
    )
    best_cli = best_eval = float("inf")
    for _ in range(repeats):
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        parts = proc.stdout.split()
        best_cli, best_eval = min(best_cli, float(parts[2])), min(best_eval, float(parts[4]))
    sys.path.insert(0, str(ROOT))
    from fewshot_da.metrics.evaluate import load_mask, match_cases
    from fewshot_da.metrics.scoring import score_case

    pairs = match_cases(gt_dir, pred_dir)
    decode = compute = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        loaded = [(load_mask(g), load_mask(p)) for _, g, p in pairs]
        decode = min(decode, time.perf_counter() - t)
        t = time.perf_counter()
        for (gt, spacing, _, _), (pred, _, _, _) in loaded:
            score_case(gt, pred, spacing_mm=spacing, tolerances_mm=(1.0, 2.0), num_threads=1)
        compute = min(compute, time.perf_counter() - t)
    start = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        start = min(start, time.perf_counter() - t)
    return start, best_cli, best_eval, decode, compute


def hd95_in_process(repeats):
    """HD95 alone on one brain-sized pair (the first of make_brains), best of `repeats`."""
    import warnings

    import nibabel as nib

    warnings.filterwarnings("ignore")
    sys.path.insert(0, str(ROOT))
    from fewshot_da.metrics import assd, hd95

    tmp = Path(ARGS.tmp)
    gt_path = sorted((tmp / "brain_gt").iterdir())[1]
    pred_path = tmp / "brain_pred" / gt_path.name.replace("_brain", "")
    # the same C-ordered bool arrays for every method (NIfTI data arrive in Fortran order; ours copies those
    # to C order first, ~15 ms per brain mask, which eval pays and the end-to-end rows include)
    gt = np.ascontiguousarray(np.asanyarray(nib.load(str(gt_path)).dataobj) > 0)
    pred = np.ascontiguousarray(np.asanyarray(nib.load(str(pred_path)).dataobj) > 0)
    spacing = (1.0, 1.0, 1.0)

    def best(fn, n):
        t_best, value = float("inf"), None
        for _ in range(n):
            t = time.perf_counter()
            value = fn()
            t_best = min(t_best, time.perf_counter() - t)
        return t_best, value

    rows = [("fewshot_da hd95, 1 thread", *best(lambda: hd95(gt, pred, spacing_mm=spacing, num_threads=1), 7 * repeats)),
            ("fewshot_da hd95, 2 threads", *best(lambda: hd95(gt, pred, spacing_mm=spacing, num_threads=2), 7 * repeats)),
            ("fewshot_da assd, 1 thread", *best(lambda: assd(gt, pred, spacing_mm=spacing, num_threads=1), 7 * repeats))]
    if not hasattr(np, "Inf"):
        np.Inf, np.NaN = np.inf, np.nan
    import surface_distance as sd

    rows.append(("DeepMind compute_surface_distances + compute_robust_hausdorff",
                 *best(lambda: sd.compute_robust_hausdorff(sd.compute_surface_distances(gt, pred, spacing), 95),
                       repeats)))
    import edt
    from surface_distance import lookup_tables

    namespace = {"np": np, "edt": edt, "lookup_tables": lookup_tables}
    exec(EDT_FN, namespace)  # noqa: S102 - our own peer code, shared with the plain script
    rows.append(("edt + NumPy (DeepMind rules, edt.edt float32)",
                 *best(lambda: sd.compute_robust_hausdorff(namespace["edt_distances"](gt, pred, spacing), 95),
                       repeats)))
    try:
        import torch
        from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance

        torch.set_num_threads(1)
        y = torch.from_numpy(gt[None, None].astype(np.float32))
        y_pred = torch.from_numpy(pred[None, None].astype(np.float32))
        rows.append(("MONAI compute_hausdorff_distance(percentile=95) (edge voxels, other definition)",
                     *best(lambda: float(compute_hausdorff_distance(y_pred, y, include_background=True,
                                                                    percentile=95, spacing=list(spacing))), repeats)))
        rows.append(("MONAI compute_average_surface_distance(symmetric=True) (other definition)",
                     *best(lambda: float(compute_average_surface_distance(y_pred, y, include_background=True,
                                                                          symmetric=True, spacing=list(spacing))),
                           repeats)))
    except ImportError:
        print("MONAI not installed: skipped")
    ours = rows[0][1]
    print(f"\n| HD95 alone, {gt_path.name} 256x256x170 at 1 mm | best ms | value (mm) | x ours (1 thread) |")
    print("|---|---:|---:|---:|")
    for label, seconds, value in rows:
        print(f"| {label} | {seconds * 1000:.1f} | {value:.6f} | {seconds / ours:.1f} |")


def decode(repeats):
    """ms per file: nibabel.load + dataobj (stops before the gzip CRC), whole stream via zlib, via isal."""
    import gzip

    import nibabel as nib

    try:
        from isal import igzip
    except ImportError:
        igzip = None
    tmp = Path(ARGS.tmp)
    sets = [("IXI 120x120x90 uint8", sorted((tmp / "ixi_pred").glob("*.nii.gz")))]
    if (tmp / "brain_pred" / ".done").exists():
        sets.append(("brain 256x256x170 uint8", sorted((tmp / "brain_pred").glob("*.nii.gz"))))

    def whole(module):
        return lambda f: np.asanyarray(nib.Nifti1Image.from_bytes(module.decompress(f.read_bytes())).dataobj)

    readers = [("nibabel.load (no CRC check)", lambda f: np.asanyarray(nib.load(str(f)).dataobj)),
               ("whole stream, zlib (gzip module)", whole(gzip))]
    if igzip is not None:
        readers.append(("whole stream, isal.igzip", whole(igzip)))
    print("\n| decoding, ms per file (best of repeats) | " + " | ".join(n for n, _ in sets) + " |")
    print("|---|" + "---:|" * len(sets))
    for label, fn in readers:
        cells = []
        for _, files in sets:
            best = float("inf")
            for _ in range(repeats):
                t = time.perf_counter()
                for f in files:
                    fn(f)
                best = min(best, (time.perf_counter() - t) / len(files))
            cells.append(f"{best * 1000:.1f}")
        print(f"| {label} | " + " | ".join(cells) + " |")


ARGS = None


def main():
    global ARGS
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-brain", action="store_true")
    parser.add_argument("--only", choices=["ixi", "brain", "hd95", "split", "decode"], default=None)
    parser.add_argument("--tmp", default="/tmp/fewshot_da_bench_eval")
    ARGS = parser.parse_args()
    tmp = Path(ARGS.tmp)
    tmp.mkdir(parents=True, exist_ok=True)
    print(f"load average at start: {os.getloadavg()}")
    ixi = make_ixi(tmp)
    if ARGS.only in (None, "ixi"):
        end_to_end("ixi", *ixi, tmp, ARGS.repeats)
    if ARGS.only in (None, "split"):
        for name, dirs in [("ixi", ixi)] + ([] if ARGS.skip_brain else [("brain", make_brains(tmp))]):
            start, cli, imports, decoding, compute = split_ours(*dirs, ARGS.repeats)
            print(f"\nsplit ({name}, this checkout, 1 worker): interpreter start {start:.3f} s, CLI import "
                  f"{cli:.3f} s, eval imports (NumPy, nibabel, kernels) {imports:.3f} s, decoding {decoding:.3f} s, "
                  f"compute {compute:.3f} s")
    if not ARGS.skip_brain and ARGS.only in (None, "brain"):
        end_to_end("brain", *make_brains(tmp), tmp, ARGS.repeats)
    if not ARGS.skip_brain and ARGS.only in (None, "hd95"):
        make_brains(tmp)
        hd95_in_process(ARGS.repeats)
    if ARGS.only in (None, "decode"):
        decode(ARGS.repeats)
    print(f"load average at end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
