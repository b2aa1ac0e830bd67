"""CLI verbs (model): inspect architectures and their layer groups."""
import click

from fewshot_da_cli.errors import one_line_errors


@click.command("layers")
@click.option("--arch", default="dart20", show_default=True, help="Architecture: dart20, dsa or vanilla.")
@click.option("--select", "spec", default=None,
              help="Instead, list the parameters a layer spec trains: a group, regex:PATTERN or a comma list.")
@one_line_errors
def layers(arch, spec):
    """Print the layer groups (first, last, all, contracting, expanding) with modules and parameter counts."""
    from fewshot_da.training.groups import format_layers_table, layers_table, selection_table

    if spec is None:
        click.echo(format_layers_table(layers_table(arch)))
        return
    rows = selection_table(arch, spec)
    for name, shape, n in rows:
        click.echo(f"{name:<45} {str(shape):<18} {n:>11,}")
    click.echo(f"{len(rows)} tensors, {sum(r[2] for r in rows):,} parameters trainable")


COMMANDS = [layers]
