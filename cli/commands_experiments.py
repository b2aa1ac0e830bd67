"""CLI verbs that run experiments: train, adapt, predict, demo. Each parses options and calls one library function."""
import sys

import click

from fewshot_da_cli.errors import one_line_errors

_OVERRIDES = [
    click.option("--epochs", type=int, default=None, help="Epochs (default: the preset's)."),
    click.option("--iters-per-epoch", type=int, default=None, help="SGD steps per epoch (default: the preset's)."),
    click.option("--batch-size", type=int, default=None, help="Slices per batch (default: the preset's)."),
    click.option("--lr", type=float, default=None, help="Initial learning rate (default: the preset's)."),
    click.option("--lr-steps", default=None, help="EPOCH:FACTOR[,..], applied after that 0-based epoch, e.g. 80:0.1."),
    click.option("--crop", type=int, default=None, help="Square crop side in pixels (default 256)."),
    click.option("--seed", type=int, default=None, help="Seed of the model init and of the slice sampler (default 0)."),
    click.option("--device", default=None, help="auto (CUDA with AMP when present, else CPU), cpu, cuda, cuda:1."),
    click.option("--config", "config", type=click.Path(exists=True, dir_okay=False), default=None,
                 help="YAML of TrainConfig keys; flags given on the command line override it."),
    click.option("--preset", default=None, help="paper (default), dart20-code or dsa-code."),
    click.option("--num-threads", type=int, default=None, help="Slice-loader threads (default: all cores)."),
    click.option("--tolerance", "tolerances", type=float, multiple=True, default=(1.0,), show_default=True,
                 help="Surface Dice tolerance in mm for the final scores; repeat for several."),
    click.option("--quiet", is_flag=True, help="No progress bars (shown only on a terminal)."),
]


def _with_overrides(func):
    for option in reversed(_OVERRIDES):
        func = option(func)
    return func


def _overrides(kwargs):
    keys = ("epochs", "iters_per_epoch", "batch_size", "lr", "lr_steps", "crop", "seed", "device")
    return {k: kwargs.pop(k) for k in keys if kwargs.get(k) is not None}


def _progress(quiet: bool) -> bool:
    """Progress bars on an interactive terminal only (CI logs and batch jobs get the per-epoch log lines)."""
    return not quiet and sys.stderr.isatty()


def _print_summary(summary):
    mean = summary.get("mean")
    if mean:
        click.echo("  ".join(f"{k}={v:.4f}" for k, v in sorted(mean.items())))


@click.command()
@click.option("--data", "manifest", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Manifest CSV (fewshot-da data index).")
@click.option("--splits", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Split JSON (fewshot-da data split).")
@click.option("--source", required=True, help="Source domain: trains on its one2all train scans, scores its val scans.")
@click.option("--arch", default="dart20", show_default=True, help="dart20, dsa or vanilla.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Run folder (resumes if interrupted).")
@click.option("--preprocess", default="paper", show_default=True, help="Preprocessing preset: paper or dart20-code.")
@click.option("--spacing-mm", type=float, nargs=3, default=None,
              help="Resampling target in mm, array-axis order (default: the preprocessing preset's).")
@click.option("--reorient-ras", is_flag=True, default=None, help="Reorient scans to RAS before slicing (default off).")
@click.option("--cache", type=click.Path(file_okay=False), default=None,
              help="Preprocessing cache folder (default: cache/ beside the manifest).")
@_with_overrides
@one_line_errors
def train(manifest, splits, source, arch, out, preprocess, spacing_mm, reorient_ras, cache, config, preset,
          num_threads, tolerances, quiet, **kwargs):
    """Train a 2D U-Net from scratch on one source domain."""
    from fewshot_da.data.preprocess import preprocess_options
    from fewshot_da.experiments.runs import train as train_run

    options = preprocess_options(preprocess, target_spacing_mm=spacing_mm or None, reorient_ras=reorient_ras)
    summary = train_run(manifest=manifest, splits=splits, source=source, arch=arch, out=out, preset=preset or "paper",
                        preprocess=options, cache=cache, config=config, overrides=_overrides(kwargs),
                        tolerances_mm=tolerances, num_threads=num_threads, progress=_progress(quiet))
    click.echo(f"trained {arch} on {source}: {out}")
    _print_summary(summary)


@click.command()
@click.option("--model", required=True, type=click.Path(exists=True, file_okay=False),
              help="Source run folder (the --out of fewshot-da train).")
@click.option("--target", required=True, help="Target domain of the split file.")
@click.option("--layers", default="first", show_default=True,
              help="first, last, all, contracting, expanding, regex:PATTERN or module paths (see fewshot-da layers).")
@click.option("--scans", type=int, default=1, show_default=True, help="Number of target fine-tune scans (nested 1 < 2 < 3).")
@click.option("--slices", default=None, help="Slice budget 1/k: every k-th slice {0, k, 2k, ...} of the fine-tune scans.")
@click.option("--bn-stats", type=click.Choice(["update", "freeze"]), default=None,
              help="BatchNorm running statistics of frozen layers: update (reference, default) or freeze.")
@click.option("--no-eval", is_flag=True, help="Skip scoring the pair's test scans.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Run folder (resumes if interrupted).")
@_with_overrides
@one_line_errors
def adapt(model, target, layers, scans, slices, bn_stats, no_eval, out, config, preset, num_threads, tolerances,
          quiet, **kwargs):
    """Fine-tune chosen layers of a source model on a few target scans; score the target's other scans."""
    from fewshot_da.experiments.runs import adapt as adapt_run

    overrides = _overrides(kwargs)
    if bn_stats:
        overrides["bn_stats"] = bn_stats
    summary = adapt_run(model=model, target=target, out=out, layers=layers, scans=scans, slices=slices,
                        preset=preset, config=config, overrides=overrides, tolerances_mm=tolerances,
                        evaluate=not no_eval, num_threads=num_threads, progress=_progress(quiet))
    click.echo(f"adapted {layers} layers to {target} with {scans} scan(s), slices {summary['slices']}: {out}")
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
@click.option("--tolerance", "tolerances", type=float, multiple=True, default=(1.0,), show_default=True,
              help="Surface Dice tolerance in mm; repeat for several.")
@click.option("--quiet", is_flag=True, help="No progress bars (shown only on a terminal).")
@one_line_errors
def predict(model, manifest, ids, out, original_grid, batch_size, tolerances, quiet):
    """Predict whole volumes (batched slices), write NIfTI masks and score them where masks exist."""
    from fewshot_da.experiments.runs import predict as predict_run

    summary = predict_run(model=model, manifest=manifest, ids=ids, out=out, tolerances_mm=tolerances,
                          original_grid=original_grid, batch_size=batch_size, progress=_progress(quiet))
    click.echo(f"predicted {len(summary['ids'])} scans into {summary['predictions']}")
    _print_summary(summary)


@click.command()
@click.option("--out", type=click.Path(file_okay=False), default="fewshot-da-demo", show_default=True,
              help="Output folder (data, runs, table.txt, scores.csv, demo.png).")
@click.option("--arch", default="dart20", show_default=True, help="dart20, dsa or vanilla.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the phantoms and the training.")
@click.option("--quick", is_flag=True, help="A seconds-long smoke run (tiny schedules; numbers are not meaningful).")
@click.option("--quiet", is_flag=True, help="No progress bars (shown only on a terminal).")
@one_line_errors
def demo(out, arch, seed, quick, quiet):
    """The main job on built-in synthetic data: train, adapt first/last/all layers, score, report D_R."""
    from fewshot_da.experiments.demo import run_demo

    run_demo(out, arch=arch, seed=seed, quick=quick, progress=_progress(quiet), log=click.echo)


COMMANDS = [train, adapt, predict, demo]
