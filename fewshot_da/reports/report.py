"""`fewshot-da report`: a study's tables, statistics, figures and one static index.html from results.csv."""
from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

from ..atomic import write_csv_atomic, write_text_atomic
from ..errors import InputError
from ..experiments.results import ID_COLUMNS, budget_scans, read_results, write_results
from ..metrics.scoring import surface_dice_key
from . import plots, stats, tables
from .collect import collect_hand_runs
from .gap import pair_gaps, run_gaps
from .html import Section, render_page
from .policy import find_policy_files, policy_matrix, read_policy_csv
from .validate import validate_results_file

RESULTS = "results.csv"


def _load_rows(paths: Sequence, out: Path, baseline: Sequence, oracle: Sequence) -> tuple:
    """(rows, notes, grid_dir): a grid folder's (or a results CSV's) rows, or hand-made run folders collected
    into out/results.csv."""
    paths = [Path(p) for p in paths]
    if not paths and not baseline and not oracle:
        raise InputError("report: give a grid folder with results.csv, a results CSV, or run folders")
    grid = [p for p in paths if (p / RESULTS).is_file() or (p.is_file() and p.suffix == ".csv")]
    if grid:
        if len(paths) > 1 or baseline or oracle:
            raise InputError(f"{grid[0]}: a grid folder (results.csv) is reported alone; --baseline/--oracle and "
                             "more paths are for run folders made by hand")
        results = grid[0] if grid[0].is_file() else grid[0] / RESULTS
        rows = read_results(results)
        if not rows:
            raise InputError(f"{results}: no result rows yet")
        missing = [c for c in ID_COLUMNS if c not in rows[0]]
        if missing:
            raise InputError(f"{results}: not a results table (no column {missing[0]!r})")
        validate_results_file(results)
        return rows, [], (grid[0] if grid[0].is_dir() else grid[0].parent)
    for p in list(paths) + list(baseline) + list(oracle):
        if not Path(p).is_dir():
            raise InputError(f"{p}: not a grid folder (with {RESULTS}) nor a run folder")
    rows, notes = collect_hand_runs(paths, baseline=baseline, oracle=oracle)
    if not rows:
        raise InputError(f"report: no results rows in {', '.join(str(p) for p in paths)} ({'; '.join(notes)})")
    write_results(out / RESULTS, rows)
    return read_results(out / RESULTS), notes, None


def _fixed_layer_methods(gaps) -> list:
    """Methods of strategy 'freeze' (first, last, all, ...) in alphabetical order (All, First, Last as the paper)."""
    return sorted({g.method for g in gaps if g.strategy == "freeze"})


def write_report(paths: Sequence, out, *, tolerance_mm: float = 1.0, alpha: float = 0.1, baseline: Sequence = (),
                 oracle: Sequence = (), policy: Sequence = (), ci: str = "t", spottune_alpha: float = 0.05) -> dict:
    """Write a study report into `out` and return {name: path} of what it wrote.

    `paths`: one grid folder holding results.csv (or a results CSV), or run folders made by hand (collected into
    out/results.csv first; `baseline` / `oracle` label folders as such). Scores are surface Dice at
    `tolerance_mm`; winners use the sign test at `alpha`; D_R intervals are `ci` ('t' or 'bootstrap', 95%).
    `policy`: extra SpotTUnet policy CSVs (unit, budget, fraction_finetuned); a grid folder's per-run
    policy_test.csv files are found by themselves.

    Files (each written atomically; a part without data is left out and the page says why): results.csv (run
    folders only), transfer_matrix.{csv,md} + transfer_heatmap.png, gap_by_budget.{csv,md} + gap_vs_budget.png,
    winners.{csv,md} + winner_decisions.{csv,md} + winners.png, score_by_budget.{csv,md},
    spottune_tests.{csv,md} (with spottune rows), policy_fractions.csv + policy_map.png (with policy CSVs),
    index.html (all of them, relative links, no scripts) and report.md.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows, notes, grid_dir = _load_rows(paths, out, baseline, oracle)
    metric = surface_dice_key(tolerance_mm)
    if metric not in rows[0]:
        have = [c for c in rows[0] if c.startswith("surface_dice_")]
        raise InputError(f"--tolerance {tolerance_mm:g}: results have no {metric} column (have {have or 'none'})")
    written = {"results": out / RESULTS} if grid_dir is None else {}
    sections = []
    multi_arch = len({r["arch"] for r in rows}) > 1

    def put(table, section):
        csv_path, md_path = tables.write_table(table, out)
        written[table.name] = csv_path
        written[table.name + "_md"] = md_path
        section.tables.append(table)
        section.files += [csv_path.name, md_path.name]
        return table

    # transfer matrix
    matrix = tables.transfer_matrix(rows, metric)
    if matrix.sources:
        section = Section("Transfer matrix", "Source models scored on each target without adaptation, and the "
                                             "oracle on the diagonal.")
        put(tables.transfer_table(matrix, metric), section)
        written["transfer_heatmap"] = plots.heatmap(
            matrix.mean, matrix.sources, matrix.targets, out / "transfer_heatmap.png", cmap="viridis", vmin=0.0,
            vmax=1.0, title=f"{metric}: sources x targets (diagonal: oracle)", colorbar_label=metric,
            xlabel="target", ylabel="source")
        section.images.append(("transfer_heatmap.png", "transfer heat map"))
        sections.append(section)
    else:
        notes.append("no baseline or oracle rows: no transfer matrix and no D_R")

    # D_R
    gaps = run_gaps(rows, metric)
    dropped = sum(g.n_dropped for g in gaps)
    if dropped:
        notes.append(f"{dropped} adapted-run case scores have no baseline or oracle score of the same case (or a "
                     "NaN) and are left out of D_R")
    series = tables.series_label(multi_arch)
    scored = [g for g in gaps if g.cases]
    if scored:
        summary = stats.gap_by_budget(scored, ci=ci)
        pairs = pair_gaps(scored)
        section = Section("Gap closed (D_R) against budget",
                          "D_R = (D - D_B) / (D_O - D_B) per pair on the same scans: 0 is the source model, 1 the "
                          "oracle.")
        put(tables.gap_budget_table(summary, multi_arch), section)
        points = [{"arch": p.arch, "method": p.method, "source": p.source, "target": p.target,
                   "budget_scans": budget_scans(p.budget), "gap": p.gap} for p in pairs]
        colors = plots.palette(sorted({series(r) for r in summary}))
        written["gap_vs_budget"] = plots.plot_gap_vs_budget(summary, points, out / "gap_vs_budget.png",
                                                            series=series, colors=colors)
        section.images.insert(0, ("gap_vs_budget.png", "D_R against budget"))
        sections.append(section)

        methods = _fixed_layer_methods(scored)
        counts, decisions = [], []
        for arch in sorted({p.arch for p in pairs}):
            c, d = stats.winners([p for p in pairs if p.arch == arch], methods, alpha=alpha)
            counts += c
            decisions += d
        if counts:
            section = Section("Winners per budget", f"Among the fixed-layer strategies {', '.join(methods)}.")
            put(tables.winner_table(counts, multi_arch), section)
            put(tables.decisions_table(decisions), section)
            written["winners_plot"] = plots.plot_winners(counts, out / "winners.png", series=series,
                                                           colors=colors)
            section.images.insert(0, ("winners.png", "winner bars"))
            sections.append(section)
    elif any(r["strategy"] not in ("baseline", "oracle") for r in rows):
        notes.append("adapted runs have no case with both a baseline and an oracle score: no D_R")

    # scores by budget and the SpotTUnet tests
    scores = stats.pair_scores(rows, metric)
    if scores:
        section = Section(f"Mean {metric} against budget")
        put(tables.score_budget_table(stats.score_by_budget(scores), metric, multi_arch), section)
        tests = stats.spottune_tests(scores, alpha=spottune_alpha)
        if tests:
            put(tables.spottune_table(tests), section)
        sections.append(section)

    # SpotTUnet policy map
    policy_rows = []
    for p in policy:
        policy_rows += read_policy_csv(p)
    search = [grid_dir] if grid_dir is not None else [Path(p) for p in list(paths) + list(baseline) + list(oracle)]
    for folder in search:
        for path, budget in find_policy_files(folder, rows):
            try:
                policy_rows += read_policy_csv(path, budget)
            except InputError as exc:
                notes.append(f"{exc}; left out of the policy map")
    if policy_rows:
        units, budgets, fractions = policy_matrix(policy_rows)
        written["policy_map"] = plots.plot_policy_map(fractions, units, budgets, out / "policy_map.png")
        table_rows = [{"unit": u, "budget": b, "fraction_finetuned": float(fractions[i, j])}
                      for i, u in enumerate(units) for j, b in enumerate(budgets) if math.isfinite(fractions[i, j])]
        written["policy_fractions"] = write_csv_atomic(out / "policy_fractions.csv", table_rows,
                                                              ["unit", "budget", "fraction_finetuned"])
        sections.append(Section("SpotTUnet policy", "Fraction of test slices that use the fine-tuned copy of each "
                                "unit, mean over runs.", images=[("policy_map.png", "SpotTUnet policy map")],
                                files=["policy_fractions.csv"]))

    runs = len({r["run"] for r in rows})
    intro = (f"{len(rows)} case scores of {runs} runs; score {metric}; winners: sign test p < {alpha:g}; "
             f"D_R intervals: {'Student-t' if ci == 't' else 'bootstrap'} 95%.")
    source = out / RESULTS if grid_dir is None else (grid_dir / RESULTS if grid_dir.joinpath(RESULTS).is_file()
                                                      else Path(paths[0]))
    sections.append(Section("Data", files=[os.path.relpath(source, out)]))
    written["index"] = write_text_atomic(out / "index.html", render_page("fewshot-da study report", sections,
                                                                        notes, intro))
    markdown = [f"# fewshot-da study report\n\n{intro}\n"] + [f"- {n}" for n in notes]
    for section in sections:
        markdown.append(f"\n## {section.title}\n")
        markdown += [f"![{alt}]({src})\n" for src, alt in section.images]
        markdown += [t.markdown() for t in section.tables]
    written["report_md"] = write_text_atomic(out / "report.md", "\n".join(markdown) + "\n")
    return written
