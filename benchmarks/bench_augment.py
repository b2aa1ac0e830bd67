"""Augmenting slice loader vs memcpy, vs MONAI doing the same work, vs the dart20 training step it feeds.

One process, same volumes, same output: a (B, 1, 256, 256) float32 image batch and a float32 mask batch,
one random slice per item, with a random affine (rotation, zoom) and intensity augmentation (gamma,
Gaussian noise) drawn per item. Contenders run one after the other, interleaved over rounds; the table
gives the median rate.

    python benchmarks/bench_augment.py            # ~3 min on 2 busy cores
    python benchmarks/bench_augment.py --quick    # smoke run, ~2 min (the dart20 step dominates)
    python benchmarks/bench_augment.py --breakdown  # CPU ms per batch of each transform alone, 1 thread
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from fewshot_da.cpu_memory import keep_freed_memory
from fewshot_da.data.augment import AugmentOptions, augment_options
from fewshot_da.data.loader import SliceLoader
from fewshot_da.data.phantoms import phantom_volume

CEILING = "memcpy of the output bytes (np.copyto, 2 x float32 batch)"
STREAMING = "memcpy of the output bytes, buffers cycled through 201 MB (not cache-resident)"
# The work MONAI does below: rotation +-15 deg and zoom 0.9-1.1 (bilinear image, nearest mask),
# Gaussian noise sd 0.1 and gamma 0.7-1.5, each on every item.
SAME_WORK = AugmentOptions(rotation_deg=15.0, rotation_p=1.0, zoom_range=(0.9, 1.1), zoom_p=1.0,
                           gamma_range=(0.7, 1.5), gamma_p=1.0, noise_sd_range=(0.1, 0.1), noise_p=1.0)


def make_volumes(n, shape):
    """Brain phantoms (fewshot_da.data.phantoms), z-scored per volume, slice-major (S, H, W)."""
    images, masks = [], []
    for k in range(n):
        image, mask = phantom_volume(shape, seed=k)
        images.append(((image - image.mean()) / image.std()).astype(np.float32))
        masks.append(mask)
    return images, masks


def rate(fn, seconds, min_batches=2):
    """(batches per wall second, process CPU ms per batch) of fn() over about `seconds` (after one warm-up
    call). CPU time counts every thread of the process (loader threads, prefetch thread, torch)."""
    fn()
    n, t0, c0 = 0, time.perf_counter(), time.process_time()
    while True:
        fn()
        n += 1
        dt = time.perf_counter() - t0
        if dt >= seconds and n >= min_batches:
            return n / dt, (time.process_time() - c0) / n * 1e3


def monai_factory(images, masks, batch, crop):
    from monai.transforms import Compose, RandAdjustContrastd, RandAffined, RandGaussianNoised

    pipeline = Compose([
        RandAffined(keys=["image", "label"], prob=1.0, rotate_range=np.deg2rad(15.0), scale_range=0.1,
                    spatial_size=crop, mode=("bilinear", "nearest"), padding_mode="zeros"),
        RandGaussianNoised(keys=["image"], prob=1.0, std=0.1),
        RandAdjustContrastd(keys=["image"], prob=1.0, gamma=(0.7, 1.5)),
    ])
    pipeline.set_random_state(0)
    rng = np.random.default_rng(0)
    x = np.empty((batch, 1) + crop, np.float32)
    y = np.empty((batch, 1) + crop, np.float32)

    def next_batch():
        for i in range(batch):
            k = rng.integers(len(images))
            s = rng.integers(images[k].shape[0])
            d = pipeline({"image": images[k][s][None], "label": masks[k][s][None].astype(np.float32)})
            x[i] = np.asarray(d["image"])
            y[i] = np.asarray(d["label"])
    return next_batch


def train_step_seconds(batch, crop, steps, threads):
    """(wall s, process CPU s) median of forward + backward + SGD step of dart20 on (batch, 1, *crop), CPU, in the
    training loop's layout;
    (nan, nan) with steps = 0 (the step is not timed)."""
    from fewshot_da.models import build_model
    from fewshot_da.training.fit import training_layout

    if steps < 1:
        return float("nan"), float("nan")

    torch.set_num_threads(threads)
    layout = training_layout(torch.device("cpu"))  # as the training loop
    model = build_model("dart20").to(memory_format=layout)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, nesterov=True)
    x = torch.randn(batch, 1, *crop).contiguous(memory_format=layout)
    y = (torch.rand(batch, 1, *crop) > 0.5).float()
    walls, cpus = [], []
    for i in range(steps + 1):
        t0, c0 = time.perf_counter(), time.process_time()
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x), y)
        loss.backward()
        opt.step()
        if i:  # the first step warms up the allocator
            walls.append(time.perf_counter() - t0)
            cpus.append(time.process_time() - c0)
    torch.set_num_threads(1)
    return statistics.median(walls), statistics.median(cpus)


def breakdown(images, masks, batch, crop, batches=48):
    """Process CPU ms per batch, 1 loader thread, no prefetch, one transform group at a time."""
    cases = {
        "none": None,
        "flips (y and x, p = 1)": AugmentOptions(flip_p=(1.0, 1.0)),
        "rotation + zoom (p = 1)": SAME_WORK.replace(mode="spatial"),
        "gamma (p = 1)": AugmentOptions(gamma_range=(0.7, 1.5), gamma_p=1.0),
        "noise (p = 1)": AugmentOptions(noise_sd_range=(0.1, 0.1), noise_p=1.0),
        "rotation + zoom + gamma + noise (same work as MONAI)": SAME_WORK,
    }
    print("| transforms (1 thread) | CPU ms/batch | CPU ns/output pixel |")
    print("|---|---:|---:|")
    for name, options in cases.items():
        loader = SliceLoader(images, masks, batch_size=batch, crop=crop, seed=1, num_threads=1, prefetch=False,
                             augment=options)
        loader.batch(0)
        c0 = time.process_time()
        for step in range(1, batches + 1):
            loader.batch(step)
        ms = (time.process_time() - c0) / batches * 1e3
        print(f"| {name} | {ms:.1f} | {ms * 1e6 / (batch * crop[0] * crop[1]):.1f} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--volumes", type=int, default=6)
    parser.add_argument("--shape", type=int, nargs=3, default=(60, 256, 256), help="(S, H, W) per volume")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--crop", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=2.0, help="per contender and round")
    parser.add_argument("--train-steps", type=int, default=2)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--breakdown", action="store_true", help="only the per-transform CPU cost table")
    parser.add_argument("--system-malloc", action="store_true",
                        help="keep glibc's default malloc (the training loop switches it: fewshot_da.cpu_memory)")
    args = parser.parse_args()
    heap = "glibc default" if args.system_malloc else \
        f"keep_freed_memory() {'on' if keep_freed_memory() else 'unavailable'}"
    if args.quick:
        args.volumes, args.shape, args.rounds, args.seconds, args.train_steps = 2, (24, 256, 256), 1, 1.0, 1
    load_before = os.getloadavg()[0]
    torch.set_num_threads(1)
    crop = (args.crop, args.crop)
    b, t = args.batch, args.threads
    images, masks = make_volumes(args.volumes, tuple(args.shape))
    if args.breakdown:
        print(f"# heap: {heap}")
        breakdown(images, masks, b, crop)
        return
    out_shape = (b, 1) + crop
    src, dst = np.ones(out_shape, np.float32), np.empty(out_shape, np.float32)

    def memcpy_out():
        np.copyto(dst, src)
        np.copyto(dst, src)

    # The same copies from and to buffers that are not in the cache: 16 source and 8 destination batches (201 MB,
    # 6x the L3), as the loader reads volumes far larger than the cache and fills a ring of batch buffers.
    pool_src = [np.ones(out_shape, np.float32) for _ in range(16)]
    pool_dst = [np.empty(out_shape, np.float32) for _ in range(8)]
    turn = iter(range(10**9))

    def memcpy_streaming():
        k = next(turn)
        np.copyto(pool_dst[2 * k % 8], pool_src[2 * k % 16])
        np.copyto(pool_dst[(2 * k + 1) % 8], pool_src[(2 * k + 1) % 16])

    def loader(augment, prefetch):
        def factory():
            it = SliceLoader(images, masks, batch_size=b, crop=crop, seed=1, num_threads=t, prefetch=prefetch,
                             augment=augment)
            return (lambda: it.batch(next(steps))), it.close
        return factory

    steps = iter(range(10**9))
    presets = augment_options("ultrasound-aug+intensity")
    presets_dart = augment_options("dart20-aug+intensity")
    contenders = {
        CEILING: lambda: (memcpy_out, None),
        STREAMING: lambda: (memcpy_streaming, None),
        f"SliceLoader no augmentation, threads={t}, prefetch": loader(None, True),
        f"SliceLoader spatial+intensity (same work as MONAI), threads={t}, no prefetch": loader(SAME_WORK, False),
        f"SliceLoader spatial+intensity (same work as MONAI), threads={t}, prefetch": loader(SAME_WORK, True),
        f"SliceLoader presets ultrasound-aug+intensity, threads={t}, prefetch": loader(presets, True),
        f"SliceLoader presets dart20-aug+intensity, threads={t}, prefetch": loader(presets_dart, True),
    }
    try:
        contenders["MONAI RandAffined + RandGaussianNoised + RandAdjustContrastd in-process"] = \
            lambda: (monai_factory(images, masks, b, crop), None)
        monai_note = f"monai {__import__('monai').__version__}"
    except ImportError:
        monai_note = "monai not installed: MONAI row skipped (pip install monai)"

    results = {name: [] for name in contenders}
    for _ in range(args.rounds):
        for name, factory in contenders.items():
            fn, teardown = factory()
            # MONAI is ~100x slower: one batch per round is enough
            seconds = args.seconds if "MONAI" not in name else 0.0
            results[name].append(rate(fn, seconds, min_batches=2 if "MONAI" not in name else 1))
            if teardown is not None:
                teardown()
    step_s, step_cpu_s = train_step_seconds(b, crop, args.train_steps, threads=t)

    med = {name: statistics.median(r[0] for r in rs) for name, rs in results.items()}
    cpu = {name: statistics.median(r[1] for r in rs) for name, rs in results.items()}
    ceiling, ceiling_cpu = med[CEILING], cpu[CEILING]
    streaming, streaming_cpu = med[STREAMING], cpu[STREAMING]
    monai = next((n for n in med if n.startswith("MONAI")), None)
    mb = 2 * np.prod(out_shape) * 4 / 1e6
    print(f"# {args.volumes} phantom volumes {tuple(args.shape)} float32 + uint8 masks, batch {b}, crop {crop}, "
          f"{mb:.1f} MB written per batch")
    print(f"# {platform.processor() or platform.machine()}, {len(os.sched_getaffinity(0))} usable cores, "
          f"torch {torch.__version__}, numpy {np.__version__}, {monai_note}; heap: {heap}")
    print(f"# median of {args.rounds} interleaved rounds x {args.seconds:g} s; 1-min load average "
          f"{load_before:.1f} before, {os.getloadavg()[0]:.1f} after")
    print("# wall: batches/s as measured; CPU: process CPU ms per batch (all threads). 'x memcpy (CPU)' = memcpy "
          f"CPU ms / (CPU ms / {t} threads), i.e. the rate on {t} idle cores if the threads scale perfectly")
    print("# 'x memcpy': against the cache-resident copy (same two buffers every time); 'x streaming': against the "
          "copy through buffers that are not in the cache")
    print("| contender | batches/s (wall) | x memcpy (wall) | x streaming (wall) | x MONAI (wall) | CPU ms/batch "
          "| x memcpy (CPU) | x streaming (CPU) | x MONAI (CPU) | batch / dart20 step (wall) | "
          "batch / dart20 step (CPU) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, r in med.items():
        threads = t if name.startswith("SliceLoader") else 1
        vs_monai = f"{r / med[monai]:.1f}" if monai else "-"
        vs_monai_cpu = f"{cpu[monai] / cpu[name]:.1f}" if monai else "-"
        print(f"| {name} | {r:,.1f} | {r / ceiling:.3f} | {r / streaming:.3f} | {vs_monai} | {cpu[name]:,.1f} | "
              f"{ceiling_cpu / (cpu[name] / threads):.3f} | {streaming_cpu / (cpu[name] / threads):.3f} | "
              f"{vs_monai_cpu} | {1 / r / step_s:.4f} | {cpu[name] / 1e3 / step_cpu_s:.4f} |")
    print(f"| dart20 forward + backward + SGD step, batch {b}, {t} torch threads | {1 / step_s:.3f} | "
          f"{1 / step_s / ceiling:.5f} | {1 / step_s / streaming:.5f} | - | {step_cpu_s * 1e3:,.0f} | - | - | - "
          "| 1 | 1 |")


if __name__ == "__main__":
    main()
