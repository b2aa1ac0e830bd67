"""The package imports, the compiled core is present and the CLI answers."""


def test_core_extension_is_built():
    from fewshot_da import _backend

    assert _backend.core is not None
    assert isinstance(_backend.HAS_CUDA_KERNEL, bool)


def test_cli_version(cli_runner, cli_app):
    result = cli_runner.invoke(cli_app, ["--version"])
    assert result.exit_code == 0, result.output
    assert "fewshot-da" in result.output
