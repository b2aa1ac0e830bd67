"""Report tables (transfer matrix, D_R by budget, winners, SpotTUnet tests): numbers as CSV, text as Markdown."""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..atomic import write_csv_atomic, write_text_atomic
from .gap import BASELINE, ORACLE

NO_LABELS = "0 (no labels)"


@dataclass
class Table:
    """One report table: display `cells` under `columns` (Markdown/HTML) and numeric `records` (the CSV)."""

    name: str
    title: str
    columns: list
    cells: list
    caption: str = ""
    records: list = field(default_factory=list)
    record_columns: list = field(default_factory=list)
    text: bool = False  # cells are words, not numbers (left-aligned on the page)

    def markdown(self) -> str:
        """A GitHub-flavoured Markdown table with its title and caption."""
        def line(values):
            return "| " + " | ".join(str(v).replace("|", "\\|") for v in values) + " |"

        lines = [f"### {self.title}", ""]
        if self.caption:
            lines += [self.caption, ""]
        lines += [line(self.columns), line(["---"] * len(self.columns))] + [line(row) for row in self.cells]
        return "\n".join(lines) + "\n"


def write_table(table: Table, out_dir) -> tuple:
    """`<name>.csv` (the records) and `<name>.md` in `out_dir`, written atomically; returns both paths."""
    out_dir = Path(out_dir)
    csv_path = write_csv_atomic(out_dir / f"{table.name}.csv", table.records, table.record_columns or None)
    md_path = write_text_atomic(out_dir / f"{table.name}.md", table.markdown())
    return csv_path, md_path


def _num(value: float, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if math.isfinite(value) else "nan"


@dataclass
class TransferMatrix:
    """Mean, sample sd (ddof=1) and counts of a score per (source, target): baseline off the diagonal, oracle on it.

    `kind[i][j]` is 'baseline', 'oracle' or '' (no rows); means are over cases (replicates of a case averaged).
    """

    sources: list
    targets: list
    mean: np.ndarray
    sd: np.ndarray
    n: np.ndarray
    n_nan: np.ndarray
    kind: list


def transfer_matrix(rows: Sequence[dict], metric: str) -> TransferMatrix:
    """The first paper's Table 1 from results rows: baseline rows (source model on target scans) off the diagonal,
    the CV oracle rows (source == target) on it; a diagonal without oracle rows shows the baseline's in-domain
    score when present."""
    cells = {}
    for r in rows:
        if r["strategy"] == BASELINE:
            kind = BASELINE
        elif r["strategy"] == ORACLE:
            kind = ORACLE
        else:
            continue
        cells.setdefault((r["source"], r["target"], kind), {}).setdefault(r["case"], []).append(
            float(r.get(metric, float("nan"))))
    sources = sorted({s for s, _, _ in cells})
    targets = sorted({t for _, t, _ in cells})
    shape = (len(sources), len(targets))
    mean, sd = np.full(shape, np.nan), np.full(shape, np.nan)
    n, n_nan = np.zeros(shape, dtype=int), np.zeros(shape, dtype=int)
    kinds = [[""] * len(targets) for _ in sources]
    for i, s in enumerate(sources):
        for j, t in enumerate(targets):
            kind = ORACLE if (s == t and (s, t, ORACLE) in cells) else BASELINE
            per_case = cells.get((s, t, kind))
            if per_case is None:
                continue
            values = np.array([np.nanmean(v) if np.isfinite(v).any() else np.nan for v in per_case.values()])
            finite = values[np.isfinite(values)]
            kinds[i][j], n[i, j], n_nan[i, j] = kind, values.size, values.size - finite.size
            if finite.size:
                mean[i, j] = finite.mean()
                sd[i, j] = finite.std(ddof=1) if finite.size > 1 else np.nan
    return TransferMatrix(sources, targets, mean, sd, n, n_nan, kinds)


def transfer_table(matrix: TransferMatrix, metric: str) -> Table:
    """Table 1 layout: rows sources, columns targets, cells 'mean (sd)', the oracle diagonal in bold."""
    cells, records = [], []
    for i, s in enumerate(matrix.sources):
        row = [s]
        for j, t in enumerate(matrix.targets):
            kind = matrix.kind[i][j]
            if not kind:
                row.append("–")
                continue
            text = f"{_num(matrix.mean[i, j])} ({_num(matrix.sd[i, j])})"
            if matrix.n_nan[i, j]:
                text += f" [{matrix.n_nan[i, j]} NaN]"
            row.append(f"**{text}**" if kind == ORACLE else text)
            records.append({"source": s, "target": t, "kind": kind, "mean": float(matrix.mean[i, j]),
                            "sd": float(matrix.sd[i, j]), "n_cases": int(matrix.n[i, j]),
                            "n_nan": int(matrix.n_nan[i, j])})
        cells.append(row)
    caption = (f"{metric}: mean (sample sd) over the target's cases. Off the diagonal: the source model without "
               "adaptation (baseline); on the diagonal, in bold: the oracle trained on the target (CV).")
    return Table("transfer_matrix", "Transfer matrix (sources x targets)", ["source \\ target"] + matrix.targets,
                 cells, caption, records, ["source", "target", "kind", "mean", "sd", "n_cases", "n_nan"])


def _budget_grid(rows: Sequence[dict], series: Callable, cell: Callable) -> tuple:
    """Budgets (ordered by scans) x series labels, each cell rendered by `cell(row)`; '–' where absent."""
    budgets = sorted({r["budget"] for r in rows}, key=lambda b: next(r["budget_scans"] for r in rows
                                                                         if r["budget"] == b))
    labels = list(dict.fromkeys(series(r) for r in rows))
    lookup = {(r["budget"], series(r)): r for r in rows}
    cells = [[b or NO_LABELS] + [cell(lookup[(b, s)]) if (b, s) in lookup else "–" for s in labels] for b in budgets]
    return ["budget (scans)"] + labels, cells


def series_label(multi_arch: bool) -> Callable:
    """Label of a (arch, method) series: the method, prefixed by the arch when the table mixes archs."""
    return (lambda r: f"{r['arch']} {r['method']}") if multi_arch else (lambda r: r["method"])


def gap_budget_table(summary: Sequence[dict], multi_arch: bool = False) -> Table:
    """Mean pair-level D_R by budget (rows) and method (columns): 'mean [low, high] (n pairs)'."""
    def cell(r):
        return f"{_num(r['mean'], 2)} [{_num(r['ci_low'], 2)}, {_num(r['ci_high'], 2)}] (n={r['n_pairs']})"

    columns, cells = _budget_grid(summary, series_label(multi_arch), cell)
    method = summary[0]["ci"] if summary else "t"
    how = ("Student-t over pair means (seeds averaged within a pair)" if method == "t"
           else "percentile bootstrap over pairs, then seeds within pairs (10,000 resamples, seeded)")
    caption = f"Gap closed D_R = (D - D_B) / (D_O - D_B), pair level; 95% CI: {how}; n = pairs."
    return Table("gap_by_budget", "Mean D_R against budget", columns, cells, caption, list(summary),
                 ["arch", "method", "budget", "budget_scans", "n_pairs", "n_runs", "n_nan", "mean", "ci_low",
                  "ci_high", "ci"])


def score_budget_table(summary: Sequence[dict], metric: str, multi_arch: bool = False) -> Table:
    """Mean score by budget and method over pairs (the SpotTUnet paper's table): 'mean [low, high] (n pairs)'."""
    def cell(r):
        return f"{_num(r['mean'])} [{_num(r['ci_low'])}, {_num(r['ci_high'])}] (n={r['n_pairs']})"

    columns, cells = _budget_grid(summary, series_label(multi_arch), cell)
    caption = (f"{metric}: mean over pairs of per-pair means (cases, then seeds); 95% Student-t CI over pairs. "
               f"{BASELINE}: the source model without adaptation, {ORACLE}: the model trained on the target, both "
               "on the same pairs and test scans as the row's runs.")
    return Table("score_by_budget", f"Mean {metric} against budget", columns, cells, caption, list(summary),
                 ["arch", "method", "budget", "budget_scans", "n_pairs", "mean", "ci_low", "ci_high"])


def winner_table(counts: Sequence[dict], multi_arch: bool = False) -> Table:
    """Winner counts by budget and method as the first paper's Fig. 3: 'wins/significant' out of n pairs."""
    def cell(r):
        return f"{r['wins']}/{r['significant_wins']}" if r["wins"] else "0"

    columns, cells = _budget_grid(counts, series_label(multi_arch), cell)
    for row in cells:
        first = next((r for r in counts if (r["budget"] or NO_LABELS) == row[0]), {})
        row += [str(first.get("no_winner", 0)), str(first.get("n_pairs", 0))]
    alpha = counts[0]["alpha"] if counts else float("nan")
    caption = (f"Wins / significant wins (two-sided sign test on scan-level D_R against the runner-up, p < {alpha:g}) "
               "out of n pairs; the highest pair-level D_R wins. No winner: every candidate's D_R <= 0 (none beat "
               "the unadapted source model).")
    return Table("winners", "Winner counts per budget", columns + ["no winner", "n pairs"], cells, caption,
                 list(counts), ["arch", "budget", "budget_scans", "method", "wins", "significant_wins", "no_winner",
                                "n_pairs", "alpha"])


def flagged_pairs_table(pairs: Sequence[dict], min_gap: float, metric: str) -> Table:
    """Pairs whose oracle-baseline gap D_O - D_B is below `min_gap` (left out of D_R and the winners), with the
    D_R their runs would have had (`pairs` rows of gap.pair_denominators plus dr_min, dr_max, n_runs)."""
    columns = ["arch", "source", "target", "D_B", "D_O", "D_O - D_B", "n cases", "runs", "D_R of the runs"]
    cells = [[p["arch"], p["source"], p["target"], _num(p["baseline"]), _num(p["oracle"]), _num(p["gap"]),
              p["n_cases"], p["n_runs"], f"{_num(p['dr_min'], 1)} .. {_num(p['dr_max'], 1)}" if p["n_runs"] else "–"]
             for p in pairs]
    caption = (f"{metric}: D_O - D_B < {min_gap:g}, so D_R = (D - D_B) / (D_O - D_B) divides by almost nothing (or "
               "flips sign); these pairs are left out of the D_R table, the figure and the winners. Compare their "
               "scores in the score table instead.")
    return Table("low_gap_pairs", f"Pairs left out of D_R (D_O - D_B < {min_gap:g})", columns, cells, caption,
                 list(pairs), ["arch", "source", "target", "n_cases", "baseline", "oracle", "gap", "n_runs",
                               "dr_min", "dr_max"])


def degenerate_budget_table(found: Sequence[dict], min_slices: int) -> Table:
    """Budgets whose fine-tune slices hold fewer than `min_slices` slices with foreground (budget_check rows)."""
    columns = ["target", "budget", "fold", "fine-tune scans", "slices", "with foreground"]
    cells = [[f["target"], f["budget"], "" if f["fold"] is None else f["fold"], ", ".join(f["scans"]), f["n_slices"],
              f["n_foreground"]] for f in found]
    caption = (f"Fine-tuning at these budgets sees fewer than {min_slices} labelled slices with any foreground: its "
               "scores and D_R say little about the method.")
    return Table("degenerate_budgets", "Fine-tune slices with foreground", columns, cells, caption,
                 [dict(f, scans=" ".join(f["scans"])) for f in found],
                 ["target", "budget", "fold", "scans", "n_slices", "n_foreground"])


def study_table(items: Sequence[tuple]) -> Table:
    """The study's description as (what, value) rows."""
    cells = [[k, v] for k, v in items]
    return Table("study", "What was run", ["", "value"], cells, "", [{"item": k, "value": v} for k, v in items],
                 ["item", "value"], text=True)


def decisions_table(decisions: Sequence[dict]) -> Table:
    """Every per-pair winner decision (the rows behind the winner counts)."""
    columns = ["arch", "budget", "source", "target", "winner", "runner_up", "gap_winner", "gap_runner_up", "p_value",
               "significant", "n_cases"]
    cells = [[d["arch"], d["budget"], d["source"], d["target"], d["winner"], d["runner_up"], _num(d["gap_winner"]),
              _num(d["gap_runner_up"]), _num(d["p_value"], 4), "yes" if d["significant"] else "no", d["n_cases"]]
             for d in decisions]
    return Table("winner_decisions", "Winner per pair and budget", columns, cells, "", list(decisions), columns)


def spottune_table(rows: Sequence[dict]) -> Table:
    """The SpotTUnet paper's tests per budget: one-sided Wilcoxon, then TOST where Wilcoxon is not significant."""
    columns = ["arch", "budget", "n pairs", "candidate mean", "best competitor", "competitor mean", "Wilcoxon p",
               "TOST p", "TOST margin"]
    cells = [[r["arch"], r["budget"], r["n_pairs"], _num(r["mean_candidate"]), r["best"], _num(r["mean_best"]),
              _num(r["wilcoxon_p"], 4), _num(r["tost_p"], 4) if math.isfinite(r["tost_p"]) else "–",
              _num(r["margin"], 4)] for r in rows]
    cand = rows[0]["candidate"] if rows else "spottune"
    alpha = rows[0]["alpha"] if rows else 0.05
    caption = (f"{cand} against the better (higher mean) of the competitors, per-pair mean scores: one-sided "
               f"Wilcoxon signed-rank ({cand} greater); where p >= {alpha:g}, TOST equivalence (Schuirmann 1987, "
               "pooled variance) with margin +-0.25 x mean sd.")
    return Table("spottune_tests", "SpotTUnet against the best fixed-layer fine-tuning", columns, cells, caption,
                 list(rows), ["arch", "budget", "budget_scans", "candidate", "best", "n_pairs", "mean_candidate",
                              "mean_best", "wilcoxon_p", "tost_p", "margin", "alpha"])
