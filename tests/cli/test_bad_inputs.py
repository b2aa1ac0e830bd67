"""The catalogue of bad inputs: each case builds one in tmp_path, runs a CLI verb, and expects a clean refusal.

Every case asserts: a non-zero exit; exactly one `Error:` line, and it names the file or option (`expect`,
a regex); no traceback; every file that existed before is unchanged, new files appear only under `outputs`
(globs relative to the case folder; `*` crosses folders), and no temporary file is left behind.

Adding a case is a few lines: a builder `def _x(t: Tree) -> list` returning the CLI arguments (it writes its
files with t.nifti / t.pair / t.manifest; t.project is a shared phantom project with manifest, splits and a
trained tiny source run), and one `Case("x", _x, r"expected message")` line in CASES.
"""
from __future__ import annotations

import errno
import fnmatch
import gzip
import hashlib
import json
import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from fewshot_da.data.datasets import index_cc359
from fewshot_da.data.manifest import write_manifest
from fewshot_da.data.phantoms import write_phantom_dataset
from fewshot_da.data.cache import preprocess_manifest
from fewshot_da.data.splits import write_splits

TINY = ["--epochs", "1", "--lr-steps", "", "--iters-per-epoch", "1", "--batch-size", "2", "--crop", "16", "--quiet"]
NIFTI_PIXDIM_OFFSET = 76  # float32 pixdim[8] in the 348-byte NIfTI-1 header


# ----------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """Two phantom domains of 6 scans (16x16x8), manifest, splits and a trained one-step source run."""
    from click.testing import CliRunner
    from fewshot_da_cli.main import cli

    root = tmp_path_factory.mktemp("bad-inputs-project")
    write_phantom_dataset(root / "data", domains=("siemens15", "ge3"), scans_per_domain=6, shape=(16, 16, 8))
    records = index_cc359(root / "data")
    write_manifest(records, root / "manifest.csv")
    write_splits(records, root / "splits.json")
    preprocess_manifest(records, root / "cache", num_workers=1, progress=False)  # in-process: no worker spawn
    result = CliRunner().invoke(cli, ["train", "--data", str(root / "manifest.csv"), "--splits",
                                      str(root / "splits.json"), "--source", "siemens15", "--out",
                                      str(root / "source"), "--num-threads", "1", *TINY])
    assert result.exit_code == 0, result.output
    return root


class Tree:
    """The case folder (`root`) with small writers of NIfTI files and manifests."""

    def __init__(self, root: Path, project: Path, monkeypatch):
        self.root, self.project, self.monkeypatch = root, project, monkeypatch
        self.mounts: list[Path] = []  # tmpfs mounts, unmounted after the run

    def path(self, name) -> Path:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def nifti(self, name, data=None, *, spacing_mm=(1.0, 1.0, 1.0), pixdim=None) -> Path:
        """Write a NIfTI-1 (.nii or .nii.gz); `pixdim` overrides the stored spacing bytes (as a broken tool would)."""
        import nibabel as nib

        if data is None:
            data = np.random.default_rng(0).random((8, 8, 8)).astype(np.float32)
        raw = bytearray(nib.Nifti1Image(np.asarray(data), np.diag([*spacing_mm, 1.0])).to_bytes())
        if pixdim is not None:
            raw[NIFTI_PIXDIM_OFFSET + 4:NIFTI_PIXDIM_OFFSET + 16] = np.asarray(pixdim, "<f4").tobytes()
        path = self.path(name)
        path.write_bytes(gzip.compress(bytes(raw), mtime=0) if str(name).endswith(".gz") else bytes(raw))
        return path

    def mask_data(self, shape=(8, 8, 8)) -> np.ndarray:
        mask = np.zeros(shape, np.uint8)
        mask[2:6, 2:6, 2:6] = 1
        return mask

    def pair(self, case, *, image=None, mask=None, **header) -> tuple[Path, Path]:
        image_path = self.nifti(f"data/{case}.nii.gz", image, **header)
        mask_path = self.nifti(f"data/{case}_mask.nii.gz", self.mask_data() if mask is None else mask, **header)
        return image_path, mask_path

    def manifest(self, rows, name="manifest.csv", header="id,image,mask,domain") -> Path:
        lines = [header] + [",".join(str(v) for v in row) for row in rows]
        path = self.path(name)
        path.write_text("\n".join(lines) + "\n")
        return path

    def one_scan(self, **pair_options) -> Path:
        """A manifest of one scan (`a`, domain d) with the given pair options."""
        image, mask = self.pair("a", **pair_options)
        return self.manifest([("a", image, mask, "d")])

    def preprocess(self, manifest) -> list:
        return ["data", "preprocess", manifest, "--cache", self.root / "cache", "--workers", "1"]

    def train(self, manifest=None, splits=None, source="siemens15", out="out") -> list:
        return ["train", "--data", manifest or self.project / "manifest.csv", "--splits",
                splits or self.project / "splits.json", "--source", source, "--out", self.root / out,
                "--cache", self.project / "cache", "--num-threads", "1", *TINY]

    def project_copy(self, bad_id="siemens15") -> tuple[Path, str]:
        """The project's manifest copied into the case folder (paths absolute) and a training id of `bad_id`."""
        splits = json.loads((self.project / "splits.json").read_text())
        lines = (self.project / "manifest.csv").read_text().splitlines()
        rows = [line.split(",") for line in lines[1:]]
        base = self.project
        rows = [[r[0], str(base / r[1]), str(base / r[2]), r[3]] for r in rows]
        return rows, splits["one2all"][bad_id]["train"][0]

    def train_with(self, bad_id_change) -> list:
        """train on the project with one training scan's files replaced by bad_id_change(tree, id) -> (image, mask)."""
        rows, bad = self.project_copy()
        image, mask = bad_id_change(self, bad)
        rows = [[r[0], image, mask, r[3]] if r[0] == bad else r for r in rows]
        return self.train(self.manifest(rows))


@dataclass
class Case:
    id: str
    build: Callable[[Tree], list]
    expect: str  # regex searched in the one Error line
    outputs: tuple = ("out*", "cache*")


# ----------------------------------------------------------------------------------------------- builders
def _corrupt_gzip(t):
    manifest = t.one_scan()
    image = t.root / "data/a.nii.gz"
    raw = bytearray(image.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    image.write_bytes(bytes(raw))
    return t.preprocess(manifest)


def _gzip_bad_crc(t):
    """Deflate data intact, only the CRC-32 trailer wrong: nibabel alone reads this without complaint."""
    manifest = t.one_scan()
    image = t.root / "data/a.nii.gz"
    raw = bytearray(image.read_bytes())
    raw[-8] ^= 0x01
    image.write_bytes(bytes(raw))
    return t.preprocess(manifest)


def _truncated_gzip(t):
    manifest = t.one_scan()
    image = t.root / "data/a.nii.gz"
    image.write_bytes(image.read_bytes()[:-40])
    return t.preprocess(manifest)


def _not_gzip(t):
    manifest = t.one_scan()
    (t.root / "data/a.nii.gz").write_bytes(b"plain text, not gzip\n" * 30)
    return t.preprocess(manifest)


def _uncompressed_truncated(t):
    image = t.nifti("data/a.nii")
    image.write_bytes(image.read_bytes()[:600])
    mask = t.nifti("data/a_mask.nii", t.mask_data())
    return t.preprocess(t.manifest([("a", image, mask, "d")]))


def _pixdim(values):
    return lambda t: t.preprocess(t.one_scan(pixdim=values))


def _geometry(spacing):
    return lambda t: t.preprocess(t.one_scan(spacing_mm=spacing))


def _singular_affine(t):
    import nibabel as nib

    manifest = t.one_scan()
    for name in ("a", "a_mask"):
        path = t.root / f"data/{name}.nii.gz"
        img = nib.load(path)
        affine = np.eye(4)
        affine[2, 2] = 0.0
        img.set_sform(affine, 2)
        img.set_qform(None, 0)
        nib.save(nib.Nifti1Image(np.asarray(img.dataobj), None, img.header), path)
    return t.preprocess(manifest)


def _non_utf8_manifest(verb):
    def build(t):
        image, mask = t.pair("a")
        path = t.path("manifest.csv")
        path.write_bytes(f"id,image,mask,domain\nb\xe9,{image},{mask},d\n".encode("latin-1"))
        return {"preprocess": t.preprocess(path), "split": ["data", "split", path, "--out", t.root / "out.json"],
                "merge": ["data", "merge", path, "--out", t.root / "out.csv"]}[verb]
    return build


def _nul_manifest(t):
    path = t.path("manifest.csv")
    path.write_bytes(b"id,image,mask,domain\n\0\0\0\n")
    return t.preprocess(path)


def _missing_column(verb):
    def build(t):
        image, _ = t.pair("a")
        manifest = t.manifest([("a", image, "d")], header="id,image,domain")
        return t.preprocess(manifest) if verb == "preprocess" else t.train(manifest)
    return build


def _missing_file(t):
    image, _ = t.pair("a")
    return t.preprocess(t.manifest([("a", image, t.root / "data/gone_mask.nii.gz", "d")]))


def _duplicate_id(t):
    image, mask = t.pair("a")
    return t.preprocess(t.manifest([("a", image, mask, "d"), ("a", image, mask, "d")]))


def _mask_shape(t):
    return t.preprocess(t.one_scan(mask=np.zeros((8, 8, 7), np.uint8)))


def _non_binary_mask(t):
    mask = t.mask_data()
    mask[0, 0, 0] = 3
    return t.preprocess(t.one_scan(mask=mask))


def _nan_image(t):
    image = np.ones((8, 8, 8), np.float32)
    image[1, 1, 1] = np.nan
    return t.preprocess(t.one_scan(image=image))


def _four_d(t):
    image = np.ones((8, 8, 8, 2), np.float32)
    return t.preprocess(t.one_scan(image=image))


def _preprocess_option(*option):
    return lambda t: t.preprocess(t.one_scan()) + list(option)


def _cache_is_a_file(t):
    manifest = t.one_scan()
    t.path("cache").write_text("not a folder")
    return t.preprocess(manifest)


def _disk_full_preprocess_patched(t):
    """np.save raising ENOSPC as a full disk does (no root needed)."""
    from fewshot_da.data import preprocess

    def full(path, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    t.monkeypatch.setattr(preprocess.np, "save", full)
    return t.preprocess(t.one_scan())


def _tiny_tmpfs(t, size="64k") -> Path:
    folder = t.path("full")
    folder.mkdir(exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                          check=False, capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tiny tmpfs ({done.stderr.strip() or 'mount failed'}); needs root")
    t.mounts.append(folder)
    return folder


def _disk_full_preprocess(t):
    manifest = t.one_scan(image=np.random.default_rng(0).random((64, 64, 8)).astype(np.float32),
                          mask=np.zeros((64, 64, 8), np.uint8))
    full = _tiny_tmpfs(t, "64k")
    return ["data", "preprocess", manifest, "--cache", full / "cache", "--workers", "1"]


def _disk_full_train(t):
    _tiny_tmpfs(t, "256k")
    return t.train(out="full/run")


def _index_suffixes(t, *extra):
    for case in ("a", "b"):
        t.nifti(f"ds/images/{case}_t1.nii.gz")
        t.nifti(f"ds/masks/{case}_mask.nii.gz", t.mask_data())
    return ["data", "index", "folder", t.root / "ds", "--out", t.root / "out.csv", *extra]


def _images2d_missing_mask(t):
    from PIL import Image

    for name in ("x1", "x2"):
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(t.path(f"us/images/{name}.png"))
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(t.path("us/masks/x1_mask.png"))
    return ["data", "index", "images2d", t.root / "us", "--out", t.root / "out.csv"]


def _cc359_bad_name(t):
    t.nifti("cc/scan1.nii.gz")
    return ["data", "index", "cc359", t.root / "cc", "--out", t.root / "out.csv"]


def _merge_duplicates(t):
    image, mask = t.pair("a")
    first = t.manifest([("a", image, mask, "d")], name="one.csv")
    second = t.manifest([("a", image, mask, "e")], name="two.csv")
    return ["data", "merge", first, second, "--out", t.root / "out.csv"]


def _shift(domain, n):
    def build(t):
        rows = []
        for i in range(3):
            image, mask = t.pair(f"s{i}")
            rows.append((f"s{i}", image, mask, "d"))
        return ["data", "shift", t.manifest(rows), "--domain", domain, "--n", n, "--out-dir", t.root / "out",
                "--out", t.root / "out.csv"]
    return build


def _phantoms(*option):
    return lambda t: ["data", "phantoms", t.root / "out", "--scans-per-domain", "1", *option]


def _bad_split_file(t):
    path = t.path("splits.json")
    path.write_text("{not json")
    return t.train(splits=path)


def _replace_files(make):
    return lambda t: t.train_with(make)


def _mismatched_mask(t, scan):
    image, _ = t.pair(scan, image=np.ones((16, 16, 8), np.float32))
    return image, t.nifti(f"data/{scan}_small_mask.nii.gz", np.zeros((16, 15, 8), np.uint8))


def _two_valued_mask(t, scan):
    mask = np.zeros((16, 16, 8), np.uint8)
    mask[4:8, 4:8, :] = 2
    return t.pair(scan, image=np.ones((16, 16, 8), np.float32), mask=mask)


def _gzip_damaged(t, scan):
    image, mask = t.pair(scan, image=np.random.default_rng(1).random((16, 16, 8)).astype(np.float32),
                         mask=np.zeros((16, 16, 8), np.uint8))
    raw = bytearray(image.read_bytes())
    raw[len(raw) // 2] ^= 0x55
    image.write_bytes(bytes(raw))
    return image, mask


def _adapt(*options, model=None, target="ge3"):
    def build(t):
        return ["adapt", "--model", model(t) if model else t.project / "source", "--target", target,
                "--out", t.root / "out", "--num-threads", "1", *TINY, *options]
    return build


def _not_a_run(t):
    return t.path("empty").mkdir() or t.root / "empty"


def _predict(*options, model=None):
    def build(t):
        return ["predict", "--model", model(t) if model else t.project / "source", "--out", t.root / "out",
                "--quiet", *options]
    return build


def _corrupt_checkpoint(t):
    run = t.root / "run"
    shutil.copytree(t.project / "source", run)
    (run / "checkpoint.pt").write_bytes(b"\0" * 100)
    return run


def _interrupted_run_other_source(t):
    """The project's source run copied as if killed before its summary, then re-run with another --source."""
    shutil.copytree(t.project / "source", t.root / "out")
    (t.root / "out" / "summary.json").unlink()
    return t.train(source="ge3", out="out")


def _locked_out(t):
    """--out is being written by another run: its lock is held (flock) with a holder line."""
    import fcntl

    (t.root / "out").mkdir()
    handle = open(t.root / "out" / ".lock", "a+")
    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    handle.write("pid 4242 on another-host since 2026-12-02 06:00:00\n")
    handle.flush()
    t.held_lock = handle  # kept open (and locked) for the duration of the case
    return t.train(out="out")


CASES = [
    # NIfTI files (data preprocess)
    Case("gzip-corrupt-byte", _corrupt_gzip, r"a\.nii\.gz: corrupt gzip stream"),
    Case("gzip-bad-crc", _gzip_bad_crc, r"a\.nii\.gz: corrupt gzip stream \(CRC check failed"),
    Case("gzip-truncated", _truncated_gzip, r"a\.nii\.gz: corrupt gzip stream"),
    Case("gzip-not-gzip", _not_gzip, r"a\.nii\.gz: not a gzip file"),
    Case("nifti-truncated", _uncompressed_truncated, r"a\.nii: cannot read NIfTI"),
    Case("pixdim-zero", _pixdim([0.0, 1.0, 1.0]), r"a\.nii\.gz: voxel spacing \(pixdim\) 0 x 1 x 1 mm"),
    Case("pixdim-negative", _pixdim([1.0, -1.0, 1.0]), r"a\.nii\.gz: voxel spacing \(pixdim\) 1 x -1 x 1 mm"),
    Case("pixdim-nan", _pixdim([1.0, 1.0, np.nan]), r"a\.nii\.gz: voxel spacing \(pixdim\) 1 x 1 x nan mm"),
    Case("spacing-1e-4mm", _geometry((1e-4, 1e-4, 1e-4)), r"a\.nii\.gz: resampling .* leaves an empty axis"),
    Case("spacing-100mm", _geometry((100.0, 100.0, 100.0)), r"a\.nii\.gz: resampling .* limit 2\*\*28 voxels"),
    Case("affine-singular", _singular_affine, r"a\.nii\.gz: .*(affine|pixdim)"),
    Case("image-nan", _nan_image, r"a\.nii\.gz: 1 NaN/inf intensities"),
    Case("image-4d", _four_d, r"a\.nii\.gz: expected a 3D volume"),
    Case("mask-shape", _mask_shape, r"a_mask\.nii\.gz: mask shape \(8, 8, 7\) differs"),
    Case("mask-non-binary", _non_binary_mask, r"a_mask\.nii\.gz: mask is not binary"),
    # manifests
    Case("manifest-non-utf8-preprocess", _non_utf8_manifest("preprocess"), r"manifest\.csv: manifest is not UTF-8"),
    Case("manifest-non-utf8-split", _non_utf8_manifest("split"), r"manifest\.csv: manifest is not UTF-8"),
    Case("manifest-non-utf8-merge", _non_utf8_manifest("merge"), r"manifest\.csv: manifest is not UTF-8"),
    Case("manifest-nul-bytes", _nul_manifest, r"manifest\.csv: manifest holds NUL bytes"),
    Case("manifest-no-mask-column", _missing_column("preprocess"), r"manifest\.csv: manifest lacks column\(s\) mask"),
    Case("manifest-missing-file", _missing_file, r"gone_mask\.nii\.gz: file not found"),
    Case("manifest-duplicate-id", _duplicate_id, r"manifest\.csv: duplicate id 'a'"),
    # preprocess options and output
    Case("option-spacing-text", _preprocess_option("--spacing-mm", "abc"), r"--spacing-mm 'abc'"),
    Case("option-spacing-zero", _preprocess_option("--spacing-mm", "0"), r"--spacing-mm"),
    Case("option-spacing-nan", _preprocess_option("--spacing-mm", "nan"), r"--spacing-mm"),
    Case("cache-is-a-file", _cache_is_a_file, r"cache"),
    Case("disk-full-preprocess-patched", _disk_full_preprocess_patched,
         r"no space left on device writing .*cache/a-[0-9a-f]{16}/image\.npy$"),
    Case("disk-full-preprocess-tmpfs", _disk_full_preprocess,
         r"no space left on device writing .*full/cache/a-[0-9a-f]{16}/image\.npy$", ("out*", "cache*", "full*")),
    # index, merge, shift, phantoms
    Case("index-image-suffix-needed", _index_suffixes,
         r"a_t1\.nii\.gz: no mask in .*masks; looked for a_t1\.\*, a_t1_mask\.\*.*try --image-suffix _t1"),
    Case("index-image-suffix-unmatched", lambda t: _index_suffixes(t, "--image-suffix", "_t2"),
         r"images: no images named <case>_t2\.\* \(--image-suffix _t2\)"),
    Case("index-images2d-missing-mask", _images2d_missing_mask, r"x2\.png: no mask in .*masks; looked for x2_mask\.\*"),
    Case("index-cc359-name", _cc359_bad_name, r"scan1\.nii\.gz: not a CC359 name"),
    Case("index-cc359-option", lambda t: _cc359_bad_name(t) + ["--mask-suffix", "_x"], r"--mask-suffix"),
    Case("index-missing-root", lambda t: ["data", "index", "folder", t.root / "nope", "--out", t.root / "o.csv"],
         r"nope: folder not found"),
    Case("merge-duplicate-id", _merge_duplicates, r"merging .*one\.csv.*: duplicate id 'a'"),
    Case("shift-unknown-domain", _shift("zz", 1), r"'zz'"),
    Case("shift-too-many", _shift("d", 3), r"manifest\.csv: domain 'd' has 3 scans"),
    Case("phantoms-shape-text", _phantoms("--shape", "a,b"), r"--shape 'a,b'"),
    Case("phantoms-shape-small", _phantoms("--shape", "4,4,4"), r"phantom shape \(4, 4, 4\)"),
    Case("phantoms-spacing-zero", _phantoms("--spacing-mm", "0,1,1"), r"spacing"),
    # train / adapt / predict
    Case("train-unknown-domain", lambda t: t.train(source="nowhere"), r"'nowhere'"),
    Case("train-no-mask-column", _missing_column("train"), r"manifest\.csv: manifest lacks column\(s\) mask"),
    Case("train-bad-splits", _bad_split_file, r"splits\.json: not valid JSON"),
    Case("train-mask-shape", _replace_files(_mismatched_mask), r"_small_mask\.nii\.gz: mask shape \(16, 15, 8\)"),
    Case("train-mask-non-binary", _replace_files(_two_valued_mask), r"_mask\.nii\.gz: mask is not binary"),
    Case("train-gzip-corrupt", _replace_files(_gzip_damaged), r"\.nii\.gz: corrupt gzip stream"),
    Case("train-disk-full", _disk_full_train, r"no space left on device writing .*full/run/", ("out*", "cache*", "full*")),
    Case("adapt-not-a-run", _adapt(model=_not_a_run), r"empty: not a fewshot-da run folder"),
    Case("adapt-unknown-target", _adapt(target="nowhere"), r"'nowhere'"),
    Case("adapt-unknown-layers", _adapt("--layers", "regex:^nothing$"), r"nothing"),
    Case("predict-unknown-id", _predict("--ids", "CC9999"), r"--ids: 'CC9999' is not an id"),
    Case("predict-corrupt-checkpoint", _predict(model=_corrupt_checkpoint), r"checkpoint\.pt: not a readable checkpoint"),
    # one --tolerance validator for every verb; run-folder identity and lock
    Case("train-tolerance-negative", lambda t: t.train() + ["--tolerance", "-1"], r"--tolerance -1: .*> 0"),
    Case("adapt-tolerance-nan", _adapt("--tolerance", "nan"), r"--tolerance nan: .*> 0"),
    Case("predict-tolerance-zero", _predict("--tolerance", "0"), r"--tolerance 0: .*> 0"),
    Case("train-resume-other-source", _interrupted_run_other_source, r"out: holds another run \(its source differs"),
    Case("train-folder-locked", _locked_out, r"out: another run is writing this folder \(pid 4242 on another-host"),
    Case("adapt-lr-steps-late", _adapt("--lr-steps", "5:0.1"), r"--lr-steps 5:0.1: with --epochs 1 no drop can fire"),
    Case("adapt-spottune-bad-temperature", _adapt("--strategy", "spottune", "--temperature", "0"),
         r"--temperature must be > 0"),
    Case("adapt-gradual-too-many-blocks", _adapt("--strategy", "gradual", "--blocks-trained", "99"),
         r"--blocks-trained 99: dart20 has 8 blocks"),
    Case("adapt-slices-on-2d", _adapt("--finetune-ids", "CC9999"), r"--finetune-ids: 'CC9999' is not an id"),
]


# ----------------------------------------------------------------------------------------------- the test
def _snapshot(root: Path) -> dict:
    return {p.relative_to(root).as_posix(): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and "__pycache__" not in p.parts}


def _unmount(folder: Path) -> str:
    """Unmount; '' when clean, else why (a file still open there), after a lazy unmount."""
    done = subprocess.run(["umount", str(folder)], check=False, capture_output=True, text=True)
    if done.returncode == 0:
        return ""
    subprocess.run(["umount", "-l", str(folder)], check=False, capture_output=True)
    return done.stderr.strip() or "umount failed"


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_refused_in_one_line(case, project, tmp_path, monkeypatch, cli_runner, cli_app):
    tree = Tree(tmp_path / "case", project, monkeypatch)
    tree.root.mkdir()
    try:
        args = [str(a) for a in case.build(tree)]
        before, project_before = _snapshot(tree.root), _snapshot(project)
        result = cli_runner.invoke(cli_app, args)
        after, project_after = _snapshot(tree.root), _snapshot(project)
    finally:
        busy = [why for why in map(_unmount, tree.mounts) if why]
    assert not busy, f"a file is still open on the full disk: {busy}"  # its space would stay taken
    output = result.output
    assert result.exit_code != 0, output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in output, output
    errors = [line for line in output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, output
    assert re.search(case.expect, errors[0]), f"{errors[0]!r} does not match {case.expect!r}"
    for name, digest in before.items():
        assert after.get(name) == digest, f"{name} changed or vanished"
    new = [name for name in after if name not in before]
    assert all(any(fnmatch.fnmatch(n, g) for g in case.outputs) for n in new), new
    assert not [n for n in new if ".tmp" in n], new
    assert {k: v for k, v in project_before.items() if not k.startswith("cache/")} == \
           {k: v for k, v in project_after.items() if not k.startswith("cache/")}

