"""Surface Dice: fewshot_da (C++) vs DeepMind surface-distance, MONAI compute_surface_dice and the NumPy oracle.

One process, the same inputs for every method, median wall time of repeats, ratios against ours.
Inputs: a brain-like pair at 256x256x170 (an IXI brain mask upsampled to 1 mm; the prediction is the
same mask with a smooth, low-frequency boundary error, as a model would make), scored at 1 mm and at
0.9375x0.9375x1.2 mm spacing, tolerance 1 and 2 mm; then real IXI masks (2 mm) vs perturbed copies.

    python benchmarks/bench_surface_dice.py [--quick] [--threads 2]

Missing peers (surface-distance, monai) are reported and skipped.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fewshot_da import metrics
from fewshot_da.metrics import reference

IXI_MASKS = ROOT.parent / "shared" / "data" / "ixi-hh" / "masks"


def timed(fn, repeats):
    """(last value, median wall seconds, median process CPU seconds) over `repeats` calls."""
    values, times, cpu = None, [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        values = fn()
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return values, statistics.median(times), statistics.median(cpu)


def perturb(mask, seed, sigma_vox, amplitude_vox):
    """The mask with its boundary moved by a smooth random displacement (std `amplitude_vox` voxels), as a
    model's error looks: threshold of (signed distance to the boundary + low-frequency noise)."""
    rng = np.random.default_rng(seed)
    noise = ndimage.gaussian_filter(rng.standard_normal(mask.shape).astype(np.float32), sigma_vox)
    noise *= amplitude_vox / noise.std()
    signed = ndimage.distance_transform_edt(~mask).astype(np.float32)
    signed -= ndimage.distance_transform_edt(mask).astype(np.float32)
    return (signed + noise) < 0.5


def brain_pair():
    """256x256x170 brain-like pair from a real IXI mask (2 mm -> 1 mm, linear, threshold 0.5)."""
    import nibabel as nib

    mask = np.asanyarray(nib.load(str(IXI_MASKS / "IXI012-HH-1211_brain.nii.gz")).dataobj) > 0
    up = ndimage.zoom(mask.astype(np.float32), 2.0, order=1) > 0.5  # 240x240x180
    gt = np.zeros((256, 256, 170), bool)
    lo = np.argwhere(up).min(0)
    hi = np.argwhere(up).max(0)
    centre = (lo + hi) // 2
    src = [
        slice(max(0, c - n // 2), max(0, c - n // 2) + min(n, s))
        for c, n, s in zip(centre, gt.shape, up.shape)
    ]
    block = up[tuple(src)]
    dst = tuple(slice((n - b) // 2, (n - b) // 2 + b) for n, b in zip(gt.shape, block.shape))
    gt[dst] = block
    return gt, perturb(gt, 1, 8.0, 1.0)


def deepmind_module():
    if not hasattr(np, "Inf"):
        np.Inf = np.inf  # surface-distance 0.1 still uses the NumPy 1 aliases
    if not hasattr(np, "NaN"):
        np.NaN = np.nan
    try:
        import warnings

        warnings.filterwarnings("ignore", category=DeprecationWarning)
        import surface_distance

        return surface_distance
    except ImportError:
        return None


def monai_fn():
    try:
        import torch
        from monai.metrics import compute_surface_dice
    except ImportError:
        return None

    def run(gt, pred, spacing, tolerance, subvoxels):
        y = torch.from_numpy(gt[None, None].astype(np.float32))
        y_pred = torch.from_numpy(pred[None, None].astype(np.float32))
        value = compute_surface_dice(
            y_pred, y, [tolerance], include_background=True, spacing=list(spacing), use_subvoxels=subvoxels
        )
        return float(value.reshape(-1)[0])

    return run


def bench_case(name, gt, pred, spacing, tolerance, args, sd, monai_run, rows):
    def ours(threads):
        return lambda: metrics.surface_dice(
            gt, pred, spacing_mm=spacing, tolerance_mm=tolerance, num_threads=threads
        )

    results = []
    for threads in sorted({1, args.threads}):
        value, t, cpu = timed(ours(threads), args.repeats)
        results.append((f"fewshot_da surface_dice, {threads} thread(s)", value, t, cpu))
    t_ref = results[0][2]  # ours, 1 thread
    scores, t, cpu = timed(
        lambda: metrics.score_case(
            gt, pred, spacing_mm=spacing, tolerances_mm=(tolerance,), num_threads=args.threads
        ),
        max(1, args.repeats // 4),
    )
    results.append(
        (
            f"fewshot_da score_case (exact distances; + Dice, HD95, ASSD), {args.threads} thread(s)",
            scores[metrics.surface_dice_key(tolerance)],
            t,
            cpu,
        )
    )
    if sd is not None:
        value, t, cpu = timed(
            lambda: sd.compute_surface_dice_at_tolerance(
                sd.compute_surface_distances(gt, pred, spacing), tolerance
            ),
            args.peer_repeats,
        )
        results.append(("DeepMind surface-distance 0.1", float(value), t, cpu))
    if monai_run is not None:
        for subvoxels in (False, True):
            value, t, cpu = timed(
                lambda sub=subvoxels: monai_run(gt, pred, spacing, tolerance, sub), args.peer_repeats
            )
            results.append((f"MONAI compute_surface_dice(use_subvoxels={subvoxels})", value, t, cpu))
    if not args.skip_oracle:
        value, t, cpu = timed(
            lambda: reference.surface_dice(gt, pred, spacing_mm=spacing, tolerance_mm=tolerance),
            args.peer_repeats,
        )
        results.append(("NumPy/SciPy oracle (metrics.reference)", value, t, cpu))
    print(f"\n{name}: shape {gt.shape}, spacing {spacing} mm, tolerance {tolerance} mm")
    print(f"  {'method':<70} {'value':>8} {'wall ms':>10} {'cpu ms':>10} {'x ours(1 thr)':>14}")
    for method, value, t, cpu in results:
        print(f"  {method:<70} {value:8.6f} {t * 1e3:10.2f} {cpu * 1e3:10.2f} {t / t_ref:14.1f}")
        rows.append((name, spacing, tolerance, method, value, t, cpu, t / t_ref))


def markdown(rows):
    """The rows as a markdown table for benchmarks/README.md."""
    lines = [
        "| input | spacing (mm) | tol (mm) | method | surface Dice | wall ms | CPU ms | time / ours (1 thread) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, spacing, tolerance, method, value, t, cpu, ratio in rows:
        spacing_text = "x".join(f"{s:g}" for s in spacing)
        lines.append(
            f"| {name} | {spacing_text} | {tolerance:g} | {method} | {value:.6f} | {t * 1e3:.1f} | "
            f"{cpu * 1e3:.1f} | {ratio:.1f} |"
        )
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=21, help="repeats for our implementation")
    parser.add_argument("--peer-repeats", type=int, default=3, help="repeats for the (slow) peers")
    parser.add_argument("--ixi-cases", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="one spacing/tolerance, one repeat of the peers")
    parser.add_argument("--skip-oracle", action="store_true")
    parser.add_argument("--markdown", action="store_true", help="also print the results as a markdown table")
    args = parser.parse_args()
    if args.quick:
        args.peer_repeats, args.ixi_cases = 1, 1

    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs, "
        f"Python {platform.python_version()}, NumPy {np.__version__}"
    )
    sd, monai_run = deepmind_module(), monai_fn()
    print(
        f"peers: DeepMind surface-distance {'yes' if sd else 'NOT INSTALLED'}, "
        f"MONAI {'yes' if monai_run else 'NOT INSTALLED'}"
    )
    rows = []
    gt, pred = brain_pair()
    print(f"brain-like pair: {int(gt.sum())} / {int(pred.sum())} foreground voxels")
    configs = (
        [((1.0, 1.0, 1.0), 1.0)]
        if args.quick
        else [
            ((1.0, 1.0, 1.0), 1.0),
            ((1.0, 1.0, 1.0), 2.0),
            ((0.9375, 0.9375, 1.2), 1.0),
            ((0.9375, 0.9375, 1.2), 2.0),
        ]
    )
    for spacing, tolerance in configs:
        bench_case("brain-like 256x256x170", gt, pred, spacing, tolerance, args, sd, monai_run, rows)
    import nibabel as nib

    for path in sorted(IXI_MASKS.glob("*_brain.nii.gz"))[: args.ixi_cases]:
        image = nib.load(str(path))
        mask = np.asanyarray(image.dataobj) > 0
        spacing = tuple(float(z) for z in image.header.get_zooms()[:3])
        bench_case(
            f"IXI {path.name}", mask, perturb(mask, 2, 4.0, 0.7), spacing, 2.0, args, sd, monai_run, rows
        )
    if args.markdown:
        print()
        print(markdown(rows))


if __name__ == "__main__":
    main()
