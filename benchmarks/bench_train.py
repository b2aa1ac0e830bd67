"""Time per training step of `fit`, split into data, forward/backward/update, and bookkeeping.

Run from the repository root: python benchmarks/bench_train.py [--batch-size 8] [--iters 4]
Data come from a simple in-memory NumPy slice sampler (random scan, slice and 256x256 crop per item, seeded by
the step), the stand-in for the C++ SliceLoader. Bookkeeping (checkpoint, metrics.csv, progress.png, log) happens
once per epoch; its share per step is reported for the measured epochs and for the presets' 100 iterations per
epoch.
"""
import argparse
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from fewshot_da.models import build_model  # noqa: E402
from fewshot_da.training.config import preset_config  # noqa: E402
from fewshot_da.training.fit import fit  # noqa: E402


class NumpySliceSampler:
    """batch(step) -> (x, y) float32 tensors (B, 1, crop, crop) from in-memory (S, H, W) volumes."""

    def __init__(self, images, masks, *, batch_size, crop=256, seed=0):
        self.images, self.masks, self.batch_size, self.crop, self.seed = images, masks, batch_size, crop, seed

    def __call__(self, step):
        rng = np.random.default_rng((self.seed, step))
        x = np.empty((self.batch_size, 1, self.crop, self.crop), np.float32)
        y = np.empty_like(x)
        for i in range(self.batch_size):
            scan = rng.integers(len(self.images))
            image, mask = self.images[scan], self.masks[scan]
            s = rng.integers(image.shape[0])
            top = rng.integers(image.shape[1] - self.crop + 1)
            left = rng.integers(image.shape[2] - self.crop + 1)
            x[i, 0] = image[s, top:top + self.crop, left:left + self.crop]
            y[i, 0] = mask[s, top:top + self.crop, left:left + self.crop]
        return torch.from_numpy(x), torch.from_numpy(y)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="dart20")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--iters", type=int, default=4, help="iterations per epoch in this run")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    rng = np.random.default_rng(0)
    images = [rng.random((64, 260, 272), dtype=np.float32) for _ in range(4)]
    masks = [(im > 0.5).astype(np.float32) for im in images]
    sampler = NumpySliceSampler(images, masks, batch_size=args.batch_size)
    config = preset_config("paper", "source", args.arch, epochs=args.epochs, iters_per_epoch=args.iters,
                           batch_size=args.batch_size, lr_steps={})  # the schedule does not change step cost
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as run_dir:
        summary = fit(build_model(args.arch), sampler, config, run_dir, progress=False)
    t = summary["timings_s"]
    steps = args.epochs * args.iters
    data, compute, book = t["data_s"] / steps, t["compute_s"] / steps, t["bookkeeping_s"] / steps
    book_100 = t["bookkeeping_s"] / args.epochs / 100
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, device {summary['device']}")
    print(f"{args.arch}, batch {args.batch_size} x 256x256, {args.epochs} epochs x {args.iters} steps")
    print(f"per step: data {1000 * data:.1f} ms, forward/backward/update {1000 * compute:.1f} ms, "
          f"bookkeeping {1000 * book:.1f} ms (measured), {1000 * book_100:.1f} ms (at 100 steps/epoch)")
    total = data + compute + book
    total_100 = data + compute + book_100
    print(f"data + bookkeeping: {100 * (data + book) / total:.2f}% of the step (measured), "
          f"{100 * (data + book_100) / total_100:.2f}% at 100 steps/epoch")


if __name__ == "__main__":
    main()
