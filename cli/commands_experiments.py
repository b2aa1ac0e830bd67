"""CLI verbs that run experiments: train, adapt, predict, demo. Each parses options and calls one library function."""
import click

from fewshot_da_cli import options
from fewshot_da_cli.errors import one_line_errors


def describe_adaptation(strategy: str, options, budget: str) -> str:
    """'first layers, 1 labelled scan', 'spottune (lam 0.005), 1/8 of a scan', "no adaptation (the source model as
    is), no labels": one phrase for the adapt line."""
    options = {k: v for k, v in (options or {}).items() if v not in (None, "")}
    if strategy == "none":
        what = "no adaptation (the source model as is)"
    elif strategy == "freeze":
        what = f"{options.pop('layers', 'first')} layers"
    else:
        what = strategy
    if options:
        what += " (" + ", ".join(f"{k} {v}" for k, v in sorted(options.items())) + ")"
    if not budget:
        amount = "no labels"
    elif "/" in str(budget):
        amount = f"{budget} of a scan"
    else:
        amount = f"{budget} labelled scan{'s' if str(budget) != '1' else ''}"
    return f"{what}, {amount}"


def _print_summary(summary):
    mean = summary.get("mean")
    if mean:
        click.echo("  ".join(f"{k}={v:.4f}" for k, v in sorted(mean.items()) if v is not None))
    empty = (summary.get("aggregate") or {}).get("empty_gt") or {}
    if empty.get("n"):
        click.echo(f"{empty['n']} case(s) with an empty mask scored apart: false-positive rate "
                   f"{empty['false_positive_rate']:.2f}")


@click.command()
@click.option("--data", "manifest", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Manifest CSV (fewshot-da data index).")
@click.option("--splits", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Split JSON (fewshot-da data split).")
@click.option("--source", required=True, help="Source domain: trains on its one2all train scans, scores its val scans.")
@click.option("--arch", default="dart20", show_default=True, help="dart20, dsa, vanilla or classic.")
@click.option("--base-filters", type=int, default=None,
              help="Filters of the first block (default: the paper's width; classic: 64).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Run folder (resumes if interrupted).")
@click.option("--preprocess", default="paper", show_default=True, help="Preprocessing preset: paper or dart20-code.")
@options.spacing_mm
@options.resize
@click.option("--reorient-ras", is_flag=True, default=None, help="Reorient scans to RAS before slicing (default off).")
@click.option("--cache", type=click.Path(file_okay=False), default=None,
              help="Preprocessing cache folder (default: cache/ beside the manifest).")
@options.training
@one_line_errors
def train(manifest, splits, source, arch, out, preprocess, spacing_mm, resize, reorient_ras, cache, config, preset,
          num_threads, tolerances, quiet, wait, **kwargs):
    """Train a 2D U-Net from scratch on one source domain."""
    options.note_busy_cores(num_threads)
    from fewshot_da.data.preprocess import preprocess_options
    from fewshot_da.experiments.stages import train as train_run

    prep = preprocess_options(preprocess, target_spacing_mm=spacing_mm or None, reorient_ras=reorient_ras,
                              resize=resize)
    summary = train_run(manifest=manifest, splits=splits, source=source, arch=arch, out=out, preset=preset or "paper",
                        preprocess=prep, cache=cache, config=config, overrides=options.training_overrides(kwargs),
                        tolerances_mm=tolerances, num_threads=num_threads, progress=options.show_progress(quiet),
                        wait=wait)
    click.echo(f"trained {arch} on {source}: {out}")
    _print_summary(summary)


@click.command()
@click.option("--model", required=True, type=click.Path(exists=True, file_okay=False),
              help="Source run folder (the --out of fewshot-da train).")
@click.option("--target", required=True, help="Target domain of the split file.")
@click.option("--strategy", default="freeze", show_default=True,
              help="freeze (train --layers), gradual, auto-rgn, spottune, adabn, histogram or none (the baseline).")
@click.option("--layers", default=None,
              help="freeze: first (default), last, all, contracting, expanding, bn, regex:PATTERN or module paths.")
@click.option("--order", type=click.Choice(["shallow-deep", "deep-shallow"]), default=None,
              help="gradual: the order blocks are unfrozen in (default shallow-deep).")
@click.option("--unfreeze-every", type=int, default=None, help="gradual: add one block every E epochs (default 1).")
@click.option("--blocks-trained", type=int, default=None,
              help="gradual: train the K first blocks of --order for the whole run (the paper's Fig. 4 series).")
@click.option("--lam", type=float, default=None,
              help="spottune: weight of the fine-tuned-fraction penalty (default: the paper's lambda for the budget).")
@click.option("--temperature", type=float, default=None, help="spottune: Gumbel-softmax temperature (default 0.1).")
@click.option("--unit-map", type=click.Choice(["reference", "own"]), default=None,
              help="spottune: the final BN shares shortcut0's decision (reference, default) or has its own.")
@click.option("--scans", type=int, default=None,
              help="Number of target fine-tune scans or images (nested 1 < 2 < 3 ...; default 1, or the whole "
                   "training part of a --fold).")
@click.option("--slices", default=None, help="Slice budget 1/k: every k-th slice {0, k, 2k, ...} of the fine-tune scans.")
@click.option("--finetune-ids", default=None, help="Comma-separated fine-tune ids (recorded); test = the target's others.")
@click.option("--folds", type=int, default=None, help="K-fold CV over the target's scans: fine-tune on K-1 folds.")
@click.option("--fold", type=int, default=None, help="Which fold is the test fold (0-based, with --folds).")
@click.option("--bn-stats", type=click.Choice(["update", "freeze"]), default=None,
              help="BatchNorm running statistics of frozen layers: update (reference, default) or freeze.")
@click.option("--no-eval", is_flag=True, help="Skip scoring the pair's test scans.")
@click.option("--save-predictions", is_flag=True, help="Write the test predictions to --out/predictions/.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Run folder (resumes if interrupted).")
@options.training
@one_line_errors
def adapt(model, target, strategy, layers, order, unfreeze_every, blocks_trained, lam, temperature, unit_map,
          scans, slices, finetune_ids,
          folds, fold, bn_stats, no_eval, save_predictions, out, config, preset, num_threads, tolerances, quiet,
          wait, **kwargs):
    """Adapt a source model to a target domain with a strategy; score the target's other scans."""
    options.note_busy_cores(num_threads)
    from fewshot_da.experiments.stages import adapt as adapt_run

    overrides = options.training_overrides(kwargs)
    if bn_stats:
        overrides["bn_stats"] = bn_stats
    strategy_options = {"layers": layers, "order": order, "unfreeze_every": unfreeze_every,
                        "blocks_trained": blocks_trained, "lam": lam, "temperature": temperature,
                        "unit_map": unit_map}
    if scans is None and folds is None:
        scans = 1
    ids = [i.strip() for i in finetune_ids.split(",") if i.strip()] if finetune_ids else None
    summary = adapt_run(model=model, target=target, out=out, strategy=strategy, strategy_options=strategy_options,
                        scans=scans, slices=slices, finetune_ids=ids, folds=folds, fold=fold, preset=preset,
                        config=config, overrides=overrides, tolerances_mm=tolerances, evaluate=not no_eval,
                        save_predictions=save_predictions, num_threads=num_threads,
                        progress=options.show_progress(quiet), wait=wait)
    spec = summary["spec"]
    click.echo(f"adapted to {target}: {describe_adaptation(strategy, spec.get('options'), spec.get('budget'))}; {out}")
    _print_summary(summary)


@click.command()
@click.option("--model", required=True, type=click.Path(exists=True, file_okay=False), help="A train or adapt run folder.")
@click.option("--data", "manifest", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Manifest CSV (default: the run's).")
@click.option("--ids", default="test", show_default=True,
              help="test (the run's test scans), val, all, a domain name, or comma-separated ids.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output folder (predictions/, scores.csv).")
@click.option("--original-grid", is_flag=True, help="Resample masks back onto each input's grid (default: preprocessed grid).")
@click.option("--batch-size", type=int, default=None, help="Slices per forward pass (default: 32 on a GPU, 2 on a CPU).")
@options.tolerance
@options.num_threads
@options.quiet
@one_line_errors
def predict(model, manifest, ids, out, original_grid, batch_size, tolerances, num_threads, quiet):
    """Predict whole volumes (batched slices), write NIfTI masks and score them where masks exist."""
    options.note_busy_cores(num_threads)
    from fewshot_da.experiments.stages import predict as predict_run

    summary = predict_run(model=model, manifest=manifest, ids=ids, out=out, tolerances_mm=tolerances,
                          original_grid=original_grid, batch_size=batch_size, num_threads=num_threads,
                          progress=options.show_progress(quiet))
    click.echo(f"predicted {len(summary['ids'])} scans into {summary['predictions']}")
    _print_summary(summary)


@click.command()
@click.option("--out", type=click.Path(file_okay=False), default="fewshot-da-demo", show_default=True,
              help="Output folder (data, runs, table.txt, scores.csv, demo.png).")
@click.option("--arch", default="dart20", show_default=True, help="dart20, dsa or vanilla.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the phantoms and the training.")
@click.option("--quick", is_flag=True, help="A seconds-long smoke run (tiny schedules; numbers are not meaningful).")
@options.num_threads
@options.quiet
@one_line_errors
def demo(out, arch, seed, quick, num_threads, quiet):
    """The main job on built-in synthetic data: train, adapt first/last/all layers, score, report D_R."""
    from fewshot_da.demo import run_demo

    options.note_busy_cores(num_threads)
    run_demo(out, arch=arch, seed=seed, quick=quick, num_threads=num_threads, progress=options.show_progress(quiet),
             log=click.echo)


COMMANDS = [train, adapt, predict, demo]
