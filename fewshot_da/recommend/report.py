"""recommend's human-readable outputs: report.md and the learning-curve figure, from the result dict."""
from __future__ import annotations

import math

import numpy as np


def _fmt(value, digits: int = 3) -> str:
    return "n/a" if value is None or (isinstance(value, float) and not math.isfinite(value)) else f"{value:.{digits}f}"


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
    lines = [f"# Recommendation for {result['domain']} ({len(result['ids'])} labelled {unit}s)", "",
             f"**Fine-tune with `{choice['strategy']}`** — confidence {choice['confidence']} "
             f"(P(best) {choice['p_best']:.2f} over fold resamples"]
    if choice["margin"]:
        m = choice["margin"]
        lines[-1] += (f"; margin over {choice['runner_up']} {_fmt(m['mean'])} "
                      f"[{_fmt(m['low'])}, {_fmt(m['high'])}]")
    lines[-1] += ")."
    if choice["tied_with"]:
        lines.append(f"Statistically tied with it (paired 95% interval of the margin contains 0): "
                     f"{', '.join(choice['tied_with'])}.")
    sched = result["schedule"]
    lines += ["", f"Validation: {len(result['folds'])} folds ({', '.join(f['name'] for f in result['folds'])}), "
              f"seeds {result['seeds']}, {sched['epochs']} x {sched['iters_per_epoch']} steps of batch "
              f"{sched['batch_size']} per fine-tune; metric {result['metric']} on held-out labelled "
              f"{'images' if unit == 'image' else 'slices'}.", "",
              f"| rank | strategy | mean {result['metric']} | 95% CI | P(best) | folds beating the top |",
              "|---|---|---|---|---|---|"]
    for r in result["ranking"]:
        won = "" if r["folds_won_vs_best"] is None else f"{r['folds_won_vs_best']}/{r['n_folds']}"
        lines.append(f"| {r['rank']} | {r['candidate']} | {_fmt(r['mean'])} | [{_fmt(r['low'])}, {_fmt(r['high'])}] "
                     f"| {r['p_best']:.2f} | {won} |")
    lc = result["learning_curve"]
    if lc:
        lines += ["", f"## Learning curve ({lc['strategy']})", "",
                  f"Fit: {lc['curve']['kind']} (a={_fmt(lc['curve']['a'])}, b={_fmt(lc['curve']['b'])}, "
                  f"c={_fmt(lc['curve']['c'])}) on {len(lc['points'])} validation points; x = labelled slices "
                  f"({lc['slices_per_scan']:.1f} per {unit} as labelled here).", "",
                  f"| labelled {unit}s | forecast | 95% band | within measured sizes |", "|---|---|---|---|"]
        for r in lc["table"]:
            lines.append(f"| {r['labelled_scans']} | {_fmt(r['forecast'])} | [{_fmt(r['low'])}, {_fmt(r['high'])}] "
                         f"| {'yes' if r['measured_range'] else 'extrapolated'} |")
        t = lc.get("target")
        if t:
            if t["reachable"]:
                lines += ["", f"To reach {t['score']:g}: about {t['scans_needed']} labelled {unit}s "
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
