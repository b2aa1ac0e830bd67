"""CLI verbs (metrics): `fewshot-da eval`."""

import click
from fewshot_da_cli import options
from fewshot_da_cli.errors import one_line_errors

# kept in step with fewshot_da.metrics.scoring.METRICS (importing it here would load NumPy at start-up)
_METRICS = "dice,sdsc,hd95,assd,pixel_error,ari"


@click.command("eval")
@click.option(
    "--gt",
    "gt",
    required=True,
    type=click.Path(),
    help="Ground-truth mask: a NIfTI or 2D image (PNG) file, or a folder of them. Images beside the masks "
    "are skipped: <case>.* or <case>_0000.* beside <case>_mask.* (or _brain/_seg/_ss/_label), nnU-Net's "
    "<case>_0000.* beside <case>.*, and names with the word image/img beside mask-named files.",
)
@click.option(
    "--pred",
    "pred",
    required=True,
    type=click.Path(),
    help="Predicted mask(s): a file or a folder, matched to --gt by case id.",
)
@options.tolerance
@click.option(
    "--metrics",
    "metrics",
    default=None,
    help=f"Comma-separated metrics to compute, from {_METRICS}  "
    "[default: dice,sdsc,hd95,assd; plus pixel_error,ari for 2D images]",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Folder for metrics.csv and summary.json  [default: print only]",
)
@click.option("--label", type=int, default=None, help="Foreground = this label value  [default: any value > 0]")
@click.option(
    "--threshold",
    type=float,
    default=None,
    help="Prediction foreground = value > T, for probability maps; the ground truth is never thresholded  "
    "[default: masks must hold integers]",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Cases scored at once (threads: decoding and kernels overlap; 1 = one case at a time, on all cores)",
)
@options.num_threads
@one_line_errors
def eval_command(gt, pred, tolerances, metrics, out_dir, label, threshold, workers, num_threads):
    """Dice, surface Dice at each tolerance (mm), HD95 and ASSD (pixel error, ARI) of predictions."""
    import sys

    from fewshot_da.metrics.evaluate import IMAGE_RULE, evaluate_paths, format_table

    options.note_busy_cores(num_threads, workers=workers)
    summary = evaluate_paths(
        gt,
        pred,
        tolerances_mm=tolerances,
        out_dir=out_dir,
        label=label,
        threshold=threshold,
        metrics=None if metrics is None else metrics.split(","),
        workers=workers,
        num_threads=num_threads,
        progress=sys.stderr.isatty(),
    )
    skipped = summary["gt_images_skipped"]
    if skipped:
        click.echo(f"Note: --gt {gt}: skipped {len(skipped)} image file(s) beside the masks (first {skipped[0]}): "
                   f"{IMAGE_RULE}", err=True)
    empty = [c for c in summary["gt_empty_cases"] if c not in set(summary["label_absent_cases"])]
    if empty:
        only_pred = summary["n_label_only_in_pred"]
        why = f"; label {label} is only in the prediction in {only_pred} of them" if only_pred else ""
        click.echo(f"Warning: the ground truth is empty in {len(empty)} case(s) (first {empty[0]!r}){why}; "
                   "scored against an empty ground truth", err=True)
    if summary["n_label_absent"]:
        cases = summary["label_absent_cases"]
        click.echo(
            f"Warning: label {label} is absent from both masks in {len(cases)} case(s) (first {cases[0]!r}); "
            "their Dice is 1.0 by convention",
            err=True,
        )
    click.echo(format_table(summary))
    if out_dir is not None:
        click.echo(f"wrote {out_dir}/metrics.csv and {out_dir}/summary.json")


COMMANDS = [eval_command]
