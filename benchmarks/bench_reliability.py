"""Cost of the reliability checks on real IXI files (ratios against peers in one process; 1 thread).

1. NIfTI read: nibabel's lazy gzip read (`nib.load(...).get_fdata()`) vs `load_volume` (whole-stream
   decompression with CRC/length check, then nibabel from bytes, plus the NaN check) per file.
2. Cache checksum: zlib.crc32 / zlib.adler32 / blake2b over a memory-mapped cached volume (image + mask),
   in ms per volume and as a share of opening the entry.
Run: PYTHONPATH=. python benchmarks/bench_reliability.py [n_files]
"""
import glob
import hashlib
import sys
import tempfile
import time
import zlib

import numpy as np


def _best(func, reps=3):
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        func()
        times.append(time.perf_counter() - t)
    return min(times)


def main(n_files=20):
    import nibabel as nib

    from fewshot_da.data.io import load_volume

    files = sorted(glob.glob("/work/shared/data/ixi-hh/images/*.nii.gz"))[:n_files]
    old = _best(lambda: [nib.load(f).get_fdata(dtype=np.float64) for f in files]) / len(files)
    new = _best(lambda: [load_volume(f) for f in files]) / len(files)
    shape = nib.load(files[0]).shape
    print(f"NIfTI read, {len(files)} IXI files {shape}: nibabel {old * 1e3:.1f} ms/file, "
          f"load_volume (verified gzip) {new * 1e3:.1f} ms/file, ratio {new / old:.2f}")

    # a cached volume the size of an IXI scan at 1 mm (the paper preset): float32 image + uint8 mask
    from fewshot_da.data.resample import resample

    volume = load_volume(files[0])
    image, _ = resample(volume.data, volume.spacing_mm, (1.0, 1.0, 1.0), 1)
    with tempfile.TemporaryDirectory() as tmp:
        np.save(f"{tmp}/image.npy", image.astype(np.float32))
        np.save(f"{tmp}/mask.npy", (image > image.mean()).astype(np.uint8))
        arrays = [np.load(f"{tmp}/{n}.npy", mmap_mode="r") for n in ("image", "mask")]
        n_bytes = sum(a.nbytes for a in arrays)
        hashes = {
            "crc32": lambda b: zlib.crc32(b),
            "adler32": lambda b: zlib.adler32(b),
            "blake2b": lambda b: hashlib.blake2b(b, digest_size=16).digest(),
        }
        open_time = _best(lambda: [np.load(f"{tmp}/{n}.npy", mmap_mode="r") for n in ("image", "mask")], 5)
        print(f"cached volume {image.shape} float32 + uint8 mask = {n_bytes / 2**20:.1f} MiB; "
              f"np.load(mmap) of both {open_time * 1e3:.2f} ms")
        for name, func in hashes.items():
            t = _best(lambda func=func: [func(memoryview(a).cast("B")) for a in arrays], 5)
            print(f"  {name:8s} {t * 1e3:6.1f} ms/volume ({n_bytes / t / 2**30:.2f} GiB/s)")
    # open_cached with and without the check, on real entries (IXI scans, paper preset: 1 mm, float32)
    from fewshot_da.data.manifest import Record
    from fewshot_da.data.cache import open_cached, preprocess_manifest

    records = [Record(f"s{i}", f, f.replace("/images/", "/masks/").replace(".nii.gz", "_brain.nii.gz"), "hh")
               for i, f in enumerate(files[:4])]
    with tempfile.TemporaryDirectory() as cache:
        entries = preprocess_manifest(records, cache, num_workers=1, progress=False)
        paths = [e.path for e in entries]
        plain = _best(lambda: [open_cached(p, verify=False) for p in paths], 5) / len(paths)
        checked = _best(lambda: [open_cached(p, verify=True) for p in paths], 5) / len(paths)
        cpu = time.process_time()
        for _ in range(5):
            [open_cached(p, verify=True) for p in paths]
        cpu = (time.process_time() - cpu) / 5 / len(paths)
        # what a run does: preprocess_manifest finds every entry cached and verifies them in threads
        threaded = _best(lambda: preprocess_manifest(records, cache, num_workers=1, progress=False), 5) / len(paths)
    print(f"open_cached {entries[0].image.shape} ({len(paths)} entries, page cache warm): unverified "
          f"{plain * 1e3:.2f} ms, verified {checked * 1e3:.1f} ms (+{(checked - plain) * 1e3:.1f} ms per volume); "
          f"preprocess_manifest of cached entries (threads) {threaded * 1e3:.1f} ms per volume; CPU time of a "
          f"verified open {cpu * 1e3:.1f} ms")

    # a training run's start-up on the CPU: a fresh process importing torch, building dart20 and its optimizer
    import subprocess

    code = ("import time; t = time.perf_counter(); import torch; from fewshot_da.models import build_model; "
            "m = build_model('dart20'); torch.optim.SGD(m.parameters(), lr=0.1); print(time.perf_counter() - t)")
    startup = min(float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
                        .stdout) for _ in range(2))
    n_ixi = 185
    extra = n_ixi * (threaded - plain)
    print(f"train start-up (import torch, build dart20 + SGD) {startup:.1f} s; verifying all {n_ixi} IXI-HH "
          f"entries adds {extra:.2f} s = {100 * extra / startup:.0f}% of it")

if __name__ == "__main__":
    import torch

    torch.set_num_threads(1)
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 20)
