"""The network record (models/spec.py): class path + kwargs in every checkpoint, and verbs rebuild from it."""
import pytest
import torch

from fewshot_da.checkpoint import load_checkpoint
from fewshot_da.data.datasets import index_cc359
from fewshot_da.data.manifest import write_manifest
from fewshot_da.data.phantoms import write_phantom_dataset
from fewshot_da.data.splits import write_splits
from fewshot_da.errors import InputError
from fewshot_da.experiments import stages
from fewshot_da.models import build_model
from fewshot_da.models.spec import build_network, builtin_spec, network_spec

TINY = {"epochs": 1, "iters_per_epoch": 2, "batch_size": 2, "crop": 32, "lr_steps": {}}


@pytest.mark.parametrize("arch", ["dart20", "dsa", "vanilla", "classic"])
def test_builtin_record_builds_the_same_network(arch):
    torch.manual_seed(3)
    named = build_model(arch, base_filters=4)
    torch.manual_seed(3)
    rebuilt = build_network(builtin_spec(arch, base_filters=4))
    assert rebuilt.network_spec["class_path"].startswith("fewshot_da.models.unet_")
    assert rebuilt.base_filters == named.base_filters == 4
    a, b = named.state_dict(), rebuilt.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_any_module_class_is_a_record():
    spec = network_spec(torch.nn.Conv2d, in_channels=1, out_channels=2, kernel_size=3)
    net = build_network(spec)
    assert isinstance(net, torch.nn.Conv2d) and net.out_channels == 2


@pytest.mark.parametrize("spec, message", [
    ({"kwargs": {}}, "not a network record"),
    ({"class_path": "fewshot_da.models.NoSuchNet", "kwargs": {}}, "cannot import 'fewshot_da.models.NoSuchNet'"),
    ({"class_path": "torch.nn.Conv2d", "kwargs": {"bogus": 1}}, r"torch.nn.Conv2d\(bogus\) failed"),
])
def test_bad_records_are_one_line_errors(spec, message):
    with pytest.raises(InputError, match=message):
        build_network(spec, where="ckpt.pt")


def test_runs_record_and_rebuild_their_network(tmp_path):
    write_phantom_dataset(tmp_path / "data", domains=("siemens15", "ge3"), scans_per_domain=6, shape=(32, 32, 12))
    records = index_cc359(tmp_path / "data")
    manifest = write_manifest(records, tmp_path / "manifest.csv")
    write_splits(records, tmp_path / "splits.json")
    stages.train(manifest=manifest, splits=tmp_path / "splits.json", source="siemens15", out=tmp_path / "src",
                 arch="dsa", overrides={**TINY, "base_filters": 4}, progress=False)
    stages.adapt(model=tmp_path / "src", target="ge3", out=tmp_path / "spot", strategy="spottune", scans=1,
                 overrides=TINY, progress=False)
    for run in ("src", "spot"):
        record = load_checkpoint(tmp_path / run / "checkpoint.pt")["network"]
        assert record == {"class_path": "fewshot_da.models.unet_dsa.UNet2dDsa",
                          "kwargs": {"in_channels": 1, "out_channels": 1, "n_filters": 4}}
    net, strategy = stages.run_model(tmp_path / "spot")
    assert strategy.name == "spottune" and type(net).__name__ == "SpotTUnet"
    assert stages.network_of(tmp_path / "src", "dart20").network_spec["class_path"].endswith("UNet2dDsa")
