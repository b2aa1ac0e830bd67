"""U-Net architectures: parameter counts, reference state-dict keys, block semantics, bad names."""
import pytest
import torch

from fewshot_da.errors import InputError
from fewshot_da.models import ARCHS, PreActivation2d, ResBlock2d, build_model, count_parameters, pad_multiple
from fewshot_da.checkpoint import load_pretrained



# totals from REFERENCE.md section 1 (the papers' code)
PARAMS = {"dart20": 2_434_771, "dsa": 1_561_491, "vanilla": 31_035_522}

BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def _bn(prefix):
    return [f"{prefix}.{k}" for k in BN]


def _preact(prefix, bias):
    # dpipe PreActivation registers bn, activation, layer
    return _bn(f"{prefix}.bn") + [f"{prefix}.layer.weight"] + ([f"{prefix}.layer.bias"] if bias else [])


def _postact(prefix):
    # dpipe PostActivation registers layer, activation, bn
    return [f"{prefix}.layer.weight"] + _bn(f"{prefix}.bn")


def _resblock(prefix):
    return _preact(f"{prefix}.conv_path.0", False) + _preact(f"{prefix}.conv_path.1", False)


def _conv(prefix, bias=False):
    return [f"{prefix}.weight"] + ([f"{prefix}.bias"] if bias else [])


def expected_keys(arch):
    """State-dict keys of the reference models, written from the reference module lists (REFERENCE.md 1.2-1.4)."""
    keys = []
    if arch == "dart20":
        keys += _conv("init_path.0") + _resblock("init_path.2") + _resblock("init_path.3") + _resblock("init_path.4")
        keys += _conv("shortcut0", True)
        for i, name in enumerate(["down1", "down2", "down3"]):
            keys += _bn(f"{name}.0") + _conv(f"{name}.1") + sum((_resblock(f"{name}.{j}") for j in (4, 5, 6)), [])
            if i < 2:
                keys += _conv(f"shortcut{i + 1}", True)
        for name in ["up3", "up2", "up1"]:
            keys += sum((_resblock(f"{name}.{j}") for j in (0, 1, 2)), []) + _bn(f"{name}.3") + _conv(f"{name}.4")
        keys += _resblock("out_path.0") + _preact("out_path.1", True) + _bn("out_path.2")
    elif arch == "dsa":
        keys += _conv("init_path.0") + sum((_resblock(f"init_path.{j}") for j in (1, 2, 3)), [])
        keys += _conv("shortcut0", True)
        for i, name in enumerate(["down1", "down2"]):
            keys += _preact(f"{name}.0", False) + sum((_resblock(f"{name}.{j}") for j in (1, 2, 3)), [])
            keys += _conv(f"shortcut{i + 1}", True)
        keys += _preact("bottleneck.0", False) + sum((_resblock(f"bottleneck.{j}") for j in (1, 2, 3)), [])
        keys += _conv("bottleneck.4")
        for name in ["up2", "up1"]:
            keys += sum((_resblock(f"{name}.{j}") for j in (0, 1, 2)), []) + _conv(f"{name}.3")
        keys += sum((_resblock(f"out_path.{j}") for j in (0, 1, 2)), []) + _preact("out_path.3", True)
        keys += _bn("out_path.4")
    else:
        keys += _postact("init_path.0") + _postact("init_path.1")
        for name in ["down1", "down2", "down3"]:
            keys += _postact(f"{name}.1") + _postact(f"{name}.2")
        keys += _postact("down4.1")
        keys += _postact("up4.0") + _conv("up4.1")
        for name in ["up3", "up2", "up1"]:
            keys += _postact(f"{name}.0") + _postact(f"{name}.1") + _conv(f"{name}.2")
        keys += _postact("out_path.0") + _postact("out_path.1") + _conv("out_path.2") + _bn("out_path.3")
    return keys


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    return {arch: build_model(arch) for arch in ARCHS}


REFERENCE_ARCHS = ("dart20", "dsa", "vanilla")


@pytest.mark.parametrize("arch", REFERENCE_ARCHS)
def test_parameter_count_matches_reference(models, arch):
    assert count_parameters(models[arch]) == PARAMS[arch]


def test_module_parameter_counts_dart20_and_dsa(models):
    dart = {n: count_parameters(m) for n, m in models["dart20"].named_children()}
    assert dart == {"init_path": 14160, "shortcut0": 272, "down1": 57760, "shortcut1": 1056, "down2": 230208,
                    "shortcut2": 4160, "down3": 919168, "up3": 919296, "up2": 230272, "up1": 57792, "out_path": 627}
    dsa = {n: count_parameters(m) for n, m in models["dsa"].named_children()}
    assert dsa["bottleneck"] == 951936 and dsa["out_path"] == 14067 and dsa["up2"] == 230144


@pytest.mark.parametrize("arch", REFERENCE_ARCHS)
def test_state_dict_keys_are_the_references(models, arch):
    assert list(models[arch].state_dict()) == expected_keys(arch)


@pytest.mark.parametrize("arch", ["dart20", "dsa"])
def test_reference_state_dict_loads_as_is(models, arch, tmp_path):
    # a raw state dict (no wrapper), as the papers' code saved it, with the reference key names
    raw = {k: v.clone() for k, v in models[arch].state_dict().items()}
    assert list(raw) == expected_keys(arch)
    torch.save(raw, tmp_path / "model.pth")
    fresh = build_model(arch)
    fresh.load_state_dict(torch.load(tmp_path / "model.pth"), strict=True)
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), raw.values()))
    # older dpipe named the conv inside PreActivation `conv`; load_pretrained renames it
    legacy = {k.replace(".layer.", ".conv."): v for k, v in raw.items()}
    torch.save(legacy, tmp_path / "legacy.pth")
    assert load_pretrained(fresh, tmp_path / "legacy.pth", arch=arch)["copied"] == len(raw)
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), raw.values()))


@pytest.mark.parametrize("arch", ARCHS)
def test_forward_keeps_spatial_shape(models, arch):
    size = 2 * pad_multiple(arch)
    with torch.no_grad():
        out = models[arch].eval()(torch.randn(2, 1, size, size + pad_multiple(arch)))
    assert out.shape == (2, 1, size, size + pad_multiple(arch))


def test_preactivation_is_bn_relu_conv():
    # eval-mode BN with weight 1, bias -1 and unit stats shifts by -1; ReLU clips; a 1x1 conv of weight 2 doubles
    block = PreActivation2d(1, 1, kernel_size=1, bias=False).eval()
    with torch.no_grad():
        block.bn.bias.fill_(-1.0)
        block.layer.weight.fill_(2.0)
        x = torch.tensor([0.0, 0.5, 1.0, 3.0]).view(1, 1, 2, 2)
        assert torch.allclose(block(x), 2 * torch.relu(x - 1.0))


def test_resblock_adds_identity_without_post_activation():
    block = ResBlock2d(2, kernel_size=3, padding=1).eval()
    with torch.no_grad():
        for m in block.conv_path:
            m.layer.weight.zero_()
        x = torch.randn(1, 2, 5, 5) - 3.0  # negative values survive: no ReLU after the addition
        assert torch.equal(block(x), x)
    assert all(m.layer.bias is None for m in block.conv_path)


def test_unknown_arch_is_one_line_error():
    with pytest.raises(InputError, match=r"unknown architecture 'unet3d'; valid: dart20, dsa, vanilla"):
        build_model("unet3d")
    with pytest.raises(InputError):
        pad_multiple("resnet")


def test_pad_multiple():
    assert [pad_multiple(a) for a in ARCHS] == [8, 8, 16, 16]


def _conv_params(c_in, c_out, k):
    return c_in * c_out * k * k + c_out


def test_classic_unet_parameter_count_and_groups(models):
    """Ronneberger/Keras layout at 64 filters, counted conv by conv: two 3x3 convs per block, a 2x2 conv after each
    upsampling, a 1x1 head; the contracting group is the first 10 convs (the ultrasound paper's experiment 1)."""
    from fewshot_da.training.layers import trainable_names

    widths = [64, 128, 256, 512, 1024]
    down = sum(_conv_params(c_in, c, 3) + _conv_params(c, c, 3) for c_in, c in zip([1] + widths[:-1], widths))
    up = sum(_conv_params(2 * c, c, 2) + _conv_params(2 * c, c, 3) + _conv_params(c, c, 3) for c in widths[-2::-1])
    assert count_parameters(models["classic"]) == down + up + _conv_params(64, 1, 1) == 31_030_593
    model = models["classic"]
    convs = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)]
    contracting = {n.rsplit(".", 1)[0] for n in trainable_names(model, "classic", "contracting")}
    assert sorted(contracting, key=convs.index) == convs[:10]
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    narrow = build_model("classic", base_filters=16)
    assert count_parameters(narrow) == 1_940_817
    assert narrow.eval()(torch.randn(1, 1, 32, 48)).shape == (1, 1, 32, 48)
