"""CLI verbs (model): inspect architectures and their layer groups."""
import click

from fewshot_da_cli.errors import one_line_errors


@click.command("layers")
@click.option("--arch", default="dart20", show_default=True, help="Architecture: dart20, dsa or vanilla.")
@one_line_errors
def layers(arch):
    """Print the layer groups (first, last, all, contracting, expanding) with modules and parameter counts."""
    from fewshot_da.training.groups import format_layers_table, layers_table

    click.echo(format_layers_table(layers_table(arch)))


COMMANDS = [layers]
