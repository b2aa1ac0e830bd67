"""CLI verb `fewshot-da report`: tables, statistics, figures and index.html of a grid or of hand-made runs."""
import click

from fewshot_da_cli.errors import one_line_errors


@click.command("report")
@click.argument("paths", nargs=-1, type=click.Path(exists=True))
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Report folder (created).")
@click.option("--tolerance", "--tolerance-mm", "tolerance_mm", type=float, default=1.0, show_default=True,
              help="Surface Dice tolerance in mm: which surface_dice_<tol>mm column the tables and D_R use.")
@click.option("--alpha", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.1, show_default=True,
              help="Significance level of the winners' sign test (0.1 as the first paper's Fig. 3).")
@click.option("--ci", type=click.Choice(["t", "bootstrap"]), default="t", show_default=True,
              help="95% interval of mean D_R: Student-t over pairs, or a seeded bootstrap over pairs and seeds.")
@click.option("--baseline", "baseline", multiple=True, type=click.Path(exists=True, file_okay=False),
              help="A run folder to count as the baseline (source model scored on a target); repeatable.")
@click.option("--oracle", "oracle", multiple=True, type=click.Path(exists=True, file_okay=False),
              help="A run folder to count as the oracle (trained and scored on one domain); repeatable.")
@click.option("--min-gap", "min_gap", type=click.FloatRange(min=0), default=0.02, show_default=True,
              help="Pairs whose oracle-baseline gap D_O - D_B is below this score are left out of D_R and the "
                   "winners (D_R divides by it) and listed apart.")
@click.option("--examples/--no-examples", default=True, show_default=True,
              help="Draw example segmentations of a few test slices with the runs' saved models.")
@click.option("--policy", "policy", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="A SpotTUnet policy CSV (unit, budget, fraction_finetuned); repeatable.")
@one_line_errors
def report(paths, out, tolerance_mm, alpha, ci, baseline, oracle, min_gap, examples, policy):
    """Report a study: PATHS is a grid folder with results.csv, or run folders made with train/adapt/predict."""
    from fewshot_da.reports.report import write_report

    written = write_report(paths, out, tolerance_mm=tolerance_mm, alpha=alpha, ci=ci, baseline=baseline,
                           oracle=oracle, policy=policy, min_gap=min_gap, examples=examples)
    click.echo(f"wrote {len(written)} files; open {written['index']}")


COMMANDS = [report]
