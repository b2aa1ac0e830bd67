"""recommend's human-readable outputs: report.md and the learning-curve figure, from the result dict."""
from __future__ import annotations

import math

import numpy as np


LABEL_FREE_ACTIONS = {
    "none": "don't fine-tune (use the source model as is)",
    "adabn": "don't fine-tune; re-estimate the batch-norm statistics on your target images (`adabn`)",
    "histogram": "don't fine-tune; match your images' intensity histogram to the source's (`histogram`)",
}
ONE_SCAN_WORDS = {"interleave": "every other labelled slice of the one scan against the rest (interleaved, so "
                                "both halves span the same anatomy)",
                  "slab": "one half of the one scan's labelled slices against the other half in slice order "
                          "(two slabs)"}


def _fmt(value, digits: int = 3) -> str:
    return "n/a" if value is None or (isinstance(value, float) and not math.isfinite(value)) else f"{value:.{digits}f}"


def count(n, unit: str) -> str:
    """'1 labelled scan', '3 labelled scans'."""
    return f"{n} labelled {unit}{'' if n == 1 else 's'}"


def action(strategy: str) -> str:
    """What the user should do, in words: "fine-tune with `last`", "don't fine-tune (use the source model as is)"."""
    return LABEL_FREE_ACTIONS.get(strategy, f"fine-tune with `{strategy}`")


def p_best_text(p, n_folds: int) -> str:
    """'0.73', or 'n/a (2 folds)' where P(best) is not estimated."""
    return f"{p:.2f}" if p is not None else f"n/a ({n_folds} fold{'' if n_folds == 1 else 's'})"


def learning_curve_figure(result: dict, path) -> None:
    from ..figures import plot_learning_curve
    from .learning_curve import Curve

    lc = result["learning_curve"]
    curve = Curve(lc["curve"]["kind"], lc["curve"]["a"], lc["curve"]["b"], lc["curve"]["c"])
    xs = [p["labelled_slices"] for p in lc["points"]] + [r["labelled_slices"] for r in lc["table"]]
    grid = np.geomspace(max(min(xs), 1), max(xs), 60)
    marks = [(lc["total_labelled_slices"], "your labels")]
    target = (lc.get("target") or {}).get("score")
    plot_learning_curve([(p["labelled_slices"], p["score"]) for p in lc["points"]], grid, curve(grid),
                        [(r["labelled_slices"], r["low"], r["high"]) for r in lc["table"]], path, x_marks=marks,
                        target=target, title=f"{lc['strategy']}: validation {result['metric']} against labels",
                        y_label=result["metric"])


def report_markdown(result: dict) -> str:
    """The recommendation, the ranking table, the learning curve and the shift map's top units, as Markdown."""
    choice = result["recommendation"]
    unit = result["unit"]
    n_folds = choice.get("n_scored_folds", len(result["folds"]))
    doing = action(choice["strategy"])
    p_words = ("over fold resamples" if choice["p_best"] is not None
               else "too few folds for a bootstrap")
    lines = [f"# Recommendation for {result['domain']} ({count(len(result['ids']), unit)})", "",
             f"**{doing[0].upper() + doing[1:]}** — confidence {choice['confidence']} "
             f"(P(best) {p_best_text(choice['p_best'], n_folds)} {p_words}"]
    if choice["margin"]:
        m = choice["margin"]
        lines[-1] += (f"; margin over {choice['runner_up']} {_fmt(m['mean'])} "
                      f"[{_fmt(m['low'])}, {_fmt(m['high'])}]")
    lines[-1] += ")."
    if choice["tied_with"]:
        lines.append(f"Statistically tied with it (paired 95% interval of the margin contains 0): "
                     f"{', '.join(choice['tied_with'])}.")
    for note in choice.get("notes") or []:
        lines.append(f"Note: {note}.")
    sched = result["schedule"]
    protocol = ONE_SCAN_WORDS.get(result.get("one_scan_folds"))
    lines += ["", f"Validation: {len(result['folds'])} folds ({', '.join(f['name'] for f in result['folds'])}"
              f"{': ' + protocol if protocol else ''}), "
              f"seeds {result['seeds']}, {sched['epochs']} x {sched['iters_per_epoch']} steps of batch "
              f"{sched['batch_size']} per fine-tune; metric {result['metric']} on held-out labelled "
              f"{'images' if unit == 'image' else 'slices'}.", "",
              f"| rank | strategy | mean {result['metric']} | 95% CI | P(best) | folds beating the top |",
              "|---|---|---|---|---|---|"]
    for r in result["ranking"]:
        won = "" if r["folds_won_vs_best"] is None else f"{r['folds_won_vs_best']}/{r['n_folds']}"
        lines.append(f"| {r['rank']} | {r['candidate']} | {_fmt(r['mean'])} | [{_fmt(r['low'])}, {_fmt(r['high'])}] "
                     f"| {_fmt(r['p_best'], 2)} | {won} |")
    lc = result["learning_curve"]
    if lc:
        lines += ["", f"## Learning curve ({lc['strategy']})", "",
                  f"Fit: {lc['curve']['kind']} (a={_fmt(lc['curve']['a'])}, b={_fmt(lc['curve']['b'])}, "
                  f"c={_fmt(lc['curve']['c'])}) on {len(lc['points'])} validation points; x = labelled slices "
                  f"({lc['slices_per_scan']:.1f} per {unit} as labelled here).", "",
                  f"| labelled {unit}s | forecast | 95% band | within measured sizes |", "|---|---|---|---|"]
        for r in lc["table"]:
            where = "yes" if r["measured_range"] else "extrapolated" + (", band widened" if r.get("band_widened")
                                                                         else "")
            lines.append(f"| {r['labelled_scans']} | {_fmt(r['forecast'])} | [{_fmt(r['low'])}, {_fmt(r['high'])}] "
                         f"| {where} |")
        if lc["curve"].get("at_bound"):
            lines += ["", f"The fit sits at a bound of its parameter(s) {', '.join(lc['curve']['at_bound'])}, so the "
                      "bound, not the data, shapes its extrapolation: beyond the measured sizes the band also covers "
                      "no further gain and continued log-linear growth."]
        t = lc.get("target")
        if t:
            if t["reachable"]:
                lines += ["", f"To reach {t['score']:g}: about {count(t['scans_needed'], unit)} "
                          f"({t['more_scans']} more; fold-bootstrap range {t['scans_interval'][0]}–"
                          f"{t['scans_interval'][1] if t['scans_interval'][1] is not None else 'never'})."]
            else:
                lines += ["", f"{t['score']:g} lies above the curve's asymptote {_fmt(lc['curve']['a'])}: more "
                          f"labels of this kind are unlikely to reach it with {lc['strategy']}."]
    shift = result.get("shift_map")
    if shift:
        ranked = sorted((u for u, r in shift["ranks"].items() if r), key=shift["ranks"].get)
        lines += ["", "## Shift map (label-free)", "", f"Most shifted units: {', '.join(ranked[:5])}. "
                  f"Figure: `{shift['figure']}`."]
    lines += ["", f"Source model: `{result['model']}`; data: `{result['manifest']}`; {result['seconds']:.0f} s."]
    return "\n".join(lines) + "\n"
