"""Figures as PNG files (matplotlib's object API on the Agg canvas; pyplot's global state is never used).

The package's only matplotlib importer, below the stages, the reports, the diagnostics and recommend.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .atomic import atomic_path

_COLORS = ("#E83F6F", "#2274A5", "#FFBF00", "#32936F", "#7B2D8B", "#F46036", "#5B5F97", "#8C8C8C")


def palette(labels: Sequence[str]) -> dict:
    """A fixed colour per series label, so one method has one colour in every figure of a report."""
    return {label: _COLORS[k % len(_COLORS)] for k, label in enumerate(dict.fromkeys(labels))}


def _save(fig: Figure, path) -> Path:
    FigureCanvasAgg(fig)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    return Path(path)


def axis_label_with_blank_note(label: str, matrix, blank_label: str) -> str:
    """The x-axis label, with a line saying what blank (NaN) cells mean when `matrix` has any."""
    if blank_label and not np.isfinite(np.asarray(matrix, dtype=float)).all():
        return "\n".join(filter(None, [label, f"blank: {blank_label}"]))
    return label


def heatmap(matrix, row_labels: Sequence[str], col_labels: Sequence[str], path, *, title: str = "",
            cmap: str = "viridis", vmin=None, vmax=None, colorbar_label: str = "", annotate: bool = True,
            fmt: str = "{:.2f}", xlabel: str = "", ylabel: str = "", blank_label: str = "") -> Path:
    """A rows x columns matrix as a labelled heat map PNG (NaN cells blank, explained by `blank_label` under the
    axes when there are any); generic: the transfer matrix, the SpotTUnet policy map (units x budgets) and the
    shift map (units x target domains) all use it."""
    m = np.asarray(matrix, dtype=float)
    if m.shape != (len(row_labels), len(col_labels)):
        raise ValueError(f"heatmap: matrix {m.shape} does not match {len(row_labels)} x {len(col_labels)} labels")
    height = max(2.5, 0.32 * len(row_labels) + 1.5)
    width = max(3.5, 0.75 * len(col_labels) + 2.5)
    fig = Figure(figsize=(width, height))
    ax = fig.add_subplot()
    image = ax.imshow(np.ma.masked_invalid(m), cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
    ax.set_xticks(range(len(col_labels)), [str(c) for c in col_labels], rotation=45 if len(col_labels) > 4 else 0,
                  ha="right" if len(col_labels) > 4 else "center")
    ax.set_yticks(range(len(row_labels)), [str(r) for r in row_labels])
    xlabel = axis_label_with_blank_note(xlabel, m, blank_label)
    ax.set_xlabel(xlabel, fontsize=8 if blank_label else None)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    bar = fig.colorbar(image, ax=ax)
    bar.set_label(colorbar_label)
    if annotate and m.size <= 400:
        lo, hi = image.get_clim()
        for (i, j), value in np.ndenumerate(m):
            if math.isfinite(value):
                dark = (value - lo) / (hi - lo) < 0.5 if hi > lo else True
                ax.text(j, i, fmt.format(value), ha="center", va="center", fontsize=8,
                        color="white" if dark else "black")
    return _save(fig, path)


def plot_gap_vs_budget(summary: Sequence[dict], pair_points: Sequence[dict], path, *, title: str = "",
                       series=lambda r: r["method"], colors: dict | None = None) -> Path:
    """Mean D_R against budget (log axis in scans): one line per series with its 95% CI band, and each pair's
    D_R (seeds averaged) as faint lines. `summary` rows from `stats.gap_by_budget`; `pair_points` rows with
    the series' keys, source, target, budget_scans and gap."""
    fig = Figure(figsize=(7.5, 4.8))
    ax = fig.add_subplot()
    labels = list(dict.fromkeys(series(r) for r in summary))
    colors = colors or palette(labels)
    for label in labels:
        color = colors[label]
        pairs = {}
        for p in pair_points:
            if series(p) == label and math.isfinite(p["gap"]) and p["budget_scans"] > 0:
                pairs.setdefault((p["source"], p["target"]), []).append((p["budget_scans"], p["gap"]))
        for points in pairs.values():
            xs, ys = zip(*sorted(points))
            ax.plot(xs, ys, color=color, alpha=0.18, linewidth=0.8, marker=".", markersize=3)
        rows = sorted((r for r in summary if series(r) == label), key=lambda r: r["budget_scans"])
        for r in (r for r in rows if r["budget_scans"] <= 0):
            # a label-free method (AdaBN, histogram matching) is a level, not a point on the log budget axis
            ax.axhline(r["mean"], color=color, linewidth=2.0, linestyle=":", label=f"{label} (no labels)")
            if math.isfinite(r["ci_low"]):
                ax.axhspan(r["ci_low"], r["ci_high"], color=color, alpha=0.12, linewidth=0)
        rows = [r for r in rows if r["budget_scans"] > 0]
        if rows:
            xs = np.array([r["budget_scans"] for r in rows])
            ax.plot(xs, [r["mean"] for r in rows], color=color, linewidth=2.2, marker="o", label=label)
            ax.fill_between(xs, [r["ci_low"] for r in rows], [r["ci_high"] for r in rows], color=color, alpha=0.2,
                            linewidth=0)
    budgets = sorted({(r["budget_scans"], r["budget"]) for r in summary if r["budget_scans"] > 0})
    if budgets:
        ax.set_xscale("log")
    crowded = len(budgets) > 5  # 1/48 and 1/36 sit close on a log axis
    ax.set_xticks([b for b, _ in budgets], [label for _, label in budgets], rotation=45 if crowded else 0,
                  ha="right" if crowded else "center")
    ax.minorticks_off()
    ax.axhline(0, color="black", linewidth=0.6)
    ax.axhline(1, color="black", linewidth=0.6, linestyle="--")
    ax.set_xlabel("target labels for fine-tuning (scans, log scale)")
    ax.set_ylabel("gap closed D_R")
    ax.set_title(title or "D_R against budget (mean, 95% CI; faint: single pairs)")
    ax.legend(loc="best", fontsize=9)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_winners(counts: Sequence[dict], path, *, title: str = "", series=lambda r: r["method"],
                 colors: dict | None = None) -> Path:
    """Winner bars per budget as the first paper's Fig. 3: pale bars all wins, solid bars significant wins."""
    budgets = sorted({(r["budget_scans"], r["budget"]) for r in counts})
    labels = list(dict.fromkeys(series(r) for r in counts))
    lookup = {(r["budget"], series(r)): r for r in counts}
    fig = Figure(figsize=(max(6.0, 1.1 * len(budgets) + 2), 4.5))
    ax = fig.add_subplot()
    width = 0.8 / max(1, len(labels))
    xs = np.arange(len(budgets))
    colors = colors or palette(labels)
    for k, label in enumerate(labels):
        color = colors[label]
        wins = [lookup.get((b, label), {}).get("wins", 0) for _, b in budgets]
        strong = [lookup.get((b, label), {}).get("significant_wins", 0) for _, b in budgets]
        offset = xs + (k - (len(labels) - 1) / 2) * width
        ax.bar(offset, wins, width=width, color=color, alpha=0.35)
        ax.bar(offset, strong, width=width, color=color, label=label)
        for x, w in zip(offset, wins):
            if w:
                ax.annotate(str(w), (x, w), xytext=(0, 2), textcoords="offset points", ha="center", fontsize=8)
    alpha = counts[0]["alpha"] if counts else float("nan")
    ax.set_xticks(xs, [b for _, b in budgets])
    ax.set_xlabel("target labels for fine-tuning (scans)")
    ax.set_ylabel("# source-target pairs won")
    ax.set_title(title or f"Winners per budget (solid: sign test p < {alpha:g}; pale: not significant)")
    top = max([r["wins"] for r in counts] + [1])
    ax.set_ylim(0, top * 1.12 + 0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def plot_policy_map(fractions, units: Sequence[str], budgets: Sequence[str], path, *, title: str = "") -> Path:
    """The SpotTUnet policy map: units (rows) x budgets (columns), the fraction of slices using the fine-tuned
    unit, magma colormap on [0, 1] (Zakazov et al. 2021)."""
    return heatmap(fractions, units, budgets, path, cmap="magma", vmin=0.0, vmax=1.0,
                   title=title or "SpotTUnet policy: fraction of slices using the fine-tuned unit",
                   colorbar_label="fraction fine-tuned", annotate=len(units) * len(budgets) <= 120, fmt="{:.2f}",
                   xlabel="budget (scans)", ylabel="unit")


def plot_training_curve(run_dir) -> Path:
    """A run folder's metrics.csv as progress.png: train loss (log scale) and any `val_*` columns per epoch."""
    import csv

    run_dir = Path(run_dir)
    with open(run_dir / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    epochs = [int(r["epoch"]) for r in rows]
    fig = Figure(figsize=(6, 3.5), layout="constrained")
    ax = fig.add_subplot()
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
    return _save(fig, run_dir / "progress.png")


def plot_learning_curve(points: Sequence[tuple], curve_x: Sequence[float], curve_y: Sequence[float], band,
                        path, *, x_marks: Sequence[tuple] = (), target: float | None = None, title: str = "",
                        x_label: str = "labelled slices", y_label: str = "score") -> Path:
    """Measured (x, y) points, the fitted curve (curve_x, curve_y) and its band [(x, low, high)] on a log x axis;
    x_marks [(x, label)] draw vertical guides (e.g. the user's own budget); `target` a horizontal one."""
    fig = Figure(figsize=(6.0, 4.0))
    ax = fig.add_subplot(1, 1, 1)
    if band:
        bx, lo, hi = zip(*band)
        ax.fill_between(bx, lo, hi, color=_COLORS[1], alpha=0.2, linewidth=0, label="95% fold-bootstrap band")
    ax.plot(curve_x, curve_y, color=_COLORS[1], label="fitted curve")
    if points:
        px, py = zip(*points)
        ax.scatter(px, py, color=_COLORS[0], s=18, zorder=3, label="validation folds")
    for x, label in x_marks:
        ax.axvline(x, color="#555555", linestyle=":", linewidth=1)
        ax.annotate(label, (x, ax.get_ylim()[0]), rotation=90, fontsize=7, va="bottom", ha="right")
    if target is not None:
        ax.axhline(target, color=_COLORS[3], linestyle="--", linewidth=1, label=f"target {target:g}")
    ax.set_xscale("log")
    ax.set_xlabel(x_label)
    ax.set_ylabel(y_label)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_scan_scores(groups: Sequence[tuple], path, *, colors: dict | None = None, y_label: str = "score",
                     title: str = "") -> Path:
    """Per-scan scores as a box and its points (jittered, seeded) per (budget, series) group, grouped by budget
    along x; `groups` are (budget label, series label, values) in display order. NaN values are left out and
    counted in the title."""
    budgets = list(dict.fromkeys(b for b, _, _ in groups))
    labels = list(dict.fromkeys(s for _, s, _ in groups))
    colors = colors or palette(labels)
    fig = Figure(figsize=(max(6.5, 0.45 * len(groups) + 2.5), 4.6))
    ax = fig.add_subplot()
    rng = np.random.default_rng(0)
    width = 0.8 / max(1, len(labels))
    n_nan = 0
    for i, budget in enumerate(budgets):
        for j, label in enumerate(labels):
            values = [np.asarray(v, dtype=float) for b, s, v in groups if b == budget and s == label]
            if not values:
                continue
            v = np.concatenate(values)
            n_nan += int(np.isnan(v).sum())
            v = v[np.isfinite(v)]
            if not v.size:
                continue
            x = i + (j - (len(labels) - 1) / 2) * width
            ax.boxplot([v], positions=[x], widths=width * 0.8, showfliers=False, patch_artist=True,
                       boxprops={"facecolor": colors[label], "alpha": 0.25, "edgecolor": colors[label]},
                       medianprops={"color": colors[label]}, whiskerprops={"color": colors[label]},
                       capprops={"color": colors[label]})
            ax.scatter(x + rng.uniform(-0.3, 0.3, v.size) * width, v, s=9, color=colors[label], zorder=3)
    for label in labels:
        ax.scatter([], [], color=colors[label], label=label)
    ax.set_xticks(range(len(budgets)), budgets)
    ax.set_xlim(-0.6, len(budgets) - 0.4)
    ax.set_xlabel("budget (target scans with labels)")
    ax.set_ylabel(y_label)
    ax.set_title((title or "Per-scan scores (box: quartiles; dots: scans)") + (f"; {n_nan} NaN left out" if n_nan
                                                                               else ""), fontsize=10)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def plot_examples(images: Sequence, truths: Sequence, predictions: Sequence[dict], row_titles: Sequence[str],
                  path) -> Path:
    """Example segmentations: one row per slice, the image with its true outline (green) and one column per method
    with the predicted outline (red) over the image; `predictions[i]` maps a method to slice i's mask (or None
    when that method has no prediction of it)."""
    methods = list(dict.fromkeys(m for p in predictions for m in p))
    n_rows, n_cols = len(images), 1 + len(methods)
    fig = Figure(figsize=(1.9 * n_cols, 2.0 * n_rows + 0.3), layout="constrained")
    axes = np.asarray(fig.subplots(n_rows, n_cols, squeeze=False))
    for i, (image, truth) in enumerate(zip(images, truths)):
        image, truth = np.asarray(image, dtype=float), np.asarray(truth)
        for j in range(n_cols):
            ax = axes[i, j]
            ax.imshow(image, cmap="gray")
            if truth.any():
                ax.contour(truth, levels=[0.5], colors="lime", linewidths=0.8)
            if j:
                mask = predictions[i].get(methods[j - 1])
                if mask is None:
                    ax.text(0.5, 0.5, "no prediction", transform=ax.transAxes, ha="center", color="white",
                            fontsize=7)
                elif np.asarray(mask).any():
                    ax.contour(np.asarray(mask), levels=[0.5], colors="red", linewidths=0.8)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title("image, truth" if j == 0 else methods[j - 1], fontsize=8)
        axes[i, 0].set_ylabel(row_titles[i], fontsize=7)
    fig.suptitle("truth: green outline; prediction: red outline", fontsize=9)
    return _save(fig, path)
