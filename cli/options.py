"""Options shared by several verbs, defined once so they mean the same everywhere (units in the names)."""
import sys

import click


def _compose(*options):
    def decorate(func):
        for option in reversed(options):
            func = option(func)
        return func

    return decorate


tolerance = click.option("--tolerance", "--tolerance-mm", "tolerances", type=float, multiple=True, default=(1.0,),
                         show_default=True, help="Surface Dice tolerance in mm (finite, > 0); repeat for several.")


def _resolve_threads(ctx, param, value):
    """--num-threads N, else $OMP_NUM_THREADS, else None (all cores): fewshot_da.threads.resolve_threads."""
    from fewshot_da.errors import InputError
    from fewshot_da.threads import resolve_threads

    try:
        return resolve_threads(value)
    except InputError as exc:
        raise click.BadParameter(str(exc)) from None


num_threads = click.option("--num-threads", type=click.IntRange(min=1), default=None, callback=_resolve_threads,
                           help="CPU threads of each run, slot or case (torch, slice loader, metric kernels); "
                                "default: $OMP_NUM_THREADS when set, else all cores, split between workers. On "
                                "busy cores fewer is faster: a note says so.")


def stderr_is_terminal() -> bool:
    return sys.stderr.isatty()


def note_busy_cores(threads, workers: int = 1) -> None:
    """On a terminal, print (stderr) the one-line note when the load average leaves fewer free cores than the
    threads to use. Off a terminal (pipes, schedulers, tests) the note goes only to each run's log.txt (`fit`), so
    a command's output stays its result or its one-line error."""
    from fewshot_da.threads import busy_cores_note, threads_per_worker

    if not stderr_is_terminal():
        return
    note = busy_cores_note(threads_per_worker(threads, workers), workers)
    if note:
        click.echo(note, err=True)

spacing_mm = click.option("--spacing-mm", type=float, nargs=3, default=None,
                          help="Voxel spacing in mm, three floats in array-axis order.")
resize = click.option("--resize", default=None,
                      help="Resize every slice to this in-plane size in pixels (256 or 256,192; spacing grows).")
quiet = click.option("--quiet", is_flag=True, help="No progress bars (shown only on a terminal).")
wait = click.option("--wait", is_flag=True, help="If another run is writing --out, wait for it instead of failing.")

TRAINING_KEYS = ("augment", "epochs", "iters_per_epoch", "batch_size", "lr", "lr_steps", "crop", "seed", "device", "loss",
                 "lr_scale", "base_filters")

training = _compose(
    click.option("--epochs", type=int, default=None, help="Epochs (default: the preset's)."),
    click.option("--iters-per-epoch", type=int, default=None, help="SGD steps per epoch (default: the preset's)."),
    click.option("--batch-size", type=int, default=None, help="Slices per batch (default: the preset's)."),
    click.option("--lr", type=float, default=None, help="Initial learning rate (default: the preset's)."),
    click.option("--lr-steps", default=None,
                 help="EPOCH:FACTOR[,..]: multiply the lr by FACTOR after 0-based epoch EPOCH, i.e. from epoch "
                      "EPOCH+1 on; 0 <= EPOCH <= epochs - 2, e.g. 80:0.1; '' for none (default: the preset's drop, "
                      "moved with --epochs to keep its fraction of the epochs)."),
    click.option("--lr-scale", multiple=True, default=None,
                 help="PATTERN=FACTOR: multiply the lr of parameters whose name matches the regex; repeatable."),
    click.option("--loss", type=click.Choice(["bce", "dice", "bce+dice"]), default=None,
                 help="Segmentation loss (default bce, as the papers; bce+dice for small structures)."),
    click.option("--crop", type=int, default=None, help="Square crop side in pixels (default 256)."),
    click.option("--augment", type=click.Choice(["none", "spatial", "intensity", "both"]), default=None,
                 help="Augmentation in the slice loader (default none, as the papers): which groups of the preset."),
    click.option("--augment-preset", default=None,
                 help="dart20-aug, ultrasound-aug, intensity, joined with + (default dart20-aug+intensity)."),
    click.option("--seed", type=int, default=None, help="Seed of the model init and of the slice sampler (default 0)."),
    click.option("--device", default=None, help="auto (CUDA with AMP when present, else CPU), cpu, cuda, cuda:1."),
    click.option("--config", "config", type=click.Path(exists=True, dir_okay=False), default=None,
                 help="YAML of TrainConfig keys; flags given on the command line override it."),
    click.option("--preset", default=None, help="paper (default), dart20-code or dsa-code."),
    num_threads,
    tolerance,
    quiet,
    wait,
)


def training_overrides(kwargs: dict) -> dict:
    """Pop the training flags out of a verb's kwargs: {TrainConfig key: value} for the ones given."""
    values = {k: kwargs.pop(k, None) for k in TRAINING_KEYS}
    preset = kwargs.pop("augment_preset", None)
    if preset is not None or values["augment"] is not None:
        values["augment"] = {"preset": preset, "mode": values["augment"] or "both"}
    return {k: v for k, v in values.items() if v not in (None, ())}


def show_progress(quiet_flag: bool) -> bool:
    """Progress bars on an interactive terminal only (CI logs and batch jobs get the per-epoch log lines)."""
    return not quiet_flag and sys.stderr.isatty()
