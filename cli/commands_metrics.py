"""CLI verbs (metrics): `fewshot-da eval`."""

import click
from fewshot_da_cli.errors import one_line_errors


@click.command("eval")
@click.option(
    "--gt",
    "gt",
    required=True,
    type=click.Path(),
    help="Ground-truth mask: a NIfTI file or a folder of them.",
)
@click.option(
    "--pred",
    "pred",
    required=True,
    type=click.Path(),
    help="Predicted mask(s): a NIfTI file or a folder, matched to --gt by case id.",
)
@click.option(
    "--tolerance",
    "--tolerance-mm",
    "tolerances_mm",
    type=float,
    multiple=True,
    default=(1.0,),
    show_default=True,
    help="Surface-Dice tolerance in mm; repeat for several.",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Folder for metrics.csv and summary.json  [default: print only]",
)
@click.option("--label", type=int, default=None, help="Foreground label value  [default: any value > 0]")
@click.option(
    "--num-threads",
    type=click.IntRange(min=1),
    default=None,
    help="CPU threads for the surface metrics  [default: all cores]",
)
@one_line_errors
def eval_command(gt, pred, tolerances_mm, out_dir, label, num_threads):
    """Dice, surface Dice at each tolerance (mm), HD95 and ASSD of predictions against ground truth."""
    from fewshot_da.metrics.evaluate import evaluate_paths, format_table

    summary = evaluate_paths(
        gt, pred, tolerances_mm=tolerances_mm, out_dir=out_dir, label=label, num_threads=num_threads
    )
    click.echo(format_table(summary))
    if out_dir is not None:
        click.echo(f"wrote {out_dir}/metrics.csv and {out_dir}/summary.json")


COMMANDS = [eval_command]
