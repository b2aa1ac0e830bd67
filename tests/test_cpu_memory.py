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

