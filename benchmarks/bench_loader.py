"""Slice-loader throughput vs memcpy, in-process NumPy, MONAI RandSpatialCropd and torch DataLoader.

All contenders run in one process on the same volumes (default 20 x (170, 256, 256) float32 images +
uint8 masks, slice-major, so each slice is 256 x 256) and produce the same output: a (B, 1, 256, 256)
float32 image batch and a float32 mask batch, one random slice per item. Rounds are interleaved (each
contender once per round) and the median rate is reported, which evens out load from other jobs.

    python benchmarks/bench_loader.py                 # full run (~2 min on 2 cores)
    python benchmarks/bench_loader.py --quick         # smaller volumes, shorter rounds
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
from fewshot_da.data.loader import SliceLoader  # noqa: E402


CEILING = "memcpy of the output bytes (np.copyto, 2 x float32 batch)"


def make_volumes(n, shape, dtype):
    rng = np.random.default_rng(0)
    images, masks = [], []
    for k in range(n):
        image = np.empty(shape, dtype)
        # cheap, touched-in-memory content: per-slice ramps plus a little noise
        image[...] = (np.linspace(0, 1, shape[2], dtype=np.float32)[None, None, :]
                      + rng.random((shape[0], 1, 1), dtype=np.float32) + k)
        mask = np.zeros(shape, np.uint8)
        mask[:, shape[1] // 4: 3 * shape[1] // 4, shape[2] // 4: 3 * shape[2] // 4] = 1
        images.append(image)
        masks.append(mask)
    return images, masks


def crop_into(x, y, image2d, mask2d, rng, crop):
    """The loader's crop rule in NumPy: random fitting window, else centred window padded with min / 0."""
    ch, cw = crop
    h, w = image2d.shape
    if h >= ch and w >= cw:
        y0, x0 = rng.integers(h - ch + 1), rng.integers(w - cw + 1)
        x[...] = image2d[y0:y0 + ch, x0:x0 + cw]
        y[...] = mask2d[y0:y0 + ch, x0:x0 + cw]
        return
    y0, x0 = h // 2 - ch // 2, w // 2 - cw // 2
    ys, ye, xs, xe = max(0, y0), min(h, y0 + ch), max(0, x0), min(w, x0 + cw)
    x.fill(image2d.min())
    y.fill(0)
    x[ys - y0:ye - y0, xs - x0:xe - x0] = image2d[ys:ye, xs:xe]
    y[ys - y0:ye - y0, xs - x0:xe - x0] = mask2d[ys:ye, xs:xe]


def sample_numpy(images, masks, rng, batch, crop, x, y):
    """The loader's rule (uniform scan, slice, crop) with NumPy slicing, into preallocated x, y."""
    for i in range(batch):
        k = rng.integers(len(images))
        s = rng.integers(images[k].shape[0])
        crop_into(x[i, 0], y[i, 0], images[k][s], masks[k][s], rng, crop)


class SliceDataset(torch.utils.data.Dataset):
    """One random slice per item, cropped in NumPy (what a DataLoader-based pipeline does)."""

    def __init__(self, images, masks, crop, length):
        self.images, self.masks, self.crop, self.length = images, masks, crop, length

    def __len__(self):
        return self.length

    def __getitem__(self, index):
        rng = np.random.default_rng(index)
        k = rng.integers(len(self.images))
        s = rng.integers(self.images[k].shape[0])
        x = np.empty((1,) + self.crop, np.float32)
        y = np.empty((1,) + self.crop, np.float32)
        crop_into(x[0], y[0], self.images[k][s], self.masks[k][s], rng, self.crop)
        return torch.from_numpy(x), torch.from_numpy(y)


def rate(fn, seconds, min_batches=3):
    """Batches per second of fn() over about `seconds` (after one warm-up call)."""
    fn()
    n, t0 = 0, time.perf_counter()
    while True:
        fn()
        n += 1
        dt = time.perf_counter() - t0
        if dt >= seconds and n >= min_batches:
            return n / dt


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--volumes", type=int, default=20)
    parser.add_argument("--shape", type=int, nargs=3, default=(170, 256, 256), help="(S, H, W) per volume")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16"])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--crop", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=1.0, help="per contender and round")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.volumes, args.shape, args.rounds, args.seconds = 4, (40, 256, 256), 1, 0.5
    load_before = os.getloadavg()[0]
    torch.set_num_threads(1)  # no intra-op threads competing with the loader threads / workers
    cores = len(os.sched_getaffinity(0))
    crop = (args.crop, args.crop)
    images, masks = make_volumes(args.volumes, tuple(args.shape), np.dtype(args.dtype))
    b = args.batch
    out_shape = (b, 1) + crop

    # Each contender is a factory: it sets up (workers, threads) and returns (next_batch, teardown), so
    # nothing of one contender (DataLoader workers refilling their queues, a prefetch in flight) runs
    # while another is timed.
    src_x, src_y = np.ones(out_shape, np.float32), np.ones(out_shape, np.float32)
    dst_x, dst_y = np.empty(out_shape, np.float32), np.empty(out_shape, np.float32)
    src_img = np.ones(out_shape, images[0].dtype)
    src_msk = np.ones(out_shape, np.uint8)
    dst_img, dst_msk = np.empty_like(src_img), np.empty_like(src_msk)

    def memcpy_out():
        np.copyto(dst_x, src_x)
        np.copyto(dst_y, src_y)

    def memcpy_in():
        np.copyto(dst_img, src_img)
        np.copyto(dst_msk, src_msk)

    np_rng = np.random.default_rng(0)
    np_x, np_y = np.empty(out_shape, np.float32), np.empty(out_shape, np.float32)

    contenders = {
        CEILING: lambda: (memcpy_out, None),
        "memcpy of the bytes read (image + uint8 mask)": lambda: (memcpy_in, None),
        "NumPy in-process": lambda: (lambda: sample_numpy(images, masks, np_rng, b, crop, np_x, np_y), None),
    }

    def slice_loader(threads, prefetch):
        def factory():
            loader = SliceLoader(images, masks, batch_size=b, crop=crop, seed=len(contenders),
                                 num_threads=threads, prefetch=prefetch)
            it = iter(loader)
            return (lambda: next(it)), loader.close
        return factory

    for threads in sorted({1, cores}):
        for prefetch in (False, True):
            contenders[f"SliceLoader threads={threads} prefetch={prefetch}"] = slice_loader(threads, prefetch)

    try:
        from monai.transforms import Compose, RandSpatialCropd, SpatialPadd
        # pad (symmetric, 0) where the slice is smaller, then a random window: MONAI's usual crop
        # sampler; same work as the rule, though its pad value and odd-size centring differ
        monai_crop = Compose([SpatialPadd(keys=["image", "label"], spatial_size=crop),
                              RandSpatialCropd(keys=["image", "label"], roi_size=crop, random_size=False)])
        monai_crop.set_random_state(0)
        mo_x, mo_y = np.empty(out_shape, np.float32), np.empty(out_shape, np.float32)

        def monai_batch():
            for i in range(b):
                k = np_rng.integers(len(images))
                s = np_rng.integers(images[k].shape[0])
                d = monai_crop({"image": images[k][s][None], "label": masks[k][s][None]})
                mo_x[i] = np.asarray(d["image"])
                mo_y[i] = np.asarray(d["label"])
        contenders["MONAI SpatialPadd + RandSpatialCropd in-process"] = lambda: (monai_batch, None)
        monai_note = f"monai {__import__('monai').__version__}"
    except ImportError:
        monai_note = "monai not installed: MONAI row skipped (pip install monai --no-deps)"

    def dataloader(workers):
        def factory():
            ds = SliceDataset(images, masks, crop, length=10**9)
            dl = torch.utils.data.DataLoader(ds, batch_size=b, shuffle=False, num_workers=workers,
                                             prefetch_factor=2 if workers else None)
            it = iter(dl)
            for _ in range(2 * workers + 1):  # workers started, queues primed
                next(it)
            return (lambda: next(it)), getattr(it, "_shutdown_workers", None)
        return factory

    for workers in (0, 2):
        contenders[f"torch DataLoader num_workers={workers}"] = dataloader(workers)

    results = {name: [] for name in contenders}
    for _ in range(args.rounds):
        for name, factory in contenders.items():
            fn, teardown = factory()
            results[name].append(rate(fn, args.seconds))
            if teardown is not None:
                teardown()

    med = {name: statistics.median(r) for name, r in results.items()}
    ceiling = med[CEILING]
    dl2 = med["torch DataLoader num_workers=2"]
    mb = 2 * np.prod(out_shape) * 4 / 1e6
    print(f"# {args.volumes} volumes {tuple(args.shape)} {args.dtype} + uint8 masks, batch {b}, crop {crop}, "
          f"{mb:.1f} MB written per batch")
    print(f"# {platform.processor() or platform.machine()}, {cores} usable cores, torch {torch.__version__} "
          f"(set_num_threads(1)), numpy {np.__version__}, {monai_note}")
    print(f"# median of {args.rounds} interleaved rounds x {args.seconds:g} s; 1-min load average "
          f"{load_before:.1f} before, {os.getloadavg()[0]:.1f} after")
    print("| contender | batches/s | x memcpy | x DataLoader(w=2) |")
    print("|---|---:|---:|---:|")
    for name, r in med.items():
        print(f"| {name} | {r:,.0f} | {r / ceiling:.2f} | {r / dl2:.1f} |")


if __name__ == "__main__":
    main()
