"""CLI of the experiment grid: `experiment PLAN --out DIR` runs or resumes it; `experiment status DIR`."""

import sys

import click
from fewshot_da_cli import options
from fewshot_da_cli.errors import one_line_errors


class _PlanOrVerb(click.Group):
    """`experiment PLAN ...` means `experiment run PLAN ...`; `experiment status DIR` is the status verb."""

    def parse_args(self, ctx, args):
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["run", *args]
        return super().parse_args(ctx, args)


@click.group(cls=_PlanOrVerb)
def experiment():
    """A study as one grid: `experiment PLAN --out DIR` (run or resume), `experiment status DIR`.

    PLAN is a preset (cc359-dart20, cc359-dsa, ultrasound, ixi-shift, phantoms) or a YAML plan."""


@experiment.command("run")
@click.argument("plan")
@click.option(
    "--out", required=True, type=click.Path(file_okay=False), help="Grid folder (resumes if it exists)."
)
@click.option(
    "--data",
    "manifest",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="Manifest CSV replacing the plan's data (e.g. your CC359 index).",
)
@click.option(
    "--splits",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="Split JSON for --data (default: made from it with the reference seed).",
)
@click.option(
    "--executor",
    type=click.Choice(["local", "slurm"]),
    default="local",
    show_default=True,
    help="Where runs execute.",
)
@click.option(
    "--slots",
    type=int,
    default=None,
    help="Local worker processes (default: one per GPU, else 1); CPU threads are split between them.",
)
@click.option("--partition", default=None, help="SLURM partition (default: the cluster's).")
@click.option(
    "--time", "time_min", type=int, default=None, help="SLURM time limit per array task in minutes [60]."
)
@click.option("--gpus-per-task", type=int, default=None, help="SLURM GPUs per array task [0].")
@click.option(
    "--cpus-per-task", type=int, default=None, help="SLURM CPUs per array task (also torch threads)."
)
@click.option("--array-parallelism", type=int, default=None, help="SLURM: array tasks running at once [64].")
@click.option(
    "--runs-per-task", type=int, default=None, help="SLURM: runs done in sequence per array task [4]."
)
@options.num_threads
@click.option("--dry-run", is_flag=True,
              help="Prepare data, check the whole plan against it, list the run counts and warn about budgets "
                   "whose slices hold fewer than 2 with foreground; run nothing.")
@click.option("--quiet", is_flag=True, help="No progress bar (shown only on a terminal; log lines always).")
@one_line_errors
def run(
    plan,
    out,
    manifest,
    splits,
    executor,
    slots,
    partition,
    time_min,
    gpus_per_task,
    cpus_per_task,
    array_parallelism,
    runs_per_task,
    num_threads,
    dry_run,
    quiet,
):
    """Run or resume the grid of PLAN in --out; finished runs are skipped, results.csv collects every run.

    SIGTERM or Ctrl-C stops the workers and exits with 128 + the signal; the same command resumes."""
    from fewshot_da.experiments.executors import GridInterrupted, run_experiment

    if executor == "local" and not dry_run:
        options.note_busy_cores(num_threads, workers=slots or 1)
    try:
        summary = run_experiment(
            plan,
            out,
            executor=executor,
            data=manifest,
            splits=splits,
            dry_run=dry_run,
            progress=not quiet and sys.stderr.isatty(),
            log=click.echo,
            slots=slots,
            partition=partition,
            time_min=time_min,
            gpus_per_task=gpus_per_task,
            cpus_per_task=cpus_per_task,
            array_parallelism=array_parallelism,
            runs_per_task=runs_per_task,
            num_threads=num_threads,
        )
    except GridInterrupted as stop:  # the library stopped the workers and logged what is kept
        raise SystemExit(128 + stop.signum) from None
    if summary["failed"]:
        raise SystemExit(1)


@experiment.command("status")
@click.argument("grid_dir", type=click.Path(exists=True, file_okay=False))
@one_line_errors
def status(grid_dir):
    """Runs done / running / failed / interrupted / pending per kind, and the failed runs' errors."""
    from fewshot_da.experiments.grid import format_status, grid_status

    click.echo(format_status(grid_status(grid_dir)))


COMMANDS = [experiment]
