"""Layer groups: the papers' first/last sets, contracting/expanding, regex and lists, freezing and BN statistics."""
import pytest
import torch

from fewshot_da.errors import InputError
from fewshot_da.models import ARCHS, build_model
from fewshot_da.training.config import preset_config
from fewshot_da.training.fit import fit
from fewshot_da.models import layer_groups
from fewshot_da.training.layers import freeze, set_train_mode, trainable_names
from fewshot_da.training.strategies import fixed



# the reference's `exclude_layers` / unfreeze lists, matched as substrings of named_parameters() (REFERENCE 1.5)
REFERENCE_SETS = {
    ("dart20", "first"): ("init_path.0", "init_path.2"),
    ("dart20", "last"): ("out_path",),
    ("dsa", "first"): ("init_path.0", "init_path.1"),
    ("dsa", "last"): ("out_path.2", "out_path.3"),
    ("vanilla", "first"): ("init_path",),
    ("vanilla", "last"): ("out_path",),
}
COUNTS = {("dart20", "first"): 4816, ("dart20", "last"): 627, ("dsa", "first"): 4816, ("dsa", "last"): 4721,
          ("vanilla", "first"): 37696, ("vanilla", "last"): 110914}


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    return {arch: build_model(arch) for arch in ARCHS}


def _count(model, names):
    params = dict(model.named_parameters())
    return sum(params[n].numel() for n in names)


@pytest.mark.parametrize("arch,group", sorted(REFERENCE_SETS))
def test_first_last_match_reference_substring_sets(models, arch, group):
    model = models[arch]
    names = trainable_names(model, arch, group)
    reference = [n for n, _ in model.named_parameters() if any(s in n for s in REFERENCE_SETS[arch, group])]
    assert names == reference
    assert _count(model, names) == COUNTS[arch, group]


def test_exact_sets_spelled_out(models):
    # DART20 first = conv 1->16 + first ResBlock (2 pre-activation units: BN + bias-free conv each)
    rb = [f"conv_path.{i}.{p}" for i in (0, 1) for p in ("bn.weight", "bn.bias", "layer.weight")]
    assert trainable_names(models["dart20"], "dart20", "first") == ["init_path.0.weight"] + [
        f"init_path.2.{p}" for p in rb]
    # DSA last = last 3x3 ResBlock + PreAct 1x1 with bias; the final BN(1) out_path.4 stays frozen
    assert trainable_names(models["dsa"], "dsa", "last") == [f"out_path.2.{p}" for p in rb] + [
        "out_path.3.bn.weight", "out_path.3.bn.bias", "out_path.3.layer.weight", "out_path.3.layer.bias"]
    # vanilla first = two conv-BN-ReLU blocks
    assert trainable_names(models["vanilla"], "vanilla", "first") == [
        f"init_path.{i}.{p}" for i in (0, 1) for p in ("layer.weight", "bn.weight", "bn.bias")]


@pytest.mark.parametrize("arch", ARCHS)
def test_contracting_and_expanding_partition_all(models, arch):
    model = models[arch]
    every = trainable_names(model, arch, "all")
    assert every == [n for n, _ in model.named_parameters()]
    con, exp = set(trainable_names(model, arch, "contracting")), set(trainable_names(model, arch, "expanding"))
    assert not con & exp and con | exp == set(every)
    # the first layers contract and the last expand, whatever the architecture
    assert set(trainable_names(model, arch, "first")) <= con and set(trainable_names(model, arch, "last")) <= exp


def test_dsa_bottleneck_split(models):
    con = trainable_names(models["dsa"], "dsa", "contracting")
    exp = trainable_names(models["dsa"], "dsa", "expanding")
    assert "bottleneck.3.conv_path.1.layer.weight" in con and "bottleneck.4.weight" in exp
    assert {n.split(".")[0] for n in exp} == {"bottleneck", "up2", "up1", "out_path", "shortcut0", "shortcut1",
                                             "shortcut2"}


def test_regex_and_lists(models):
    model = models["dart20"]
    assert trainable_names(model, "dart20", "regex:^shortcut") == [
        "shortcut0.weight", "shortcut0.bias", "shortcut1.weight", "shortcut1.bias", "shortcut2.weight",
        "shortcut2.bias"]
    both = trainable_names(model, "dart20", "first, last")
    assert _count(model, both) == 4816 + 627
    # model order, whatever the order of the list
    assert trainable_names(model, "dart20", "up1.4,shortcut0") == ["shortcut0.weight", "shortcut0.bias",
                                                                  "up1.4.weight"]


@pytest.mark.parametrize("spec", ["middle", "init_path.1", "down4", "regex:^nothing", "regex:(", ""])
def test_bad_specs_are_one_line_errors(models, spec):
    with pytest.raises(InputError) as info:
        trainable_names(models["dart20"], "dart20", spec)
    assert "\n" not in str(info.value)
    if spec in ("middle", "down4"):
        assert "valid groups: first, last, all, contracting, expanding" in str(info.value)


def test_groups_listed_for_every_arch():
    for arch in ARCHS:
        assert list(layer_groups(arch)) == ["first", "last", "all", "contracting", "expanding"]
    with pytest.raises(InputError, match="valid: dart20, dsa, vanilla"):
        layer_groups("unet")


def _batches(step):
    g = torch.Generator().manual_seed(1000 + step)
    x = torch.randn(4, 1, 16, 16, generator=g) * 2 + 1  # off-centre data so BN statistics move
    return x, (x > 1.5).float()


@pytest.mark.parametrize("bn_stats", ["update", "freeze"])
def test_frozen_parameters_bit_identical_and_bn_stats(tmp_path, bn_stats):
    torch.manual_seed(0)
    model = build_model("dart20")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    names = trainable_names(model, "dart20", "last")
    config = preset_config("paper", "finetune", "dart20", epochs=2, iters_per_epoch=2, lr_steps={}, batch_size=4, crop=16,
                           bn_stats=bn_stats)
    fit(model, _batches, config, tmp_path, strategy=fixed(names), progress=False)
    after = model.state_dict()
    params = {n for n, _ in model.named_parameters()}
    for key in params - set(names):
        assert torch.equal(before[key], after[key]), key
    # the 1x1 conv bias right before the train-mode BN(1) gets zero gradient (BN removes the mean), so it stays
    moved_params = [k for k in names if not torch.equal(before[k], after[k])]
    assert moved_params == [k for k in names if k != "out_path.1.layer.bias"]
    # running statistics of a frozen BN (first ResBlock) and of a trainable one (out_path.2)
    frozen_bn = "init_path.2.conv_path.0.bn.running_mean"
    moved = not torch.equal(before[frozen_bn], after[frozen_bn])
    assert moved == (bn_stats == "update")
    assert not torch.equal(before["out_path.2.running_mean"], after["out_path.2.running_mean"])


def test_set_train_mode_puts_only_frozen_bn_in_eval():
    model = build_model("dsa")
    freeze(model, trainable_names(model, "dsa", "last"), bn_stats="freeze")
    set_train_mode(model, "freeze")
    assert model.out_path[2].conv_path[0].bn.training and model.out_path[3].bn.training
    assert not model.out_path[4].training and not model.init_path[1].conv_path[0].bn.training
    set_train_mode(model, "update")
    assert all(m.training for m in model.modules())
    with pytest.raises(InputError, match="valid: update, freeze"):
        freeze(model, [], bn_stats="adabn")


def test_layers_cli(cli_runner, cli_app):
    result = cli_runner.invoke(cli_app, ["layers", "--arch", "dsa"])
    assert result.exit_code == 0, result.output
    assert "4,816" in result.output and "4,721" in result.output and "1,561,491" in result.output
    bad = cli_runner.invoke(cli_app, ["layers", "--arch", "unet3d"])
    assert bad.exit_code != 0 and "unknown architecture 'unet3d'" in bad.output
    selected = cli_runner.invoke(cli_app, ["layers", "--arch", "dart20", "--select", "first"])
    assert selected.exit_code == 0 and "7 tensors, 4,816 parameters trainable" in selected.output
    wrong = cli_runner.invoke(cli_app, ["layers", "--select", "middle"])
    assert wrong.exit_code != 0 and wrong.output.count("\n") == 1 and "valid groups" in wrong.output
