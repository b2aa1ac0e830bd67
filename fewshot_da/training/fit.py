"""One training loop for source training and few-shot adaptation, with per-epoch checkpoints and exact resume."""
import random
import re
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..atomic import atomic_path, write_csv_atomic
from ..cpu_memory import keep_freed_memory
from ..errors import InputError
from .config import TrainConfig, lr_at, save_config, schedule_note
from .layers import freeze, set_train_mode
from .losses import segmentation_loss
from .strategies import Strategy, train_all

CHECKPOINT = "checkpoint.pt"


def resolve_device(device: str = "auto") -> torch.device:
    """"auto" -> CUDA when available, else CPU; anything else is passed to torch.device."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except RuntimeError:
        raise InputError(f"--device {device!r} is not a valid torch device (auto, cpu, cuda, cuda:1, ...)") from None


def training_layout(device: torch.device) -> torch.memory_format:
    """Memory layout of weights and batches while training: channels-last on CPU (oneDNN's faster NHWC kernels;
    benchmarks/README.md, "CPU training setup"), PyTorch's default elsewhere. NCHW values agree to float32
    rounding, not bit for bit."""
    return torch.channels_last if device.type == "cpu" else torch.contiguous_format


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


def _log(run_dir: Path, message: str) -> None:
    with open(run_dir / "log.txt", "a") as f:
        f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}\n")


def _optimizer_groups(model: nn.Module, strategy: Strategy, names, config: TrainConfig) -> list:
    """SGD parameter groups: the strategy's groups split further by the config's `lr_scale` patterns."""
    params = dict(model.named_parameters())
    patterns = [(re.compile(p), f) for p, f in config.lr_scale.items()]
    groups = []
    for group in strategy.param_groups(names):
        by_factor = {}
        for name in group["names"]:
            factor = next((f for p, f in patterns if p.search(name)), 1.0)
            by_factor.setdefault(factor, []).append(name)
        for factor, members in by_factor.items():
            groups.append({"params": [params[n] for n in members], "names": members,
                           "lr_scale": float(group.get("lr_scale", 1.0)) * factor,
                           "weight_decay": float(group.get("weight_decay", config.weight_decay))})
    return groups


def fit(model: nn.Module, batches, config: TrainConfig, run_dir, *, strategy: Strategy = None, validate=None,
        progress: bool = True) -> dict:
    """Train `model` for config.epochs x config.iters_per_epoch SGD steps and keep the last-epoch weights.

    batches(step) -> (x, y): float tensors (B, 1, H, W) for global step `step` (0-based); indexing by step is what
    makes a resumed run identical to an uninterrupted one. strategy (default: every parameter trains) names the
    trainable parameters of each epoch (the rest is frozen, see `layers.freeze`), the optimizer's parameter groups
    and an optional extra loss term. validate(model, epoch) -> dict of floats, logged as `val_<key>` columns.
    Loss: config.loss (BCE with logits, soft Dice or both). Optimizer: fresh SGD (momentum, Nesterov) over every
    parameter the strategy ever trains; a group's lr is `lr_at(epoch)` x its factors. CUDA runs use AMP when
    config.amp.

    run_dir receives config.yaml, log.txt, metrics.csv, checkpoint.pt (each epoch, atomic) and, when the strategy
    keeps per-epoch records (Auto-RGN's scales, SpotTUnet's policy), its record file. If run_dir already holds a checkpoint of the same config and strategy,
    training resumes after its last finished epoch. Returns a summary dict (final loss and lr, trainable parameter
    count, timings in seconds).
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(config.device)
    layout = training_layout(device)
    heap_kept = device.type == "cpu" and keep_freed_memory()
    use_amp = bool(config.amp) and device.type == "cuda"
    strategy = strategy or train_all(model)
    if not strategy.trains:
        raise InputError(f"strategy {strategy.name!r} trains nothing; it has no fit() step")
    ever_trained = strategy.all_trainable(config.epochs)
    if not ever_trained:
        raise InputError("no trainable parameters: the layer selection froze the whole model")
    identity = {"name": strategy.name, "options": strategy.options, "trainable": ever_trained}

    seed_everything(config.seed)
    model.to(device, memory_format=layout)
    groups = _optimizer_groups(model, strategy, ever_trained, config)
    optimizer = torch.optim.SGD([{k: v for k, v in g.items() if k != "names"} for g in groups],
                                lr=lr_at(0, config), momentum=config.momentum, nesterov=config.nesterov,
                                weight_decay=config.weight_decay)
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    loss_fn = segmentation_loss(config.loss)
    history, strategy_rows, start_epoch, resumed_from = [], [], 0, None

    checkpoint_path = run_dir / CHECKPOINT
    if checkpoint_path.exists():
        state = load_checkpoint(checkpoint_path)
        saved = {k: v for k, v in state["config"].items() if k != "device"}
        if saved != {k: v for k, v in config.resolved().items() if k != "device"}:
            raise InputError(f"{checkpoint_path}: holds a run with a different config; use a new --out folder")
        if state.get("strategy") != identity:
            raise InputError(f"{checkpoint_path}: holds a run with a different strategy or set of trainable layers")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        history, start_epoch, resumed_from = list(state["history"]), state["epoch"], state["epoch"]
        strategy_rows = list(state.get("strategy_rows", []))
        _set_rng_state(state["rng"])
        _log(run_dir, f"resumed after epoch {start_epoch - 1}")
    else:
        save_config(config, run_dir / "config.yaml")
        n_trainable = sum(p.numel() for n, p in model.named_parameters() if n in set(ever_trained))
        _log(run_dir, f"start {config.arch} {config.stage} preset={config.preset} device={device} amp={use_amp} "
                      f"layout={str(layout).removeprefix('torch.')} heap_kept={heap_kept} "
                      f"seed={config.seed} strategy={strategy.name} {strategy.options} trainable={n_trainable} "
                      f"params in {len(ever_trained)} tensors")
        if schedule_note(config):
            _log(run_dir, schedule_note(config))

    timings = {"data_s": 0.0, "compute_s": 0.0, "validate_s": 0.0, "bookkeeping_s": 0.0}
    bar = None
    if progress and start_epoch < config.epochs:
        from tqdm.auto import tqdm

        bar = tqdm(total=config.total_steps, initial=start_epoch * config.iters_per_epoch, unit="step",
                   desc=f"{config.stage} {config.arch}")
    for epoch in range(start_epoch, config.epochs):
        lr = lr_at(epoch, config)
        freeze(model, strategy.trainable_at(epoch), config.bn_stats)
        set_train_mode(model, config.bn_stats)
        scales = {}
        if strategy.epoch_scales is not None:
            x, y = batches(epoch * config.iters_per_epoch)
            x = x.to(device).contiguous(memory_format=layout)
            scales, rows = strategy.epoch_scales(model, epoch, (x, y.to(device)), loss_fn)
            strategy_rows.extend(rows)
        for group, spec in zip(optimizer.param_groups, groups):
            group["lr"] = lr * spec["lr_scale"] * (scales[spec["names"][0]] if scales else 1.0)
        loss_sum = torch.zeros((), device=device)
        epoch_start = time.perf_counter()
        data_s = 0.0
        for i in range(config.iters_per_epoch):
            t0 = time.perf_counter()
            x, y = batches(epoch * config.iters_per_epoch + i)
            x = x.to(device, non_blocking=True).contiguous(memory_format=layout)
            y = y.to(device, non_blocking=True)
            data_s += time.perf_counter() - t0
            with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
                logits = model(x)
            loss = loss_fn(logits.float(), y.float())
            if strategy.extra_loss is not None:
                loss = loss + strategy.extra_loss(model)
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
               "data_seconds": round(data_s, 3), **strategy.describe(epoch)}
        if validate is not None:
            t0 = time.perf_counter()
            row.update({f"val_{k}": float(v) for k, v in validate(model, epoch).items()})
            timings["validate_s"] += time.perf_counter() - t0
        history.append(row)
        if strategy.epoch_end is not None:
            strategy_rows.extend(strategy.epoch_end(model, epoch))

        t0 = time.perf_counter()
        save_checkpoint({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                         "scaler": scaler.state_dict(), "config": config.resolved(), "epoch": epoch + 1,
                         "strategy": identity, "strategy_rows": strategy_rows, "history": history,
                         "rng": _rng_state()}, checkpoint_path)
        write_csv_atomic(run_dir / "metrics.csv", history)
        if strategy_rows:
            write_csv_atomic(run_dir / strategy.record_file, strategy_rows)
        _log(run_dir, " ".join(f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
        timings["bookkeeping_s"] += time.perf_counter() - t0
        if bar is not None:
            bar.set_postfix(epoch=epoch, loss=f"{train_loss:.4f}", lr=f"{lr:.1e}")
    if bar is not None:
        bar.close()

    trained = set(ever_trained)
    return {
        "arch": config.arch,
        "stage": config.stage,
        "strategy": strategy.name,
        "epochs": config.epochs,
        "steps": config.total_steps,
        "resumed_from_epoch": resumed_from,
        "device": str(device),
        "amp": use_amp,
        "loss": config.loss,
        "final_lr": history[-1]["lr"] if history else None,
        "final_train_loss": history[-1]["train_loss"] if history else None,
        "trainable_tensors": len(ever_trained),
        "trainable_params": sum(p.numel() for n, p in model.named_parameters() if n in trained),
        "frozen_params": sum(p.numel() for n, p in model.named_parameters() if n not in trained),
        "timings_s": {k: round(v, 4) for k, v in timings.items()},
        "last_epoch": history[-1] if history else None,
    }
