"""Checkpoint files: atomic save, safe load, copying pretrained weights into a network, generator states.

Below training and models: both read checkpoints, neither through the other.
"""
import random
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .atomic import atomic_path
from .errors import InputError

CHECKPOINT = "checkpoint.pt"


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) from one integer."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """Python, NumPy, torch and CUDA generator states, as tensors and tuples `torch.load(weights_only=True)` reads."""
    np_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict) -> None:
    """Restore the generator states `rng_state()` returned."""
    random.setstate(state["python"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(state: dict, path) -> None:
    """torch.save atomically: a kill at any moment leaves the old or the new file."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path) -> dict:
    """Read a checkpoint written by `fit` (plain dict: model, optimizer, scaler, config, epoch, history, rng, ...)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: checkpoint not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling errors come in many types
        raise InputError(f"{path}: not a readable checkpoint ({type(exc).__name__})") from None


def load_pretrained(model: nn.Module, path, *, arch: str = None, skip=()) -> dict:
    """Copy tensors from a checkpoint (ours, or a raw state dict saved by the papers' code) into `model`.

    Every tensor of `model` must be present with the same name and shape, except names starting with a prefix in
    `skip` (those keep their current values); otherwise InputError names the first offending key and the
    architecture. Keys of older dpipe (`.conv.` inside pre/post-activation blocks) and DataParallel (`module.`)
    are renamed. Returns {"copied": n, "skipped": m}.
    """
    state = load_checkpoint(path)
    arch_name = arch or type(model).__name__
    if isinstance(state.get("model"), dict):
        saved_arch = (state.get("config") or {}).get("arch")
        if arch is not None and saved_arch is not None and saved_arch != arch:
            raise InputError(f"{path}: checkpoint holds a {saved_arch} model, not {arch}")
        state = state["model"]
    target = model.state_dict()
    source = {}
    for key, value in state.items():
        key = key[len("module."):] if key.startswith("module.") else key
        if key not in target and key.replace(".conv.", ".layer.") in target:
            key = key.replace(".conv.", ".layer.")
        source[key] = value
    skipped = [k for k in target if k.startswith(tuple(skip))] if skip else []
    for key in target:
        if key in skipped:
            continue
        if key not in source:
            raise InputError(f"{path}: key {key!r} is missing; the checkpoint does not hold a {arch_name} model")
        if tuple(source[key].shape) != tuple(target[key].shape):
            raise InputError(f"{path}: key {key!r} has shape {tuple(source[key].shape)}, {arch_name} expects "
                             f"{tuple(target[key].shape)}")
    extra = [k for k in source if k not in target and not k.startswith(tuple(skip) or ("\0",))]
    if extra:
        raise InputError(f"{path}: unexpected key {extra[0]!r}; the checkpoint does not hold a {arch_name} model")
    model.load_state_dict({k: (target[k] if k in skipped else source[k]) for k in target})
    return {"copied": len(target) - len(skipped), "skipped": len(skipped)}
