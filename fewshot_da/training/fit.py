"""One training loop for source training and few-shot adaptation: a short loop of named steps; the run's files
(start, per-epoch checkpoints, exact resume) are `bookkeeping`'s."""
import re
import time
from pathlib import Path

import torch
from torch import nn

from ..checkpoint import seed_everything
from ..cpu_memory import keep_freed_memory
from ..errors import InputError
from ..threads import busy_cores_note
from .bookkeeping import RunState, record_epoch, resume_or_start
from .config import TrainConfig, lr_at, schedule_note
from .layers import freeze, set_train_mode
from .losses import segmentation_loss
from .strategies.base import Strategy, train_all


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
    keeps per-epoch records (Auto-RGN's scales, SpotTUnet's policy), its record file. If run_dir already holds a
    checkpoint of the same config and strategy, training resumes after its last finished epoch. Returns a summary
    dict (final loss and lr, trainable parameter count, timings in seconds).
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(config.device)
    layout = training_layout(device)
    heap_kept = device.type == "cpu" and keep_freed_memory()
    use_amp = bool(config.amp) and device.type == "cuda"
    strategy, ever_trained, identity = _trainable(model, strategy, config)

    seed_everything(config.seed)
    model.to(device, memory_format=layout)
    groups = _optimizer_groups(model, strategy, ever_trained, config)
    optimizer = torch.optim.SGD([{k: v for k, v in g.items() if k != "names"} for g in groups],
                                lr=lr_at(0, config), momentum=config.momentum, nesterov=config.nesterov,
                                weight_decay=config.weight_decay)
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    loss_fn = segmentation_loss(config.loss)
    n_trainable = sum(p.numel() for n, p in model.named_parameters() if n in set(ever_trained))
    start_line = (f"start {config.arch} {config.stage} preset={config.preset} device={device} amp={use_amp} "
                  f"layout={str(layout).removeprefix('torch.')} heap_kept={heap_kept} "
                  f"seed={config.seed} strategy={strategy.name} {strategy.options} trainable={n_trainable} "
                  f"params in {len(ever_trained)} tensors")
    busy = busy_cores_note(torch.get_num_threads()) if device.type == "cpu" else None
    run = resume_or_start(run_dir, config, identity, model, optimizer, scaler, start_line,
                          notes=[note for note in (schedule_note(config), busy) if note])

    timings = {"data_s": 0.0, "compute_s": 0.0, "validate_s": 0.0, "bookkeeping_s": 0.0}
    bar = _progress_bar(config, run.start_epoch) if progress else None
    step = _Step(model, optimizer, scaler, loss_fn, strategy, device, layout, use_amp)
    for epoch in range(run.start_epoch, config.epochs):
        lr = lr_at(epoch, config)
        _prepare_epoch(model, strategy, config, epoch, step, batches, run, optimizer, groups, lr)
        train_loss, seconds, data_s = _train_epoch(step, batches, epoch, config, bar)
        timings["data_s"] += data_s
        timings["compute_s"] += seconds - data_s

        row = {"epoch": epoch, "lr": lr, "train_loss": train_loss, "seconds": round(seconds, 3),
               "data_seconds": round(data_s, 3), **strategy.describe(epoch)}
        if validate is not None:
            t0 = time.perf_counter()
            row.update({f"val_{k}": float(v) for k, v in validate(model, epoch).items()})
            timings["validate_s"] += time.perf_counter() - t0
        run.history.append(row)
        if strategy.epoch_end is not None:
            run.strategy_rows.extend(strategy.epoch_end(model, epoch))

        t0 = time.perf_counter()
        record_epoch(run_dir, run, epoch, model, optimizer, scaler, config, identity, strategy.record_file)
        timings["bookkeeping_s"] += time.perf_counter() - t0
        if bar is not None:
            bar.set_postfix(epoch=epoch, loss=f"{train_loss:.4f}", lr=f"{lr:.1e}")
    if bar is not None:
        bar.close()
    return _summary(model, config, strategy, ever_trained, run, device, use_amp, timings)


def _trainable(model, strategy, config) -> tuple:
    """(strategy, every name it ever trains, its identity for resume); one-line errors when nothing trains."""
    strategy = strategy or train_all(model)
    if not strategy.trains:
        raise InputError(f"strategy {strategy.name!r} trains nothing; it has no fit() step")
    ever_trained = strategy.all_trainable(config.epochs)
    if not ever_trained:
        raise InputError("no trainable parameters: the layer selection froze the whole model")
    return strategy, ever_trained, {"name": strategy.name, "options": strategy.options, "trainable": ever_trained}


def _progress_bar(config, start_epoch: int):
    if start_epoch >= config.epochs:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=config.total_steps, initial=start_epoch * config.iters_per_epoch, unit="step",
                desc=f"{config.stage} {config.arch}")


class _Step:
    """One SGD step on a batch: forward (AMP on CUDA), the loss (+ the strategy's term), backward, update."""

    def __init__(self, model, optimizer, scaler, loss_fn, strategy, device, layout, use_amp):
        self.model, self.optimizer, self.scaler, self.loss_fn = model, optimizer, scaler, loss_fn
        self.strategy, self.device, self.layout, self.use_amp = strategy, device, layout, use_amp

    def to_device(self, batch):
        x, y = batch
        return x.to(self.device, non_blocking=True).contiguous(memory_format=self.layout), \
            y.to(self.device, non_blocking=True)

    def __call__(self, x, y) -> torch.Tensor:
        with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.use_amp):
            logits = self.model(x)
        loss = self.loss_fn(logits.float(), y.float())
        if self.strategy.extra_loss is not None:
            loss = loss + self.strategy.extra_loss(self.model)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return loss.detach()


def _prepare_epoch(model, strategy, config, epoch, step, batches, run: RunState, optimizer, groups, lr) -> None:
    """Freeze what the strategy keeps fixed this epoch, set train mode, and each group's learning rate (times
    the strategy's per-epoch scales, measured on the epoch's first batch, when it has them)."""
    freeze(model, strategy.trainable_at(epoch), config.bn_stats)
    set_train_mode(model, config.bn_stats)
    scales = {}
    if strategy.epoch_scales is not None:
        x, y = batches(epoch * config.iters_per_epoch)
        x = x.to(step.device).contiguous(memory_format=step.layout)
        scales, rows = strategy.epoch_scales(model, epoch, (x, y.to(step.device)), step.loss_fn)
        run.strategy_rows.extend(rows)
    for group, spec in zip(optimizer.param_groups, groups):
        group["lr"] = lr * spec["lr_scale"] * (scales[spec["names"][0]] if scales else 1.0)


def _train_epoch(step: _Step, batches, epoch: int, config, bar) -> tuple:
    """(mean training loss, seconds, seconds spent fetching batches) of one epoch's iters_per_epoch steps."""
    loss_sum = torch.zeros((), device=step.device)
    epoch_start = time.perf_counter()
    data_s = 0.0
    for i in range(config.iters_per_epoch):
        t0 = time.perf_counter()
        x, y = step.to_device(batches(epoch * config.iters_per_epoch + i))
        data_s += time.perf_counter() - t0
        loss_sum += step(x, y)
        if bar is not None:
            bar.update(1)
    return float(loss_sum) / config.iters_per_epoch, time.perf_counter() - epoch_start, data_s  # one sync an epoch


def _summary(model, config, strategy, ever_trained, run: RunState, device, use_amp, timings) -> dict:
    trained = set(ever_trained)
    history = run.history
    return {
        "arch": config.arch,
        "stage": config.stage,
        "strategy": strategy.name,
        "epochs": config.epochs,
        "steps": config.total_steps,
        "resumed_from_epoch": run.resumed_from,
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
