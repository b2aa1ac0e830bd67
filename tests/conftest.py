"""Shared fixtures: the real data folder (../shared/data) and the CLI package mapped from this checkout's cli/."""
import importlib.util
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("FEWSHOT_DA_SHARED_DATA", ROOT.parent / "shared" / "data"))


def _map_cli_package():
    """Import `fewshot_da_cli` from this checkout's cli/ (the installed copy may point at another tree)."""
    if "fewshot_da_cli" in sys.modules:
        return
    spec = importlib.util.spec_from_file_location(
        "fewshot_da_cli", ROOT / "cli" / "__init__.py", submodule_search_locations=[str(ROOT / "cli")]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["fewshot_da_cli"] = module
    spec.loader.exec_module(module)


_map_cli_package()


def cli_script(root=ROOT) -> str:
    """Python source that runs this checkout's CLI (`fewshot_da_cli` mapped from root/cli, as above) on its
    command line: for subprocess tests, since the installed console script may belong to another tree."""
    return f"""import importlib.util, sys
root = {str(root)!r}
sys.path.insert(0, root)
spec = importlib.util.spec_from_file_location("fewshot_da_cli", root + "/cli/__init__.py",
                                              submodule_search_locations=[root + "/cli"])
module = importlib.util.module_from_spec(spec)
sys.modules["fewshot_da_cli"] = module
spec.loader.exec_module(module)
if __name__ == "__main__":  # worker processes (spawn) import a script file again
    from fewshot_da_cli.main import cli
    cli(prog_name="fewshot-da")
"""


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path to ../shared/data; tests that need it are skipped with a reason when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture
def cli_runner():
    from click.testing import CliRunner

    return CliRunner()


@pytest.fixture
def cli_app():
    from fewshot_da_cli.main import cli

    return cli


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tests run tiny tensors: one torch thread avoids OpenMP spin-waits on busy shared cores (10x slower)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
