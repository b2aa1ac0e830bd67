"""keep_freed_memory: after it, a training-sized allocate / free loop stops faulting in fresh pages."""
import json
import os
import subprocess
import sys

import pytest

from fewshot_da.cpu_memory import _glibc

pytestmark = pytest.mark.skipif(_glibc() is None, reason="keep_freed_memory needs glibc's mallopt (Linux)")

# The pattern of a training step: two 64 MiB tensors alive at once, written, freed; 10 rounds to reach the
# steady state (the heap settles after a few), then 20 counted.
LOOP = """
import json, resource, torch
from fewshot_da.cpu_memory import keep_freed_memory
applied = keep_freed_memory()
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for warm in range(10):
    a = torch.ones(16, 16, 256, 256); b = a * 2; del a, b
before = faults()
for _ in range(20):
    a = torch.ones(16, 16, 256, 256); b = a * 2; del a, b
print(json.dumps({"applied": applied, "faults": faults() - before}))
"""


def _run(opt_out: bool) -> dict:
    env = {**os.environ, "FEWSHOT_DA_SYSTEM_MALLOC": "1" if opt_out else "0"}
    for key in [k for k in env if k.startswith("MALLOC_") or k == "GLIBC_TUNABLES"]:
        del env[key]  # the test compares against glibc's defaults
    out = subprocess.run([sys.executable, "-c", LOOP], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_keep_freed_memory_removes_the_page_faults_of_large_tensors():
    default, kept = _run(opt_out=True), _run(opt_out=False)
    assert default["applied"] is False and kept["applied"] is True
    pages = 20 * 2 * (16 * 16 * 256 * 256 * 4) // 4096  # fresh pages the loop writes under glibc's defaults
    assert default["faults"] > pages // 2
    assert kept["faults"] < pages // 10  # measured 0, at times one 64 MiB tensor (16 k) as the heap reshapes


def test_keep_freed_memory_is_idempotent_in_process():
    from fewshot_da.cpu_memory import keep_freed_memory

    if os.environ.get("FEWSHOT_DA_SYSTEM_MALLOC") == "1":
        pytest.skip("FEWSHOT_DA_SYSTEM_MALLOC=1 keeps the system's malloc for this test run")
    assert keep_freed_memory() is True and keep_freed_memory() is True


def test_fit_on_cpu_trains_in_channels_last_and_still_learns(tmp_path):
    """The CPU training layout reaches the model; the loss still falls on a bright-square toy."""
    import torch

    from fewshot_da.models import UNet2dDsa
    from fewshot_da.training.config import TrainConfig
    from fewshot_da.training.fit import fit, training_layout

    assert training_layout(torch.device("cpu")) is torch.channels_last
    assert training_layout(torch.device("cuda")) is torch.contiguous_format

    def batches(step):
        g = torch.Generator().manual_seed(step)
        y = torch.zeros(4, 1, 16, 16)
        y[:, :, 4:12, 4:12] = 1.0
        return torch.randn(4, 1, 16, 16, generator=g) * 0.3 + 2 * y, y

    model = UNet2dDsa(n_filters=4)
    config = TrainConfig(arch="dsa", epochs=4, iters_per_epoch=5, batch_size=4, crop=16, lr=5e-2, lr_steps={},
                         seed=0, device="cpu")
    fit(model, batches, config, tmp_path, progress=False)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size != (1, 1)]
    assert convs and all(m.weight.is_contiguous(memory_format=torch.channels_last) for m in convs)
    losses = [float(r["train_loss"]) for r in __import__("csv").DictReader(open(tmp_path / "metrics.csv"))]
    assert losses[-1] < 0.8 * losses[0], losses
