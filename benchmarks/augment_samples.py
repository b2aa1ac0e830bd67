"""Picture of augmented loader batches: real IXI slices (or phantoms) with their mask outlines.

    python benchmarks/augment_samples.py                      # -> benchmarks/augment_samples.png
    python benchmarks/augment_samples.py --phantoms           # no IXI data needed

Row 1: no augmentation; then one row per preset (dart20-aug, ultrasound-aug, intensity,
ultrasound-aug+intensity), same seed and step, so each column starts from the same slice and crop.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from fewshot_da.data.augment import augment_options
from fewshot_da.data.loader import SliceLoader

IXI = Path("/work/shared/data/ixi-hh")
ROWS = [None, "dart20-aug", "ultrasound-aug", "intensity", "ultrasound-aug+intensity"]


def ixi_volumes(n):
    """First n IXI-HH scans and brain masks (2 mm), z-scored, slice-major along the file's last axis."""
    import nibabel as nib

    images, masks = [], []
    for path in sorted((IXI / "images").glob("*.nii.gz"))[:n]:
        image = np.asarray(nib.load(path).dataobj, dtype=np.float32)
        mask = np.asarray(nib.load(IXI / "masks" / path.name.replace(".nii.gz", "_brain.nii.gz")).dataobj)
        image = (image - image.mean()) / image.std()
        images.append(np.ascontiguousarray(np.moveaxis(image, -1, 0)))
        masks.append(np.ascontiguousarray(np.moveaxis(mask > 0, -1, 0)).astype(np.uint8))
    return images, masks


def phantom_volumes(n):
    from fewshot_da.data.phantoms import phantom_volume

    out = [phantom_volume((48, 112, 112), seed=k) for k in range(n)]
    return [((im - im.mean()) / im.std()).astype(np.float32) for im, _ in out], [m for _, m in out]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--phantoms", action="store_true")
    parser.add_argument("--columns", type=int, default=6)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                      "augment_samples.png"))
    args = parser.parse_args()
    images, masks = phantom_volumes(3) if args.phantoms or not IXI.exists() else ixi_volumes(3)
    # middle slices only, where the brain is large
    slices = [np.arange(im.shape[0] // 3, 2 * im.shape[0] // 3) for im in images]
    fig, axes = plt.subplots(len(ROWS), args.columns, figsize=(1.6 * args.columns, 1.7 * len(ROWS)))
    for r, preset in enumerate(ROWS):
        loader = SliceLoader(images, masks, slices, batch_size=args.columns, crop=(128, 128), seed=3,
                             prefetch=False, augment=augment_options(preset, mode=None) if preset else None)
        x, y = loader.batch(0)
        for c in range(args.columns):
            ax = axes[r, c]
            ax.imshow(x[c, 0].numpy(), cmap="gray", vmin=-1.0, vmax=3.0)
            ax.contour(y[c, 0].numpy(), levels=[0.5], colors="tab:orange", linewidths=0.7)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r, 0].set_ylabel(preset or "none", fontsize=8)
    fig.suptitle("SliceLoader batches (step 0, seed 3): image, mask outline", fontsize=9)
    fig.tight_layout()
    fig.savefig(args.out, dpi=72)
    from PIL import Image  # a 64-colour palette keeps the file small (< 300 kB)

    Image.open(args.out).convert("RGB").quantize(64).save(args.out, optimize=True)
    print(f"wrote {args.out} ({os.path.getsize(args.out) / 1e3:.0f} kB)")


if __name__ == "__main__":
    main()
