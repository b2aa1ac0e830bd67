"""`fewshot-da` entry point: a click group; each verb lives in a commands_* module and calls one library function."""
import click

from fewshot_da import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="fewshot-da")
def cli():
    """Few-shot domain adaptation of segmentation U-Nets: train, adapt chosen layers, predict, evaluate."""


def _register():
    from fewshot_da_cli import commands_metrics, commands_data, commands_model, commands_experiments
    from fewshot_da_cli import commands_diagnostics, commands_grid, commands_recommend, commands_report

    for module in (commands_metrics, commands_data, commands_model, commands_experiments, commands_report,
                   commands_diagnostics, commands_grid, commands_recommend):
        for command in getattr(module, "COMMANDS", []):
            cli.add_command(command)


_register()

if __name__ == "__main__":
    cli()
