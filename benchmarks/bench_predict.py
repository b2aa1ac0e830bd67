"""Batched volume prediction (`predict_volume`) vs the reference's one-slice-at-a-time loop, on CPU.

Run from the repository root: python benchmarks/bench_predict.py [--slices 64] [--height 256] [--width 272]
Both methods run in the same process, interleaved, `--repeats` times; the best time of each is compared, so the
ratio stays meaningful on a machine shared with other jobs. Masks must be identical.
"""
import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from fewshot_da.models import build_model, pad_multiple
from fewshot_da.predict import predict_volume, predict_volume_reference


def head_volume(n_slices, height, width, seed=0):
    """A bright ellipsoid in noise, scaled to [0, 1] like the preprocessed scans."""
    rng = np.random.default_rng(seed)
    s, h, w = np.meshgrid(np.linspace(-1, 1, n_slices), np.linspace(-1, 1, height), np.linspace(-1, 1, width),
                          indexing="ij")
    vol = (s**2 / 0.8 + h**2 / 0.6 + w**2 / 0.7 < 1).astype(np.float32) * 0.6
    vol += rng.normal(scale=0.1, size=vol.shape).astype(np.float32)
    return np.clip(vol, 0, 1)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="dart20")
    parser.add_argument("--slices", type=int, default=64)
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=272)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    model = build_model(args.arch)
    vol = head_volume(args.slices, args.height, args.width)
    model.train()
    with torch.no_grad():  # give the BatchNorms data statistics so the mask is neither empty nor full
        for i in range(0, args.slices, 16):
            model(torch.from_numpy(vol[i:i + 4, :256, :256].copy())[:, None])
    model.eval()
    with torch.no_grad():  # centre the final BatchNorm so about half the pixels are foreground
        logits = model(torch.from_numpy(vol[::8, :256, :256].copy())[:, None])
        model.out_path[-1].bias -= logits.median()

    pad = pad_multiple(args.arch)
    times = {"reference loop": [], "batched": []}
    masks = {}
    for _ in range(args.repeats):
        for name in times:
            t0 = time.perf_counter()
            if name == "batched":
                masks[name] = predict_volume(model, vol, pad_multiple=pad, batch_size=args.batch_size)
            else:
                masks[name] = predict_volume_reference(model, vol, pad_multiple=pad)
            times[name].append(time.perf_counter() - t0)
    identical = np.array_equal(masks["batched"], masks["reference loop"])
    best = {k: min(v) for k, v in times.items()}
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    print(f"volume {vol.shape} float32, {args.arch}, batch {args.batch_size}, foreground {masks['batched'].mean():.3f}")
    for name, value in best.items():
        print(f"{name:>15}: {value:7.2f} s  ({1000 * value / args.slices:6.1f} ms/slice; all: "
              f"{', '.join(f'{t:.2f}' for t in times[name])})")
    print(f"speed-up: {best['reference loop'] / best['batched']:.2f}x, identical masks: {identical}")


if __name__ == "__main__":
    main()
