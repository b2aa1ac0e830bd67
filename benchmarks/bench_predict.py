"""Batched volume prediction (`predict_volume`) vs the reference's one-slice-at-a-time loop, on CPU.

Run from the repository root: python benchmarks/bench_predict.py [--slices 64] [--height 256] [--width 272]
Both methods run in the same process, alternating chunk by chunk, `--repeats` times; per chunk the best time of
each is kept, so the ratio stays meaningful on a machine shared with other jobs. Wall and CPU (process) time are
both reported. Masks must be identical.
"""
import argparse
import os
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
    parser.add_argument("--batch-size", type=int, default=None, help="default: predict_volume's (2 on CPU)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--chunk", type=int, default=16, help="slices per timed chunk")
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
    methods = {
        "reference loop": lambda v: predict_volume_reference(model, v, pad_multiple=pad),
        "batched": lambda v: predict_volume(model, v, pad_multiple=pad, batch_size=args.batch_size),
    }
    # the volume is timed in chunks, the two methods alternating chunk by chunk, and each chunk's best time over
    # the repeats is kept: both methods get the same chances at the quiet moments of a shared machine
    chunks = [slice(i, i + args.chunk) for i in range(0, args.slices, args.chunk)]
    wall = {name: np.full((args.repeats, len(chunks)), np.inf) for name in methods}
    cpu = {name: np.full((args.repeats, len(chunks)), np.inf) for name in methods}
    masks = {name: [None] * len(chunks) for name in methods}
    for r in range(args.repeats):
        for c, chunk in enumerate(chunks):
            for name, run in methods.items():
                w0, c0 = time.perf_counter(), time.process_time()
                masks[name][c] = run(vol[chunk])
                wall[name][r, c], cpu[name][r, c] = time.perf_counter() - w0, time.process_time() - c0
    identical = all(np.array_equal(a, b) for a, b in zip(masks["batched"], masks["reference loop"]))
    best_wall = {k: v.min(axis=0).sum() for k, v in wall.items()}
    best_cpu = {k: v.min(axis=0).sum() for k, v in cpu.items()}
    foreground = np.concatenate(masks["batched"]).mean()
    print(f"machine: {platform.processor() or platform.machine()} ({os.cpu_count()} cores), torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    print(f"volume {vol.shape} float32, {args.arch}, batch {args.batch_size or 'default (2 on CPU)'}, foreground {foreground:.3f}, "
          f"{args.repeats} repeats of {len(chunks)} alternating chunks")
    for name in methods:
        print(f"{name:>15}: wall {best_wall[name]:7.2f} s ({1000 * best_wall[name] / args.slices:6.1f} ms/slice), "
              f"cpu {best_cpu[name]:7.2f} s")
    print(f"speed-up: wall {best_wall['reference loop'] / best_wall['batched']:.2f}x, "
          f"cpu time {best_cpu['reference loop'] / best_cpu['batched']:.2f}x, identical masks: {identical}")

if __name__ == "__main__":
    main()
