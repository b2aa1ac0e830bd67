"""CLI verb `recommend`: which strategy to fine-tune with, and how much labelled data, for the user's target."""
import click

from fewshot_da_cli import options
from fewshot_da_cli.errors import one_line_errors


@click.command()
@click.option("--model", required=True, type=click.Path(exists=True, file_okay=False),
              help="Source run folder (the --out of fewshot-da train).")
@click.option("--data", "manifest", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Manifest CSV of your labelled target scans (fewshot-da data index).")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Output folder (resumes if interrupted): report.md, recommendation.json, ranking.csv, ...")
@click.option("--domain", default=None, help="The target domain of the manifest (needed if it holds several).")
@click.option("--ids", default=None, help="Comma-separated ids of the labelled scans to use (default: all).")
@click.option("--slices", default=None,
              help="1/k when only every k-th slice {0, k, 2k, ...} of each scan is labelled (default: all).")
@click.option("--strategies", default=",".join(("first", "last", "all", "contracting", "expanding", "gradual",
                                                "spottune", "adabn", "histogram", "none")), show_default=True,
              help="Candidates to validate, comma-separated.")
@click.option("--seeds", default="0", show_default=True, help="Seeds of every validation fine-tune, comma-separated.")
@click.option("--max-folds", type=int, default=5, show_default=True,
              help="Validation folds over scans (leave-one-scan-out up to this many; one scan: 2 halves).")
@click.option("--one-scan-folds", type=click.Choice(["slab", "interleave"]), default="slab", show_default=True,
              help="With one labelled scan, validate on its two contiguous halves (slab; picked the measured "
                   "winner more often on phantoms) or on every other labelled slice against the rest "
                   "(interleave: both halves span the same anatomy).")
@click.option("--metric", default=None,
              help="Validation score: surface_dice_<tol>mm (default for volumes), dice (default for 2D), ari.")
@click.option("--target-score", type=float, default=None,
              help="Also say how many labelled scans would likely reach this score (e.g. 0.9).")
@click.option("--curve-points", type=int, default=4, show_default=True,
              help="Training-set sizes per fold on the learning curve (1: no curve).")
@click.option("--no-shift-map", is_flag=True, help="Skip the label-free shift map.")
@click.option("--cache", type=click.Path(file_okay=False), default=None,
              help="Preprocessing cache (default: cache/ beside the manifest).")
@options.training
@one_line_errors
def recommend(model, manifest, out, domain, ids, slices, strategies, seeds, max_folds, one_scan_folds, metric,
              target_score,
              curve_points, no_shift_map, cache, config, preset, num_threads, tolerances, quiet, wait, **kwargs):
    """Rank fine-tuning strategies on your labelled target scans and forecast the labels you need."""
    from fewshot_da.errors import InputError
    from fewshot_da.recommend.report import action, count, p_best_text
    from fewshot_da.recommend.run import recommend as run_recommend

    options.note_busy_cores(num_threads)
    try:
        seed_list = [int(s) for s in seeds.split(",") if s.strip()]
    except ValueError:
        raise InputError(f"--seeds {seeds!r}: comma-separated integers") from None
    result = run_recommend(model=model, manifest=manifest, out=out, domain=domain,
                           ids=[i.strip() for i in ids.split(",") if i.strip()] if ids else None, slices=slices,
                           strategies=strategies, seeds=seed_list, max_folds=max_folds,
                           one_scan_folds=one_scan_folds, metric=metric,
                           target_score=target_score, curve=curve_points > 1, curve_points=curve_points,
                           shift=not no_shift_map, preset=preset, config=config,
                           overrides=options.training_overrides(kwargs), tolerances_mm=tolerances, cache=cache,
                           num_threads=num_threads, progress=options.show_progress(quiet), wait=wait,
                           log=click.echo)
    choice = result["recommendation"]
    n_folds = choice["n_scored_folds"]
    for row in result["ranking"]:
        nan = f"  ({row['n_nan']} NaN fold{'' if row['n_nan'] == 1 else 's'})" if row["n_nan"] else ""
        click.echo(f"{row['rank']:>2}. {row['candidate']:<12} {row['mean']:.4f} [{row['low']:.4f}, "
                   f"{row['high']:.4f}]  P(best) {p_best_text(row['p_best'], n_folds)}{nan}")
    click.echo(f"recommended: {action(choice['strategy'])} (confidence {choice['confidence']}, "
               f"P(best) {p_best_text(choice['p_best'], n_folds)})")
    lc = result["learning_curve"]
    if lc and lc.get("target"):
        t = lc["target"]
        click.echo(f"to reach {t['score']:g}: " + (f"about {count(t['scans_needed'], result['unit'])} "
                   f"({t['more_scans']} more)" if t["reachable"] else "not reachable on the fitted curve"))
    click.echo(f"wrote {out}/report.md")


COMMANDS = [recommend]
