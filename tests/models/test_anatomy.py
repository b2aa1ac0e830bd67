"""The anatomy of a network (models/anatomy.py): declared by our U-Nets, traced for any other module.

The two traced networks live in tests/anatomy_nets.py; the expected groups, blocks and units below are written by
hand from reading their code.
"""
from pathlib import Path

import pytest
import torch
from torch import nn

from anatomy_nets import encoder_decoder, nested_unet
from fewshot_da.errors import InputError
from fewshot_da.models import ARCHS, PostActivation2d, PreActivation2d, build_model, describe, layer_groups
from fewshot_da.models import blocks as declared_blocks
from fewshot_da.models.anatomy import decision_units, matches
from fewshot_da.training.layers import block_names, freeze, model_layers_table, trainable_names
from fewshot_da.training.strategies import make_strategy

NETS = Path(__file__).resolve().parents[1] / "anatomy_nets.py"
ED = "decoder.encoder.stages"  # the encoder, as named_parameters() names it (first registered under the decoder)


# --- declared: our four U-Nets -------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ARCHS)
def test_declared_anatomy_is_the_class_declaration(arch):
    model = build_model(arch, in_channels=2, out_channels=3, base_filters=4)
    anatomy = describe(model)
    names = [n for n, _ in model.named_parameters()]
    assert anatomy.kind == "declared" and anatomy.unused == ()
    for group, prefixes in layer_groups(arch).items():
        assert anatomy.group_modules[group] == prefixes
        assert list(anatomy.groups[group]) == [n for n in names if any(matches(n, p) for p in prefixes)]
    assert anatomy.block_modules == declared_blocks(arch)
    assert sum(len(b) for b in anatomy.blocks) == len(names)  # every parameter in exactly one block
    assert anatomy.units == tuple(decision_units(model, arch))
    assert anatomy.pad_multiple == type(model).PAD_MULTIPLE
    assert (anatomy.in_channels, anatomy.out_channels) == (2, 3)
    assert anatomy.has_running_stats == (arch != "classic")


DART20_LAYERS = """\
group             params  modules
first              4,816  init_path.0, init_path.2
last                 627  out_path
all            2,434,771  init_path, down1, down2, down3, up3, up2, shortcut2, up1, shortcut1, out_path, shortcut0
contracting    1,221,296  init_path, down1, down2, down3
expanding      1,213,475  up3, up2, up1, out_path, shortcut0, shortcut1, shortcut2
bn                 6,338  BatchNorm affine parameters
module            14,160  init_path
module               272  shortcut0
module            57,760  down1
module             1,056  shortcut1
module           230,208  down2
module             4,160  shortcut2
module           919,168  down3
module           919,296  up3
module           230,272  up2
module            57,792  up1
module               627  out_path
"""


def test_layers_cli_arch_output_is_unchanged(cli_runner, cli_app):
    """`layers --arch dart20` prints what it printed before the anatomy existed (saved from commit 921cbad)."""
    result = cli_runner.invoke(cli_app, ["layers", "--arch", "dart20"])
    assert result.exit_code == 0, result.output
    assert result.output == DART20_LAYERS


# --- traced: a nested U-Net in MONAI's layout ----------------------------------------------------------------------
def test_nested_unet_traced_groups_blocks_units():
    """Sequential(down /2, SkipConnection(Sequential(down /4, SkipConnection(bottom /4), up /2)), head /1)."""
    anatomy = describe(nested_unet())
    assert anatomy.kind == "traced"
    assert anatomy.group_modules == {
        "first": ("0",),  # the strided first conv block: no layer runs at input resolution, "first" is still it
        "last": ("2",),  # the transposed-conv head returns to full resolution and is the last layer
        "all": ("0", "1", "2"),
        "contracting": ("0", "1.submodule.0"),  # until the lowest resolution (1/4) is first reached
        "expanding": ("1.submodule.1", "1.submodule.2", "2"),
        "norm": ("0.norm", "1.submodule.0.norm", "1.submodule.1.submodule.norm", "1.submodule.2.norm"),
    }
    assert anatomy.groups["first"] == ("0.conv.weight", "0.conv.bias", "0.norm.weight", "0.norm.bias",
                                       "0.act.weight")
    assert anatomy.block_modules == (("0",), ("1.submodule.0", "1.submodule.1"), ("1.submodule.2",), ("2",))
    assert [u.name for u in anatomy.units] == ["0.conv", "1.submodule.0.conv", "1.submodule.1.submodule.conv",
                                               "1.submodule.2.conv", "2.conv"]
    assert anatomy.units[0].modules == ("0.conv", "0.norm", "0.act")  # conv -> BN -> PReLU: one unit
    assert anatomy.units[-1].modules == ("2.conv",)
    assert (anatomy.pad_multiple, anatomy.in_channels, anatomy.out_channels) == (4, 1, 2)
    assert anatomy.unused == () and anatomy.has_running_stats and anatomy.norm_types == ("BatchNorm2d",)


# --- traced: an nnU-Net-like encoder-decoder --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ed_anatomy():
    model = encoder_decoder()
    return model, describe(model)


def test_encoder_decoder_execution_order_not_registration_order(ed_anatomy):
    """The decoder is registered first (its own layers before its encoder reference); units follow execution."""
    model, anatomy = ed_anatomy
    assert next(n for n, _ in model.named_parameters()) == "decoder.transpconvs.0.weight"
    encoder = [f"{ED}.{s}.{c}.conv" for s in range(4) for c in range(2)]
    decoder = ["decoder.transpconvs.0", "decoder.stages.0.conv",
               "decoder.transpconvs.1", "decoder.stages.1.conv", "decoder.seg_layers.1",
               "decoder.transpconvs.2", "decoder.stages.2.conv", "decoder.seg_layers.2"]
    assert [u.name for u in anatomy.units] == encoder + decoder
    assert anatomy.units[0].modules == (f"{ED}.0.0.conv", f"{ED}.0.0.norm")  # conv -> InstanceNorm: one unit
    assert anatomy.group_modules["first"] == (f"{ED}.0",)  # the two convs at input resolution
    assert anatomy.group_modules["last"] == ("decoder.stages.2", "decoder.seg_layers.2")
    assert anatomy.group_modules["contracting"] == (f"{ED}.0", f"{ED}.1", f"{ED}.2", f"{ED}.3.0")
    assert anatomy.group_modules["expanding"] == (f"{ED}.3.1", "decoder.transpconvs", "decoder.stages",
                                                  "decoder.seg_layers.1", "decoder.seg_layers.2")
    assert anatomy.block_modules == (
        (f"{ED}.0",), (f"{ED}.1",), (f"{ED}.2",), (f"{ED}.3",),
        ("decoder.transpconvs.0", "decoder.stages.0"),
        ("decoder.transpconvs.1", "decoder.stages.1", "decoder.seg_layers.1"),
        ("decoder.transpconvs.2", "decoder.stages.2", "decoder.seg_layers.2"),
    )
    assert anatomy.pad_multiple == 8


def test_list_output_full_resolution_map_is_the_prediction(ed_anatomy):
    model, anatomy = ed_anatomy
    outputs = model.eval()(torch.zeros(1, 1, 32, 32))
    assert [tuple(o.shape) for o in outputs] == [(1, 3, 32, 32), (1, 3, 16, 16)]  # deep supervision
    assert anatomy.out_channels == 3
    assert "decoder.seg_layers.1.weight" not in anatomy.groups["last"]  # the half-resolution head is not "last"


def test_uncalled_head_is_listed_apart_and_never_trained(ed_anatomy):
    model, anatomy = ed_anatomy
    assert anatomy.unused == ("decoder.seg_layers.0.weight", "decoder.seg_layers.0.bias")
    assert anatomy.unused_modules == ("decoder.seg_layers.0",)
    assert not any(set(anatomy.unused) & set(names) for names in [*anatomy.groups.values(), *anatomy.blocks])
    assert not any(set(anatomy.unused) & set(u.params) for u in anatomy.units)
    for spec in ("all", "regex:seg_layers", "decoder.seg_layers"):
        assert "decoder.seg_layers.0.weight" not in trainable_names(model, "", spec)
    assert all("seg_layers.0" not in n for block in block_names(model) for n in block)
    # the 1/4-resolution seg layer: a 1x1 conv 16 -> 3 channels, 48 weights + 3 biases
    assert ("unused", "decoder.seg_layers.0", 51) in model_layers_table(model, anatomy)


def test_shared_encoder_counted_once_by_named_parameters(ed_anatomy):
    """The decoder keeps a reference to the encoder: state_dict() lists its tensors twice, named_parameters() once."""
    model, anatomy = ed_anatomy
    named = dict(model.named_parameters())
    assert len(model.state_dict()) > len(named)
    assert any(k.startswith("encoder.") for k in model.state_dict()) and not any(n.startswith("encoder.")
                                                                                  for n in named)
    total = sum(p.numel() for p in named.values())
    assert anatomy.count(anatomy.groups["all"]) + anatomy.count(anatomy.unused) == total
    assert sum(u.n_params for u in anatomy.units) == anatomy.count(anatomy.groups["all"])
    assert anatomy.count(anatomy.groups["contracting"]) + anatomy.count(anatomy.groups["expanding"]) == \
        anatomy.count(anatomy.groups["all"])
    rows = model_layers_table(model, anatomy)
    module_rows = {name: n for group, name, n in rows if group == "module"}
    assert module_rows == {"decoder": total}  # `encoder` holds no parameter of its own name


def test_instance_norm_without_running_stats_adabn_and_bn_stats_say_so(ed_anatomy):
    model, anatomy = ed_anatomy
    assert not anatomy.has_running_stats and anatomy.norm_types == ("InstanceNorm2d",)
    with pytest.raises(InputError, match=r"adabn does not apply: .*\(InstanceNorm2d\) keep no running statistics"):
        make_strategy("adabn", model, "")
    with pytest.raises(InputError, match=r"--bn-stats freeze does not apply: .*InstanceNorm2d"):
        freeze(model, [], bn_stats="freeze")
    with pytest.raises(InputError, match="UNet2dClassic has no norm layer"):
        make_strategy("adabn", build_model("classic", base_filters=2), "classic")
    freeze(model, [], bn_stats="update")  # the default does not complain


# --- tracing rules and side effects ----------------------------------------------------------------------------------
def test_norm_joins_the_conv_of_its_own_block():
    """Post-activation (conv -> BN -> ReLU) and pre-activation (BN -> ReLU -> conv) blocks: BN goes with its conv."""
    net = nn.Sequential(PostActivation2d(1, 4, kernel_size=3, padding=1),
                        PreActivation2d(4, 4, kernel_size=3, padding=1))
    units = describe(net).units
    assert [u.modules for u in units] == [("0.layer", "0.bn"), ("1.bn", "1.layer")]


def test_trace_restores_modes_and_leaves_state_and_rng_alone():
    model = nested_unet()
    model.train()
    model[1].eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    describe(model)
    assert torch.equal(rng, torch.get_rng_state())
    assert model.training and not model[1].training and model[2].training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_in_channels_found_and_a_failing_trace_is_one_line():
    assert describe(encoder_decoder(in_channels=2)).in_channels == 2  # first registered conv takes 32 channels
    with pytest.raises(InputError, match="example_size") as info:
        describe(encoder_decoder(), example_size=12)  # 12 px cannot be halved three times
    assert "\n" not in str(info.value)
    with pytest.raises(InputError, match="--in-channels must be >= 1"):
        describe(nested_unet(), in_channels=0)


# --- the CLI -----------------------------------------------------------------------------------------------------
def test_layers_cli_model_entry_point(cli_runner, cli_app):
    result = cli_runner.invoke(cli_app, ["layers", "--model", f"{NETS}:nested_unet"])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[1].split() == ["first", "49", "0"]
    assert "pad multiple 4, 1 input channels, 2 output channels" in result.output
    blocks = cli_runner.invoke(cli_app, ["layers", "--model", f"{NETS}:encoder_decoder", "--blocks"])
    assert blocks.exit_code == 0 and len(blocks.output.splitlines()) == 1 + 7
    units = cli_runner.invoke(cli_app, ["layers", "--model", f"{NETS}:encoder_decoder", "--units"])
    assert units.exit_code == 0 and "16 decisions, 16 units, 27,574 parameters" in units.output
    for entry, message in [(f"{NETS}:nope", "has no callable 'nope'"), ("missing.py:f", "not found"),
                           ("fewshot_da.models:ARCHS", "has no callable"), ("no_such_module_x:f", "cannot import"),
                           ("fewshot_da.models:check_arch", "failed"), ("nested_unet", "expected module:factory")]:
        bad = cli_runner.invoke(cli_app, ["layers", "--model", entry])
        assert bad.exit_code != 0 and message in bad.output and bad.output.count("\n") == 1, (entry, bad.output)
