"""Build fewshot_da._core (C++17, pybind11, OpenMP when available) and, when nvcc is found, fewshot_da._cuda.

FEWSHOT_DA_CUDA=1 requires the CUDA extension, FEWSHOT_DA_CUDA=0 skips it; unset means "build it when
nvcc is on PATH". The build never imports torch and never asks whether a GPU is present.
"""
import glob
import os
import shutil
import subprocess
import sys
import tempfile

from pybind11.setup_helpers import Pybind11Extension, build_ext
from setuptools import find_packages, setup

# the kernels, then the pybind11 parts of _core (metrics, loader, module); csrc/bindings/cuda.cpp is _cuda's
CORE_SOURCES = sorted(glob.glob("csrc/*.cpp")) + [f"csrc/bindings/{part}.cpp" for part in ("metrics", "loader", "core")]
CUDA_SOURCES = sorted(glob.glob("csrc/cuda/*.cu"))


def _compiler_accepts(compiler, flags):
    """True when the C++ compiler builds and links a tiny OpenMP program with `flags`."""
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "probe.cpp")
        with open(src, "w") as f:
            f.write("#include <omp.h>\nint main() { return omp_get_max_threads() > 0 ? 0 : 1; }\n")
        try:
            objs = compiler.compile([src], output_dir=tmp, extra_postargs=flags)
            compiler.link_executable(objs, os.path.join(tmp, "probe"), extra_postargs=flags)
        except Exception:
            return False
    return True


def _find_nvcc():
    nvcc = shutil.which("nvcc")
    if nvcc is None and os.environ.get("CUDA_HOME"):
        candidate = os.path.join(os.environ["CUDA_HOME"], "bin", "nvcc")
        nvcc = candidate if os.path.exists(candidate) else None
    return nvcc


def _cuda_root(nvcc):
    """CUDA toolkit root for headers and cudart_static (follows wrapper scripts via `nvcc --version` path)."""
    if os.environ.get("CUDA_HOME"):
        return os.environ["CUDA_HOME"]
    for root in ("/usr/local/cuda", os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))):
        if os.path.exists(os.path.join(root, "include", "cuda_runtime.h")):
            return root
    candidates = sorted(glob.glob("/usr/local/cuda-*"))
    return candidates[-1] if candidates else None


class BuildExt(build_ext):
    """Adds OpenMP when the compiler has it and compiles .cu sources with nvcc."""

    def build_extensions(self):
        omp = _compiler_accepts(self.compiler, ["-fopenmp"])
        for ext in self.extensions:
            if omp:
                ext.extra_compile_args.append("-fopenmp")
                ext.extra_link_args.append("-fopenmp")
        print(f"fewshot-da: OpenMP {'enabled' if omp else 'not available (single-threaded kernels)'}")
        build_ext.build_extensions(self)

    def build_extension(self, ext):
        cu_sources = [s for s in ext.sources if s.endswith(".cu")]
        if cu_sources:
            ext.sources = [s for s in ext.sources if not s.endswith(".cu")]
            nvcc = _find_nvcc()
            os.makedirs(self.build_temp, exist_ok=True)
            for src in cu_sources:
                obj = os.path.join(self.build_temp, os.path.basename(src) + ".o")
                cmd = [nvcc, "-c", src, "-o", obj, "-O3", "-std=c++17", "-Icsrc",
                       "-Xcompiler", "-fPIC", "--expt-relaxed-constexpr",
                       "-gencode=arch=compute_80,code=sm_80", "-gencode=arch=compute_90,code=sm_90",
                       "-gencode=arch=compute_90,code=compute_90"]
                print(" ".join(cmd))
                subprocess.check_call(cmd)
                ext.extra_objects.append(obj)
        build_ext.build_extension(self, ext)


def extensions():
    common = dict(cxx_std=17, include_dirs=["csrc"], extra_compile_args=["-O3"])
    exts = [Pybind11Extension("fewshot_da._core", CORE_SOURCES, **common)]
    want = os.environ.get("FEWSHOT_DA_CUDA", "").strip()
    nvcc = _find_nvcc()
    if want == "0":
        print("fewshot-da: CUDA extension skipped (FEWSHOT_DA_CUDA=0)")
    elif nvcc is None:
        if want == "1":
            sys.exit("fewshot-da: FEWSHOT_DA_CUDA=1 but nvcc was not found (set CUDA_HOME or PATH)")
        print("fewshot-da: CUDA extension skipped (nvcc not found)")
    elif not CUDA_SOURCES:
        print("fewshot-da: CUDA extension skipped (no csrc/cuda/*.cu sources)")
    else:
        root = _cuda_root(nvcc)
        print(f"fewshot-da: building CUDA extension with {nvcc} (toolkit {root})")
        exts.append(Pybind11Extension(
            "fewshot_da._cuda", ["csrc/bindings/cuda.cpp"] + CUDA_SOURCES,
            cxx_std=17, include_dirs=["csrc", os.path.join(root, "include")], extra_compile_args=["-O3"],
            library_dirs=[os.path.join(root, "lib64"), os.path.join(root, "lib")],
            libraries=["cudart_static", "dl", "rt", "pthread"]))
    return exts


setup(
    name="fewshot-da",
    version="0.1.0",
    description="Few-shot domain adaptation of segmentation U-Nets: which layers to fine-tune, and how much target data",
    packages=find_packages(include=["fewshot_da", "fewshot_da.*"]) + ["fewshot_da_cli"],
    package_dir={"fewshot_da_cli": "cli"},
    package_data={"fewshot_da": ["*.pyi"]},
    ext_modules=extensions(),
    cmdclass={"build_ext": BuildExt},
    python_requires=">=3.9",
    install_requires=["numpy>=1.22", "scipy>=1.8", "nibabel>=4", "click>=8", "torch>=2.0",
                      "pyyaml>=5", "tqdm>=4", "pillow>=9", "matplotlib>=3.5"],
    extras_require={"test": ["pytest>=7", "hypothesis>=6", "surface-distance>=0.1", "submitit>=1.5",
                             "pybind11>=2.10",  # .ci/sanitize builds the C++ core again with the sanitizers
                             "mkdocs>=1.5"],  # .ci/run builds the docs site with --strict
                    "docs": ["mkdocs>=1.5"],
                    "bench": ["monai>=1.3", "surface-distance>=0.1", "edt>=2.3"],
                    "fast-io": ["isal>=1.6"], "slurm": ["submitit>=1.5"]},
    entry_points={"console_scripts": ["fewshot-da=fewshot_da_cli.main:cli"]},
    zip_safe=False,
)
