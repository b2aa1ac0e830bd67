"""The training curve of a run folder: metrics.csv -> progress.png (loss on a log scale, validation columns)."""
import csv
from pathlib import Path

from ..atomic import atomic_path


def plot_training_curve(run_dir) -> Path:
    """Draw run_dir/metrics.csv as run_dir/progress.png (atomically); returns the PNG path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    with open(run_dir / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    epochs = [int(r["epoch"]) for r in rows]
    fig, ax = plt.subplots(figsize=(6, 3.5), layout="constrained")
    ax.plot(epochs, [float(r["train_loss"]) for r in rows], label="train loss", color="tab:blue")
    ax.set_xlabel("epoch")
    ax.set_ylabel("train loss")
    ax.set_yscale("log")
    extra = [k for k in rows[-1] if k.startswith("val_")] if rows else []
    if extra:
        ax2 = ax.twinx()
        for key in extra:
            ax2.plot(epochs, [float(r.get(key) or "nan") for r in rows], label=key, linestyle="--")
        ax2.set_ylabel("validation")
        ax2.legend(loc="center right", fontsize=8)
    ax.legend(loc="upper right", fontsize=8)
    path = run_dir / "progress.png"
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=72)
    plt.close(fig)
    return path
