"""Opening preprocessed volumes: the cached, preprocessed images and masks of chosen manifest ids."""
from typing import Sequence

from ..errors import InputError
from .manifest import read_manifest
from .preprocess import preprocess_options
from .cache import preprocess_manifest


def open_volumes(manifest, ids: Sequence[str], *, cache, preprocess="paper", num_workers: int = 2,
                 progress: bool = True):
    """Preprocessed (cached) volumes of `ids` from `manifest`, in the order of `ids`."""
    records = {r.id: r for r in read_manifest(manifest)}
    missing = [i for i in ids if i not in records]
    if missing:
        raise InputError(f"{manifest}: id {missing[0]!r} (from the split file) is not in the manifest")
    return preprocess_manifest([records[i] for i in ids], cache, preprocess_options(preprocess),
                               num_workers=num_workers, progress=progress)
