"""`fewshot-da report`: a study's tables, statistics, figures and one static index.html from results.csv."""
from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..atomic import write_csv_atomic, write_text_atomic
from ..errors import InputError
from ..data.budgets import budget_scans
from ..experiments.results import ID_COLUMNS, read_results, write_results
from ..metrics.scoring import surface_dice_key
from .. import figures
from . import stats, tables
from .budget_check import MIN_FOREGROUND_SLICES, degenerate_budgets, degenerate_runs
from .collect import collect_hand_runs
from .examples import example_panels
from .gap import BASELINE, ORACLE, method_label, pair_denominators, pair_gaps, run_gaps
from .html import Section, render_page
from .policy import find_policy_files, policy_matrix, read_policy_csv
from .study import describe_study
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


MIN_GAP = 0.02  # pairs with D_O - D_B below this are left out of D_R (it divides by almost nothing)
DR_AXIS = (-1.0, 2.0)  # the D_R figure's axis; values beyond are drawn at its edge
N_EXAMPLES = 2  # test slices in the example segmentations


def _method_order(method: str) -> tuple:
    """Score-table columns: the unadapted baselines first, the oracle last, the methods between (alphabetical)."""
    rank = {BASELINE: 0, "baseline-aug": 1, ORACLE: 3}
    return rank.get(method, 2), method


def gap_figure_data(summary: Sequence[dict], pairs: Sequence, limits=DR_AXIS) -> tuple:
    """(summary rows, pair points, n clipped) for the D_R figure: means, CI bounds and pair D_R clipped to the
    axis `limits`, so one pair with a tiny D_O - D_B cannot flatten the others; n counts the clipped values."""
    def clip(v):
        return min(max(v, limits[0]), limits[1]) if math.isfinite(v) else v

    points = [{"arch": p.arch, "method": p.method, "source": p.source, "target": p.target,
               "budget_scans": budget_scans(p.budget), "gap": clip(p.gap)} for p in pairs]
    beyond = sum(1 for p in pairs if math.isfinite(p.gap) and clip(p.gap) != p.gap)
    beyond += sum(1 for r in summary for k in ("mean", "ci_low", "ci_high")
                  if math.isfinite(r[k]) and clip(r[k]) != r[k])
    shown = [dict(r, **{k: clip(r[k]) for k in ("mean", "ci_low", "ci_high")}) for r in summary]
    return shown, points, beyond


def _run_folders(grid_dir, paths, baseline, oracle) -> dict:
    """{results run name: its folder}: a grid's runs/<run id>, or hand-made folders by name (and parent/name)."""
    if grid_dir is not None:
        return _GridFolders(Path(grid_dir))
    folders = {}
    for p in list(paths) + list(baseline) + list(oracle):
        p = Path(p)
        folders.setdefault(p.name, p)
        folders[f"{p.resolve().parent.name}/{p.name}"] = p
    return folders


class _GridFolders:
    """Run id -> its folder under a grid's runs/ (None when absent), with a dict's `get`."""

    def __init__(self, grid_dir: Path):
        self.grid_dir = grid_dir

    def get(self, key, default=None):
        folder = self.grid_dir / "runs" / str(key)
        return folder if folder.is_dir() else default


def _grid_specs(grid_dir) -> dict:
    import json

    try:
        specs = json.loads((Path(grid_dir) / "grid.json").read_text())["specs"]
        return {s["run_id"]: s for s in specs}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def write_report(paths: Sequence, out, *, tolerance_mm: float = 1.0, alpha: float = 0.1, baseline: Sequence = (),
                 oracle: Sequence = (), policy: Sequence = (), ci: str = "t", spottune_alpha: float = 0.05,
                 min_gap: float = MIN_GAP, examples: bool = True) -> dict:
    """Write a study report into `out` and return {name: path} of what it wrote.

    `paths`: one grid folder holding results.csv (or a results CSV), or run folders made by hand (collected into
    out/results.csv first; `baseline` / `oracle` label folders as such). Scores are surface Dice at
    `tolerance_mm`; winners use the sign test at `alpha`; D_R intervals are `ci` ('t' or 'bootstrap', 95%).
    Pairs whose oracle-baseline gap D_O - D_B is below `min_gap` are left out of D_R and the winners and listed
    apart. `policy`: extra SpotTUnet policy CSVs (unit, budget, fraction_finetuned); a grid folder's per-run
    policy_test.csv files are found by themselves. `examples`: draw example segmentations with the runs' models.

    Files (each written atomically; a part without data is left out and the page says why): results.csv (run
    folders only), study.csv, transfer_matrix.{csv,md} + transfer_heatmap.png, score_by_budget.{csv,md} (with the
    baseline and the oracle) + scan_scores.png, gap_by_budget.{csv,md} + gap_vs_budget.png, low_gap_pairs.{csv,md}
    (with such pairs), winners.{csv,md} + winner_decisions.{csv,md} + winners.png, spottune_tests.{csv,md} (with
    spottune rows), degenerate_budgets.{csv,md} (a grid with such budgets), examples.png, policy_fractions.csv +
    policy_map.png (with policy CSVs), index.html (all of them, relative links, no scripts) and report.md.
    """
    if not (math.isfinite(min_gap) and min_gap >= 0):
        raise InputError(f"--min-gap {min_gap:g}: give a score difference >= 0 (e.g. 0.02)")
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
    series = tables.series_label(multi_arch)

    def put(table, section):
        csv_path, md_path = tables.write_table(table, out)
        written[table.name] = csv_path
        written[table.name + "_md"] = md_path
        section.tables.append(table)
        section.files += [csv_path.name, md_path.name]
        return table

    # what was run
    section = Section("Study", "The plan, data, schedules, seeds and runs behind this report.")
    put(tables.study_table(describe_study(grid_dir, rows)), section)
    sections.append(section)

    # transfer matrix
    matrix = tables.transfer_matrix(rows, metric)
    if matrix.sources:
        section = Section("Transfer matrix", "Source models scored on each target without adaptation, and the "
                                             "oracle on the diagonal.")
        put(tables.transfer_table(matrix, metric), section)
        written["transfer_heatmap"] = figures.heatmap(
            matrix.mean, matrix.sources, matrix.targets, out / "transfer_heatmap.png", cmap="viridis", vmin=0.0,
            vmax=1.0, title=f"{metric}: sources x targets (diagonal: oracle)", colorbar_label=metric,
            xlabel="target", ylabel="source")
        section.images.append(("transfer_heatmap.png", "transfer heat map"))
        sections.append(section)
    else:
        notes.append("no baseline or oracle rows: no transfer matrix and no D_R")

    # degenerate budgets (a grid's fine-tune slices with almost no foreground)
    degenerate = []
    try:
        degenerate = degenerate_budgets(grid_dir) if grid_dir is not None else degenerate_runs(paths)
    except (InputError, OSError, KeyError) as exc:
        notes.append(f"budget check skipped: {str(exc).splitlines()[0]}")
    degenerate_labels = {d["budget"] for d in degenerate}
    for d in degenerate:
        fold = "" if d["fold"] is None else f" (fold {d['fold']})"
        notes.append(f"degenerate budget {d['budget']} on {d['target']}{fold}: its fine-tune slices hold "
                     f"{d['n_foreground']} slice(s) with foreground (of {d['n_slices']}); its scores and D_R say "
                     "little about the methods")

    # scores by budget, beside the unadapted source model and the oracle; the SpotTUnet tests
    scores = stats.pair_scores(rows, metric)
    colors = figures.palette([BASELINE, "baseline-aug"] + sorted({m for _, m, _ in scores}) + [ORACLE])
    if scores:
        section = Section("Scores against budget", "Did adapting beat doing nothing? Each budget's row puts the "
                          "methods beside the unadapted source model (baseline) and the oracle on the same scans."
                          + (f" Degenerate budgets (see the notes): {', '.join(sorted(degenerate_labels))}."
                             if degenerate_labels else ""))
        summary = stats.score_by_budget({**scores, **stats.reference_scores(rows, metric)})
        summary.sort(key=lambda r: (r["arch"], _method_order(r["method"]), r["budget_scans"]))
        put(_mark_degenerate(tables.score_budget_table(summary, metric, multi_arch), degenerate), section)
        groups = _scan_groups(rows, metric, series)
        if groups:
            written["scan_scores"] = figures.plot_scan_scores(
                groups, out / "scan_scores.png",
                colors=colors if not multi_arch else figures.palette(list(dict.fromkeys(g[1] for g in groups))),
                y_label=metric, title=f"{metric} per test scan (box: quartiles; dots: scans, seeds averaged)")
            section.images.append(("scan_scores.png", "per-scan scores by method and budget"))
        tests = stats.spottune_tests(scores, alpha=spottune_alpha)
        if tests:
            put(tables.spottune_table(tests), section)
        sections.append(section)

    # D_R, without the pairs whose oracle-baseline gap is too small to divide by
    gaps = run_gaps(rows, metric)
    dropped = sum(g.n_dropped for g in gaps)
    if dropped:
        notes.append(f"{dropped} adapted-run case scores have no baseline or oracle score of the same case (or a "
                     "NaN) and are left out of D_R")
    low = [d for d in pair_denominators(rows, metric) if math.isfinite(d["gap"]) and d["gap"] < min_gap]
    low_keys = {(d["arch"], d["source"], d["target"]) for d in low}
    scored = [g for g in gaps if g.cases and (g.arch, g.source, g.target) not in low_keys]
    if scored:
        summary = stats.gap_by_budget(scored, ci=ci)
        pairs = pair_gaps(scored)
        section = Section("Gap closed (D_R) against budget",
                          "D_R = (D - D_B) / (D_O - D_B) per pair on the same scans: 0 is the source model, 1 the "
                          f"oracle. Pairs with D_O - D_B < {min_gap:g} are left out (listed below).")
        put(_mark_degenerate(tables.gap_budget_table(summary, multi_arch), degenerate), section)
        shown, points, beyond = gap_figure_data(summary, pairs)
        title = "D_R against budget (mean, 95% CI; faint: single pairs)"
        if beyond:
            title += f"\n{beyond} value(s) beyond [{DR_AXIS[0]:g}, {DR_AXIS[1]:g}] drawn at the edge"
        written["gap_vs_budget"] = figures.plot_gap_vs_budget(shown, points, out / "gap_vs_budget.png", title=title,
                                                            series=series, colors=colors if not multi_arch else None)
        section.images.insert(0, ("gap_vs_budget.png", "D_R against budget"))
        sections.append(section)
    if low:
        by_pair = {}
        for g in gaps:
            if (g.arch, g.source, g.target) in low_keys and math.isfinite(g.gap):
                by_pair.setdefault((g.arch, g.source, g.target), []).append(g.gap)
        flagged = [dict(d, n_runs=len(by_pair.get(k, [])), dr_min=min(by_pair.get(k, [math.nan])),
                        dr_max=max(by_pair.get(k, [math.nan])))
                   for d, k in ((d, (d["arch"], d["source"], d["target"])) for d in low)]
        if not scored:
            section = Section("Gap closed (D_R) against budget", "Every pair's oracle-baseline gap is too small for "
                              "D_R; compare the scores instead.")
            sections.append(section)
        put(tables.flagged_pairs_table(flagged, min_gap, metric), section)
        notes.append(f"{len(low)} pair(s) with D_O - D_B < {min_gap:g} left out of D_R and the winners: "
                     + ", ".join(f"{d['source']} -> {d['target']} ({d['gap']:.3f})" for d in low))
    if scored:
        methods = _fixed_layer_methods(scored)
        counts, decisions = [], []
        for arch in sorted({p.arch for p in pairs}):
            c, d = stats.winners([p for p in pairs if p.arch == arch], methods, alpha=alpha)
            counts += c
            decisions += d
        if counts:
            none = sum(1 for d in decisions if d["winner"] == stats.NO_WINNER)
            text = f"Among the fixed-layer strategies {', '.join(methods)}."
            if none == len(decisions):
                text += " No winner: in every pair and budget, every candidate is below the baseline (D_R <= 0)."
            elif none:
                text += (f" No winner in {none} of {len(decisions)} pair-budgets: every candidate there is below "
                         "the baseline (D_R <= 0).")
            section = Section("Winners per budget", text)
            put(tables.winner_table(counts, multi_arch), section)
            put(tables.decisions_table(decisions), section)
            written["winners_plot"] = figures.plot_winners(counts, out / "winners.png", series=series,
                                                           colors=colors if not multi_arch else None)
            section.images.insert(0, ("winners.png", "winner bars"))
            sections.append(section)
    elif not low and any(r["strategy"] not in ("baseline", "oracle") for r in rows):
        notes.append("adapted runs have no case with both a baseline and an oracle score: no D_R")

    if degenerate:
        section = Section("Degenerate budgets", "Budgets whose labelled fine-tune slices show almost no "
                          "foreground (computed from the grid's splits and cached masks).")
        put(tables.degenerate_budget_table(degenerate, MIN_FOREGROUND_SLICES), section)
        sections.append(section)

    # example segmentations
    if examples:
        try:
            panels, note = example_panels(rows, _run_folders(grid_dir, paths, baseline, oracle),
                                          _grid_specs(grid_dir) if grid_dir is not None else {}, metric, N_EXAMPLES)
        except (InputError, OSError, KeyError, ValueError) as exc:
            panels, note = None, f"example segmentations skipped: {str(exc).splitlines()[0]}"
        if note:
            notes.append(note)
        if panels is not None:
            written["examples"] = figures.plot_examples(*panels, out / "examples.png")
            sections.append(Section("Example segmentations", "Test slices (the slice with the most foreground of "
                                    "each scan) with each method's prediction.",
                                    images=[("examples.png", "example segmentations")]))

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
        written["policy_map"] = figures.plot_policy_map(fractions, units, budgets, out / "policy_map.png")
        table_rows = [{"unit": u, "budget": b, "fraction_finetuned": float(fractions[i, j])}
                      for i, u in enumerate(units) for j, b in enumerate(budgets) if math.isfinite(fractions[i, j])]
        written["policy_fractions"] = write_csv_atomic(out / "policy_fractions.csv", table_rows,
                                                              ["unit", "budget", "fraction_finetuned"])
        sections.append(Section("SpotTUnet policy", "Fraction of test slices that use the fine-tuned copy of each "
                                "unit, mean over runs.", images=[("policy_map.png", "SpotTUnet policy map")],
                                files=["policy_fractions.csv"]))

    runs = len({r["run"] for r in rows})
    intro = (f"{len(rows)} case scores of {runs} runs; score {metric}; winners: sign test p < {alpha:g}; "
             f"D_R intervals: {'Student-t' if ci == 't' else 'bootstrap'} 95%; pairs with D_O - D_B < {min_gap:g} "
             "left out of D_R.")
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


def _mark_degenerate(table, degenerate: Sequence[dict]):
    """The table with each degenerate budget's row label marked '1/4 (degenerate: ge15)' (the CSV unchanged)."""
    targets = {}
    for d in degenerate:
        targets.setdefault(d["budget"], set()).add(str(d["target"]))
    for row in table.cells:
        if row and row[0] in targets:
            row[0] = f"{row[0]} (degenerate: {', '.join(sorted(targets[row[0]]))})"
    return table


def _scan_groups(rows, metric: str, series) -> list:
    """(budget label, series, per-case scores) for the per-scan figure: each case's score averaged over the
    replicates of a (method, budget) on a pair, the baseline and oracle once (no labels / all labels)."""
    cells = {}
    for r in rows:
        if r["strategy"] == BASELINE:
            key = (tables.NO_LABELS, -1.0, series({**r, "method": BASELINE}))
        elif r["strategy"] == ORACLE:
            key = ("oracle (all)", math.inf, series({**r, "method": ORACLE}))
        else:
            key = (r["budget"] or tables.NO_LABELS, budget_scans(r["budget"]) if r["budget"] else -1.0,
                   series({**r, "method": method_label(r["strategy"], r["layers"])}))
        cells.setdefault(key, {}).setdefault((r["source"], r["target"], r["case"]), []).append(float(r[metric]))
    out = []
    for (budget, order, label), cases in sorted(cells.items(), key=lambda kv: (kv[0][1], _method_order(kv[0][2]))):
        values = [float(np.nanmean(v)) if np.isfinite(v).any() else float("nan") for v in cases.values()]
        out.append((budget, label, values))
    return out
