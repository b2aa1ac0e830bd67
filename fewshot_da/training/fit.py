"""One training loop for source training and few-shot adaptation, with per-epoch checkpoints and exact resume."""
import csv
import random
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..atomic import atomic_path
from ..errors import InputError
from .config import TrainConfig, lr_at, save_config
from .groups import freeze, set_train_mode

CHECKPOINT = "checkpoint.pt"


def resolve_device(device: str = "auto") -> torch.device:
    """"auto" -> CUDA when available, else CPU; anything else is passed to torch.device."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except RuntimeError:
        raise InputError(f"--device {device!r} is not a valid torch device (auto, cpu, cuda, cuda:1, ...)") from None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _rng_state() -> dict:
    np_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def _set_rng_state(state: dict) -> None:
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


def _write_csv(rows, path) -> None:
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def _plot_progress(rows, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), layout="constrained")
    epochs = [r["epoch"] for r in rows]
    ax.plot(epochs, [r["train_loss"] for r in rows], label="train loss (BCE)", color="tab:blue")
    ax.set_xlabel("epoch")
    ax.set_ylabel("train loss")
    ax.set_yscale("log")
    extra = [k for k in rows[-1] if k.startswith("val_")]
    if extra:
        ax2 = ax.twinx()
        for key in extra:
            ax2.plot(epochs, [r.get(key, float("nan")) for r in rows], label=key, linestyle="--")
        ax2.set_ylabel("validation")
        ax2.legend(loc="center right", fontsize=8)
    ax.legend(loc="upper right", fontsize=8)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=72)
    plt.close(fig)


def _log(run_dir: Path, message: str) -> None:
    with open(run_dir / "log.txt", "a") as f:
        f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}\n")


def fit(model: nn.Module, batches, config: TrainConfig, run_dir, *, trainable=None, validate=None,
        progress: bool = True) -> dict:
    """Train `model` for config.epochs x config.iters_per_epoch SGD steps and keep the last-epoch weights.

    batches(step) -> (x, y): float tensors (B, 1, H, W) for global step `step` (0-based); indexing by step is what
    makes a resumed run identical to an uninterrupted one. trainable: parameter names to train (the rest is
    frozen, see `groups.freeze`); None trains what currently has requires_grad. validate(model, epoch) -> dict of
    floats, logged as `val_<key>` columns. Loss: BCE with logits, mean over pixels. Optimizer: fresh SGD
    (momentum, Nesterov) over trainable parameters, lr from `lr_at` per epoch. CUDA runs use AMP when config.amp.

    run_dir receives config.yaml, log.txt, metrics.csv, progress.png and checkpoint.pt (each epoch, atomic). If
    run_dir already holds a checkpoint of the same config, training resumes after its last finished epoch.
    Returns a summary dict (final loss and lr, trainable parameter count, timings in seconds).
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(config.device)
    use_amp = bool(config.amp) and device.type == "cuda"
    if trainable is not None:
        freeze(model, trainable, config.bn_stats)
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    if not trainable:
        raise InputError("no trainable parameters: the layer selection froze the whole model")

    seed_everything(config.seed)
    model.to(device)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr_at(0, config),
                                momentum=config.momentum, nesterov=config.nesterov,
                                weight_decay=config.weight_decay)
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    loss_fn = nn.BCEWithLogitsLoss()
    history, start_epoch, resumed_from = [], 0, None

    checkpoint_path = run_dir / CHECKPOINT
    if checkpoint_path.exists():
        state = load_checkpoint(checkpoint_path)
        saved = {k: v for k, v in state["config"].items() if k != "device"}
        if saved != {k: v for k, v in config.resolved().items() if k != "device"}:
            raise InputError(f"{checkpoint_path}: holds a run with a different config; use a new --out folder")
        if state["trainable"] != trainable:
            raise InputError(f"{checkpoint_path}: holds a run with a different set of trainable layers")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        history, start_epoch, resumed_from = list(state["history"]), state["epoch"], state["epoch"]
        _set_rng_state(state["rng"])
        _log(run_dir, f"resumed after epoch {start_epoch - 1}")
    else:
        save_config(config, run_dir / "config.yaml")
        n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        _log(run_dir, f"start {config.arch} {config.stage} preset={config.preset} device={device} amp={use_amp} "
                      f"seed={config.seed} trainable={n_trainable} params in {len(trainable)} tensors")

    timings = {"data_s": 0.0, "compute_s": 0.0, "validate_s": 0.0, "bookkeeping_s": 0.0}
    bar = None
    if progress and start_epoch < config.epochs:
        from tqdm.auto import tqdm

        bar = tqdm(total=config.total_steps, initial=start_epoch * config.iters_per_epoch, unit="step",
                   desc=f"{config.stage} {config.arch}")
    for epoch in range(start_epoch, config.epochs):
        lr = lr_at(epoch, config)
        for group in optimizer.param_groups:
            group["lr"] = lr
        set_train_mode(model, config.bn_stats)
        loss_sum = torch.zeros((), device=device)
        epoch_start = time.perf_counter()
        data_s = 0.0
        for i in range(config.iters_per_epoch):
            t0 = time.perf_counter()
            x, y = batches(epoch * config.iters_per_epoch + i)
            x = x.to(device, non_blocking=True)
            y = y.to(device, non_blocking=True)
            data_s += time.perf_counter() - t0
            with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
                logits = model(x)
            loss = loss_fn(logits.float(), y.float())
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            loss_sum += loss.detach()
            if bar is not None:
                bar.update(1)
        train_loss = float(loss_sum) / config.iters_per_epoch  # one device sync per epoch
        seconds = time.perf_counter() - epoch_start
        timings["data_s"] += data_s
        timings["compute_s"] += seconds - data_s

        row = {"epoch": epoch, "lr": lr, "train_loss": train_loss, "seconds": round(seconds, 3),
               "data_seconds": round(data_s, 3)}
        if validate is not None:
            t0 = time.perf_counter()
            row.update({f"val_{k}": float(v) for k, v in validate(model, epoch).items()})
            timings["validate_s"] += time.perf_counter() - t0
        history.append(row)

        t0 = time.perf_counter()
        save_checkpoint({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                         "scaler": scaler.state_dict(), "config": config.resolved(), "epoch": epoch + 1,
                         "trainable": trainable, "history": history, "rng": _rng_state()}, checkpoint_path)
        _write_csv(history, run_dir / "metrics.csv")
        _plot_progress(history, run_dir / "progress.png")
        _log(run_dir, " ".join(f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
        timings["bookkeeping_s"] += time.perf_counter() - t0
        if bar is not None:
            bar.set_postfix(epoch=epoch, loss=f"{train_loss:.4f}", lr=f"{lr:.1e}")
    if bar is not None:
        bar.close()

    return {
        "arch": config.arch,
        "stage": config.stage,
        "epochs": config.epochs,
        "steps": config.total_steps,
        "resumed_from_epoch": resumed_from,
        "device": str(device),
        "amp": use_amp,
        "final_lr": history[-1]["lr"] if history else None,
        "final_train_loss": history[-1]["train_loss"] if history else None,
        "trainable_tensors": len(trainable),
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "frozen_params": sum(p.numel() for p in model.parameters() if not p.requires_grad),
        "timings_s": {k: round(v, 4) for k, v in timings.items()},
        "last_epoch": history[-1] if history else None,
    }
