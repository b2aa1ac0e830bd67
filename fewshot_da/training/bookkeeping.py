"""A training run's files: start (config.yaml, the start line), exact resume from checkpoint.pt, and per epoch
the checkpoint, metrics.csv, the strategy's record file and a log line. The loop itself is in `fit`."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ..atomic import write_csv_atomic
from ..checkpoint import CHECKPOINT, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from ..errors import InputError
from .config import TrainConfig, save_config


@dataclass
class RunState:
    """What a run has done: the metrics.csv rows, the strategy's record rows, the first epoch still to train."""

    history: list = field(default_factory=list)
    strategy_rows: list = field(default_factory=list)
    start_epoch: int = 0
    resumed_from: Optional[int] = None


def log(run_dir, message: str) -> None:
    """Append a time-stamped line to the run's log.txt."""
    with open(Path(run_dir) / "log.txt", "a") as f:
        f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}\n")


def _without_device(config: dict) -> dict:
    return {k: v for k, v in config.items() if k != "device"}


def resume_or_start(run_dir, config: TrainConfig, identity: dict, model, optimizer, scaler, start_line: str,
                    notes=()) -> RunState:
    """Resume from run_dir's checkpoint (same config and strategy identity, else a one-line error): weights,
    optimizer, scaler, records and generator states; or start: config.yaml and the start line (+ `notes`)."""
    path = Path(run_dir) / CHECKPOINT
    if not path.exists():
        save_config(config, Path(run_dir) / "config.yaml")
        for line in (start_line, *notes):
            log(run_dir, line)
        return RunState()
    state = load_checkpoint(path)
    if _without_device(state["config"]) != _without_device(config.resolved()):
        raise InputError(f"{path}: holds a run with a different config; use a new --out folder")
    if state.get("strategy") != identity:
        raise InputError(f"{path}: holds a run with a different strategy or set of trainable layers")
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scaler.load_state_dict(state["scaler"])
    set_rng_state(state["rng"])
    log(run_dir, f"resumed after epoch {state['epoch'] - 1}")
    return RunState(list(state["history"]), list(state.get("strategy_rows", [])), state["epoch"], state["epoch"])


def record_epoch(run_dir, run: RunState, epoch: int, model, optimizer, scaler, config: TrainConfig,
                 identity: dict, record_file: str) -> None:
    """After an epoch: the checkpoint (atomic; what resume reads), metrics.csv, the record file, a log line."""
    run_dir = Path(run_dir)
    save_checkpoint({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                     "scaler": scaler.state_dict(), "config": config.resolved(),
                     "network": getattr(model, "network_spec", None), "epoch": epoch + 1,
                     "strategy": identity, "strategy_rows": run.strategy_rows, "history": run.history,
                     "rng": rng_state()}, run_dir / CHECKPOINT)
    write_csv_atomic(run_dir / "metrics.csv", run.history)
    if run.strategy_rows:
        write_csv_atomic(run_dir / record_file, run.strategy_rows)
    row = run.history[-1]
    log(run_dir, " ".join(f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
