"""CLI verbs (model): inspect architectures, their layer groups and their blocks."""
import click

from fewshot_da_cli.errors import one_line_errors


@click.command("layers")
@click.option("--arch", default="dart20", show_default=True, help="Architecture: dart20, dsa, vanilla or classic.")
@click.option("--model", "entry", default=None,
              help="Instead of --arch, any network: module:factory or path/to/file.py:factory (factory() returns "
                   "a torch.nn.Module); its anatomy is traced from one forward pass.")
@click.option("--in-channels", type=int, default=None,
              help="With --model: input channels of the traced forward pass (default: the first value that runs).")
@click.option("--example-size", type=int, default=None,
              help="With --model: height and width (and depth) in pixels of the traced input (default 128; 64 in 3D).")
@click.option("--select", "spec", default=None,
              help="Instead, list the parameters a layer spec trains: a group, bn, regex:PATTERN or a comma list.")
@click.option("--blocks", "show_blocks", is_flag=True,
              help="Instead, list the blocks (resolution stages) gradual unfreezing adds, shallow to deep.")
@click.option("--units", "show_units", is_flag=True,
              help="Instead, list SpotTUnet's decision units (index, unit, modules, parameters).")
@click.option("--unit-map", type=click.Choice(["reference", "own"]), default="reference", show_default=True,
              help="With --units: the final BN shares shortcut0's decision (reference) or has its own.")
@one_line_errors
def layers(arch, entry, in_channels, example_size, spec, show_blocks, show_units, unit_map):
    """Print the layer groups (first, last, all, contracting, expanding, bn) with modules and parameter counts."""
    from fewshot_da.models import build_model, describe, from_entry_point
    from fewshot_da.training.layers import (format_layers_table, model_blocks_table, model_layers_table,
                                            model_selection_table, units_rows)

    model = from_entry_point(entry) if entry else build_model(arch)
    anatomy = describe(model, in_channels=in_channels, example_size=example_size, unit_map=unit_map)
    if show_units:
        rows = units_rows(anatomy)
        width = max([16, *(len(r["name"]) for r in rows)])  # traced nets have long module paths
        click.echo(f"{'index':>5}  {'unit':<{width}} {'params':>9}  modules")
        for row in rows:
            click.echo(f"{row['index']:>5}  {row['name']:<{width}} {row['n_params']:>9,}  {row['modules']}")
        click.echo(f"{len({r['index'] for r in rows})} decisions, {len(rows)} units, "
                   f"{sum(r['n_params'] for r in rows):,} parameters")
        return
    if show_blocks:
        click.echo(format_layers_table(model_blocks_table(model, anatomy), first="block"))
        return
    if spec is None:
        click.echo(format_layers_table(model_layers_table(model, anatomy)))
        if anatomy.kind == "traced":
            click.echo(f"pad multiple {anatomy.pad_multiple}, {anatomy.in_channels} input channels, "
                       f"{anatomy.out_channels} output channels")
        return
    rows = model_selection_table(model, spec, "" if entry else arch, anatomy)
    for name, shape, n in rows:
        click.echo(f"{name:<45} {str(shape):<18} {n:>11,}")
    click.echo(f"{len(rows)} tensors, {sum(r[2] for r in rows):,} parameters trainable")


COMMANDS = [layers]
