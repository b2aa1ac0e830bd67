"""CLI verbs (model): inspect architectures, their layer groups and their blocks."""
import click

from fewshot_da_cli.errors import one_line_errors


@click.command("layers")
@click.option("--arch", default="dart20", show_default=True, help="Architecture: dart20, dsa, vanilla or classic.")
@click.option("--select", "spec", default=None,
              help="Instead, list the parameters a layer spec trains: a group, bn, regex:PATTERN or a comma list.")
@click.option("--blocks", "show_blocks", is_flag=True,
              help="Instead, list the blocks (resolution stages) gradual unfreezing adds, shallow to deep.")
@one_line_errors
def layers(arch, spec, show_blocks):
    """Print the layer groups (first, last, all, contracting, expanding, bn) with modules and parameter counts."""
    from fewshot_da.training.layers import blocks_table, format_layers_table, layers_table, selection_table

    if show_blocks:
        click.echo(format_layers_table(blocks_table(arch), first="block"))
        return
    if spec is None:
        click.echo(format_layers_table(layers_table(arch)))
        return
    rows = selection_table(arch, spec)
    for name, shape, n in rows:
        click.echo(f"{name:<45} {str(shape):<18} {n:>11,}")
    click.echo(f"{len(rows)} tensors, {sum(r[2] for r in rows):,} parameters trainable")


COMMANDS = [layers]
