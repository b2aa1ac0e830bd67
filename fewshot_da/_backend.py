"""The one place that imports the compiled extensions (`_core` is required, `_cuda` optional)."""

try:
    from fewshot_da import _core  # noqa: F401
except ImportError as exc:  # pragma: no cover - only on a broken install
    raise ImportError(
        "fewshot_da._core is not built: run `pip install -e .` (or `python setup.py build_ext --inplace`) "
        f"in the project root ({exc})"
    ) from exc

try:
    from fewshot_da import _cuda  # noqa: F401
    HAS_CUDA_KERNEL = True
except ImportError:
    _cuda = None
    HAS_CUDA_KERNEL = False

core = _core
cuda = _cuda
