"""CLI verbs (model): inspect architectures, their layer groups and their blocks."""
import click

from fewshot_da_cli.errors import one_line_errors


@click.command("layers")
@click.option("--arch", default="dart20", show_default=True, help="Architecture: dart20, dsa, vanilla or classic.")
@click.option("--select", "spec", default=None,
              help="Instead, list the parameters a layer spec trains: a group, bn, regex:PATTERN or a comma list.")
@click.option("--blocks", "show_blocks", is_flag=True,
              help="Instead, list the blocks (resolution stages) gradual unfreezing adds, shallow to deep.")
@click.option("--units", "show_units", is_flag=True,
              help="Instead, list SpotTUnet's decision units (index, unit, modules, parameters).")
@click.option("--unit-map", type=click.Choice(["reference", "own"]), default="reference", show_default=True,
              help="With --units: the final BN shares shortcut0's decision (reference) or has its own.")
@one_line_errors
def layers(arch, spec, show_blocks, show_units, unit_map):
    """Print the layer groups (first, last, all, contracting, expanding, bn) with modules and parameter counts."""
    from fewshot_da.training.layers import blocks_table, format_layers_table, layers_table, selection_table

    if show_units:
        from fewshot_da.models.spottune import units_table

        rows = units_table(arch, unit_map)
        click.echo(f"{'index':>5}  {'unit':<16} {'params':>9}  modules")
        for row in rows:
            click.echo(f"{row['index']:>5}  {row['name']:<16} {row['n_params']:>9,}  {row['modules']}")
        click.echo(f"{len({r['index'] for r in rows})} decisions, {len(rows)} units, "
                   f"{sum(r['n_params'] for r in rows):,} parameters")
        return
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
