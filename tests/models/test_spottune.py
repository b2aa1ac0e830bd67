"""SpotTUnet: decision units, policy network, two-copy mixing, Gumbel straight-through, penalty, optimizer groups."""
import copy
import math

import pytest
import torch
import torch.nn.functional as F

from fewshot_da.errors import InputError
from fewshot_da.models import build_model
from fewshot_da.models.policy_net import PolicyNet, sample_policy
from fewshot_da.models.spottune import (
    SpotTUnet,
    decision_units,
    mix,
    param_groups,
    policy_penalty,
    unassigned_parameters,
    units_table,
)

# REFERENCE.md §6, in index order; shortcut0's 272 + 2 for the final BN(1) (out_path.4) that shares its decision
DSA_UNIT_PARAMS = [144, 4672, 4672, 4672, 2080, 18560, 18560, 18560, 8256, 73984, 73984, 73984, 32896, 295424,
                   295424, 295424, 32768, 73984, 73984, 73984, 8192, 18560, 18560, 18560, 2048, 4672, 4672, 4672,
                   49, 272 + 2, 1056, 4160]
DSA_UNIT_NAMES = ([f"init_path.{i}" for i in range(4)] + [f"down1.{i}" for i in range(4)]
                  + [f"down2.{i}" for i in range(4)] + [f"bottleneck.{i}" for i in range(5)]
                  + [f"up2.{i}" for i in range(4)] + [f"up1.{i}" for i in range(4)]
                  + [f"out_path.{i}" for i in range(4)] + ["shortcut0", "shortcut1", "shortcut2"])
TOTALS = {"dsa": 1_561_491, "dart20": 2_434_771, "vanilla": 31_035_522}


# --- decision units ------------------------------------------------------------------------------------------------
def test_dsa_reference_units_match_reference_list():
    units = decision_units(build_model("dsa"), "dsa", "reference")
    assert [u.index for u in units] == list(range(32))
    assert [u.name for u in units] == DSA_UNIT_NAMES
    assert [u.n_params for u in units] == DSA_UNIT_PARAMS
    assert units[29].modules == ("shortcut0", "out_path.4")  # the final-BN quirk
    assert sum(u.n_params for u in units) == TOTALS["dsa"]


def test_dsa_own_map_gives_the_final_bn_its_own_decision():
    units = decision_units(build_model("dsa"), "dsa", "own")
    assert len(units) == 33
    assert [u.n_params for u in units[:29]] == DSA_UNIT_PARAMS[:29]
    assert units[29].modules == ("shortcut0",) and units[29].n_params == 272
    assert units[32].modules == ("out_path.4",) and units[32].n_params == 2


@pytest.mark.parametrize("arch, n_ref, n_own", [("dart20", 33, 34), ("vanilla", 24, 24), ("dsa", 32, 33)])
def test_units_cover_every_parameter(arch, n_ref, n_own):
    model = build_model(arch)
    for unit_map, n in (("reference", n_ref), ("own", n_own)):
        units = decision_units(model, arch, unit_map)
        assert len(units) == n
        assert unassigned_parameters(model, units) == []  # nothing is shared between the copies
        assert sum(u.n_params for u in units) == TOTALS[arch]
        paths = [p for u in units for p in u.modules]
        assert len(paths) == len(set(paths))


def test_dart20_standalone_bn_joins_the_next_conv():
    units = {u.name: u for u in decision_units(build_model("dart20"), "dart20")}
    assert units["down1.1"].modules == ("down1.0", "down1.1")  # BN(16) + strided conv 16->32: 32 + 2048
    assert units["down1.1"].n_params == 2080
    assert units["up3.4"].modules == ("up3.3", "up3.4")  # BN(128) + ConvT 128->64: 256 + 32768
    assert units["shortcut0"].modules == ("shortcut0", "out_path.2")  # trailing BN(1), as dsa's quirk


def test_vanilla_trailing_bn_has_its_own_decision_without_skip_convs():
    units = decision_units(build_model("vanilla"), "vanilla", "reference")
    assert units[-1].modules == ("out_path.3",) and units[-1].n_params == 2
    assert units[-2].name == "out_path.2"


def test_units_table_rows_and_bad_unit_map():
    rows = units_table("dsa")
    assert rows[29] == {"index": 29, "name": "shortcut0", "modules": "shortcut0,out_path.4", "n_params": 274}
    with pytest.raises(InputError, match="unit-map"):
        units_table("dsa", "mine")
    with pytest.raises(InputError, match="unknown architecture"):
        units_table("resnet")


# --- policy network ------------------------------------------------------------------------------------------------
def test_policy_net_used_parameter_count_and_shape():
    net = PolicyNet(32)
    # stem 288 + 64; stages 55,552 + 221,696 + 885,760; head BN 512 + Linear 256*64 + 64
    assert sum(p.numel() for p in net.parameters()) == 1_180_320
    assert not any("parallel" in n for n, _ in net.named_parameters())
    assert net(torch.zeros(2, 1, 32, 48)).shape == (2, 32, 2)
    assert PolicyNet(37).linear.out_features == 74


def test_policy_net_init_is_he_normal():
    torch.manual_seed(0)
    net = PolicyNet(32)
    w = net.blocks[2].conv2.weight  # 256 x 256 x 3 x 3: std sqrt(2 / (9 * 256)) = 0.02946
    assert w.std().item() == pytest.approx(math.sqrt(2 / (9 * 256)), rel=0.01)
    assert abs(w.mean().item()) < 1e-3
    assert torch.all(net.head_bn.weight == 1) and torch.all(net.head_bn.bias == 0)


# --- Gumbel straight-through ---------------------------------------------------------------------------------------
def test_straight_through_forward_is_hard_backward_is_soft_gradient():
    # logits (l0, l1) = (0, 0.05), noise (0.3, -0.2), T = 0.1: z = (l1 - l0 + g1 - g0) / T = (0.05 - 0.5) / 0.1 = -4.5
    # soft y1 = sigmoid(-4.5) = 0.010987; hard one-hot picks class 0, so p = 0 in the forward;
    # d p / d l1 = y1 (1 - y1) / T = 0.108665, d p / d l0 = -0.108665.
    logits = torch.tensor([[[0.0, 0.05]]], requires_grad=True)
    p = sample_policy(logits, temperature=0.1, noise=torch.tensor([[[0.3, -0.2]]]))
    assert p.item() == pytest.approx(0.0, abs=1e-7)
    p.sum().backward()
    y1 = 1 / (1 + math.exp(4.5))
    expected = y1 * (1 - y1) / 0.1
    assert logits.grad[0, 0, 1].item() == pytest.approx(expected, rel=1e-5)
    assert logits.grad[0, 0, 0].item() == pytest.approx(-expected, rel=1e-5)
    # without the noise, class 1 wins: p = 1, and the gradient is y1 (1 - y1) / T at y1 = sigmoid(0.5)
    logits.grad = None
    p = sample_policy(logits, temperature=0.1, noise=torch.zeros(1, 1, 2))
    assert p.item() == pytest.approx(1.0, abs=1e-7)
    p.sum().backward()
    y1 = 1 / (1 + math.exp(-0.5))
    assert logits.grad[0, 0, 1].item() == pytest.approx(y1 * (1 - y1) / 0.1, rel=1e-5)


def test_gumbel_sampling_follows_the_softmax_of_the_logits():
    # Gumbel-max: P(class 1) = sigmoid(l1 - l0) = sigmoid(1) = 0.7311, whatever T; 20,000 draws -> sd 0.003
    torch.manual_seed(0)
    logits = torch.tensor([0.0, 1.0]).expand(20_000, 1, 2)
    for temperature in (0.1, 1.0):
        p = sample_policy(logits, temperature=temperature)
        assert set(p.unique().tolist()) <= {0.0, 1.0}
        assert p.mean().item() == pytest.approx(1 / (1 + math.exp(-1)), abs=0.015)


def test_argmax_at_test_needs_no_noise():
    logits = torch.tensor([[[0.2, 0.1], [-1.0, 3.0], [0.0, 0.0]]])
    assert sample_policy(logits, hard_gumbel=False).tolist() == [[0.0, 1.0, 0.0]]  # a tie keeps the fine-tuned unit


# --- the two-copy wrapper ------------------------------------------------------------------------------------------
def _perturbed_pair(arch, seed=0):
    """A source model and a SpotTUnet whose fine-tuned copy differs from it (so mixing is visible)."""
    torch.manual_seed(seed)
    source = build_model(arch)
    with torch.no_grad():  # non-trivial running statistics for eval-mode checks
        for m in source.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    model = SpotTUnet(arch, source.state_dict())
    with torch.no_grad():
        for p in model.finetuned.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return source, model


SIZES = {"dsa": 16, "dart20": 16, "vanilla": 16}


@pytest.mark.parametrize("arch", ["dsa", "dart20", "vanilla"])
def test_all_frozen_equals_source_and_all_finetuned_equals_the_finetuned_copy(arch):
    source, model = _perturbed_pair(arch)
    s = SIZES[arch]
    x = torch.randn(3, 1, s, s)
    n = len(model.units)
    finetuned_alone = copy.deepcopy(model.finetuned)
    for mode in ("eval", "train"):
        for m in (source, model, finetuned_alone):
            getattr(m, mode)()
        with torch.no_grad():
            assert torch.equal(model(x, policy=torch.ones(3, n)), source(x))
            assert torch.equal(model(x, policy=torch.zeros(3, n)), finetuned_alone(x))
            assert not torch.equal(source(x), finetuned_alone(x))


@pytest.mark.parametrize("arch", ["dsa", "dart20"])
def test_one_unit_fine_tuned_equals_a_hybrid_network(arch):
    """p = 1 everywhere but unit k: equals the source net with unit k's modules taken from the fine-tuned copy."""
    source, model = _perturbed_pair(arch)
    source.eval(), model.eval()
    x = torch.randn(1, 1, 16, 16)
    ft_state = model.finetuned.state_dict()
    hybrid = copy.deepcopy(source)
    for unit in model.units:
        prefixes = tuple(p + "." for p in unit.modules)
        hybrid.load_state_dict({k: ft_state[k] if k.startswith(prefixes) else v
                                for k, v in source.state_dict().items()})
        policy = torch.ones(1, len(model.units))
        policy[0, unit.index] = 0
        with torch.no_grad():
            assert torch.equal(model(x, policy=policy), hybrid(x)), unit.name


def test_decisions_are_per_slice():
    source, model = _perturbed_pair("dsa")
    source.eval(), model.eval()
    x = torch.randn(2, 1, 16, 16)
    policy = torch.stack([torch.ones(32), torch.zeros(32)])
    with torch.no_grad():
        out = model(x, policy=policy)
        assert torch.equal(out[:1], source(x)[:1])
        assert torch.equal(out[1:], model(x, policy=torch.zeros(2, 32))[1:])
        assert not torch.equal(out[1:], source(x)[1:])


def test_frozen_copy_is_frozen_but_its_batchnorm_statistics_update_in_training():
    _, model = _perturbed_pair("dsa")
    assert all(not p.requires_grad for p in model.frozen.parameters())
    assert all(p.requires_grad for p in model.finetuned.parameters())
    assert all(not n.startswith("frozen.") for n in model.trainable_names())
    before = model.frozen.init_path[1].conv_path[0].bn.running_mean.clone()
    model.train()
    out = model(torch.randn(2, 1, 16, 16))
    assert not torch.equal(model.frozen.init_path[1].conv_path[0].bn.running_mean, before)
    F.binary_cross_entropy_with_logits(out, torch.zeros_like(out)).backward()
    assert all(p.grad is None for p in model.frozen.parameters())
    assert model.policy.linear.weight.grad is not None and model.policy.linear.weight.grad.abs().sum() > 0


def test_test_time_decisions_are_deterministic_and_training_ones_are_sampled():
    _, model = _perturbed_pair("dsa")
    x = torch.randn(4, 1, 24, 24)
    model.eval()
    with torch.no_grad():
        out1, p1 = model(x), model.last_policy.clone()
        torch.manual_seed(123)  # the RNG state must not matter at test time
        out2, p2 = model(x), model.last_policy.clone()
        _, p3 = model(x[2:3]), model.last_policy.clone()  # a slice's decisions do not depend on its batch
    assert torch.equal(p1, p2) and torch.equal(out1, out2)
    assert torch.equal(p3, p1[2:3])
    model.train()
    policies = []
    with torch.no_grad():
        for _ in range(3):
            model(x)
            policies.append(model.last_policy.clone())
    assert any(not torch.equal(policies[0], q) for q in policies[1:])  # Gumbel draws while training


def test_policy_records_accumulate_per_unit_and_reset():
    _, model = _perturbed_pair("dsa")
    model.eval()
    policy = torch.ones(4, 32)
    policy[:, 0] = 0  # unit 0 fine-tuned in all 4 slices
    policy[:2, 29] = 0  # shortcut0 (with out_path.4) in 2 of 4
    with torch.no_grad():
        model(torch.randn(4, 1, 16, 16), policy=policy)
        model(torch.randn(4, 1, 16, 16), policy=torch.ones(4, 32))
    fractions = model.policy_fractions()
    assert fractions["init_path.0"] == 0.5 and fractions["shortcut0"] == 0.25 and fractions["down1.0"] == 0.0
    assert model.policy_rows()[0] == {"index": 0, "unit": "init_path.0", "fraction_finetuned": 0.5, "slices": 8}
    assert "record_finetuned" in model.state_dict()  # travels with checkpoints (exact resume mid-epoch)
    model.reset_policy_record()
    assert all(math.isnan(v) for v in model.policy_fractions().values())


def test_bad_construction_inputs():
    with pytest.raises(InputError, match="temperature"):
        SpotTUnet("dsa", temperature=0)
    with pytest.raises(InputError, match="unit-map"):
        SpotTUnet("dsa", unit_map="ours")
    with pytest.raises(ValueError, match="policy has shape"):
        SpotTUnet("dsa")(torch.zeros(1, 1, 16, 16), policy=torch.ones(1, 33))


def test_from_checkpoint_loads_both_copies(tmp_path):
    torch.manual_seed(3)
    source = build_model("dsa").eval()
    torch.save(source.state_dict(), tmp_path / "source.pt")
    model = SpotTUnet.from_checkpoint("dsa", tmp_path / "source.pt", unit_map="own").eval()
    assert len(model.units) == 33
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        assert torch.equal(model(x, policy=torch.zeros(2, 33)), source(x))
        assert torch.equal(model(x, policy=torch.ones(2, 33)), source(x))
    with pytest.raises(InputError, match="missing.pt"):
        SpotTUnet.from_checkpoint("dsa", tmp_path / "missing.pt")
    with pytest.raises(InputError, match="dart20"):
        SpotTUnet.from_checkpoint("dart20", tmp_path / "source.pt")


# --- loss and optimizer --------------------------------------------------------------------------------------------
def test_policy_penalty_is_lambda_times_the_fine_tuned_fraction():
    p = torch.tensor([[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 0.0]])  # 3 of 8 decisions fine-tuned
    assert policy_penalty(p, 0.008).item() == pytest.approx(0.008 * 3 / 8)
    assert policy_penalty(p, 0.0).item() == 0.0


def test_mix_has_the_reference_formula_value_and_gradients():
    torch.manual_seed(0)
    a, b = torch.randn(2, 3, 4, 4, requires_grad=True), torch.randn(2, 3, 4, 4, requires_grad=True)
    w = torch.tensor([0.3, 0.9], requires_grad=True)
    g = torch.randn(2, 3, 4, 4)
    out = mix(a, b, w)
    w4 = w.view(2, 1, 1, 1)
    want = a * (1 - w4) + b * w4
    torch.testing.assert_close(out, want)
    for got, expected in zip(torch.autograd.grad((out * g).sum(), (a, b, w)),
                             torch.autograd.grad((want * g).sum(), (a, b, w))):
        torch.testing.assert_close(got, expected)
    hard = torch.tensor([0.0, 1.0])
    assert torch.equal(mix(a, b, hard), torch.stack([a[0], b[1]]))  # exact at p = 0 and p = 1
    assert torch.autograd.gradcheck(mix, (a.double()[:, :1, :2, :2].detach().requires_grad_(),
                                          b.double()[:, :1, :2, :2].detach().requires_grad_(),
                                          w.double().detach().requires_grad_()))


def _train_steps(model, make_optimizers, steps=3):
    optimizers = make_optimizers(model)
    model.train()
    for step in range(steps):
        torch.manual_seed(100 + step)
        x = torch.randn(2, 1, 16, 16)
        out = model(x)
        loss = F.binary_cross_entropy_with_logits(out, (x > 0).float()) + policy_penalty(model.last_policy, 0.01)
        for opt in optimizers:
            opt.zero_grad()
        loss.backward()
        for opt in optimizers:
            opt.step()
    return model


def test_one_sgd_with_two_groups_equals_the_reference_two_optimizers():
    _, base = _perturbed_pair("dsa")

    def one(model):
        return [torch.optim.SGD(param_groups(model), momentum=0.9, nesterov=True)]

    def two(model):  # the reference: main SGD lr 1e-3; policy SGD lr 1e-2, weight decay 1e-3
        return [torch.optim.SGD(model.finetuned.parameters(), lr=1e-3, momentum=0.9, nesterov=True),
                torch.optim.SGD(model.policy.parameters(), lr=1e-2, momentum=0.9, nesterov=True, weight_decay=1e-3)]

    a = _train_steps(copy.deepcopy(base), one)
    b = _train_steps(copy.deepcopy(base), two)
    state_a, state_b = a.state_dict(), b.state_dict()
    for key in state_a:
        assert torch.equal(state_a[key], state_b[key]), key
    assert not torch.equal(state_a["policy.linear.weight"], base.state_dict()["policy.linear.weight"])
    groups = param_groups(base)
    assert [(g["name"], g["lr"], g["weight_decay"]) for g in groups] == [("main", 1e-3, 0.0), ("policy", 1e-2, 1e-3)]
    n_main = sum(p.numel() for p in groups[0]["params"])
    assert n_main == TOTALS["dsa"] and sum(p.numel() for p in groups[1]["params"]) == 1_180_320


# --- learning signal -----------------------------------------------------------------------------------------------
def _toy_fraction_finetuned(lam, seed=0, steps=30):
    """Seeded toy adaptation (dsa, 32x32 noise images, target = sign of a 5x5 local mean): returns the fraction of
    decisions using the fine-tuned units in the first 5 steps and at test (argmax) on 16 slices afterwards."""
    torch.manual_seed(seed)
    model = SpotTUnet("dsa", build_model("dsa").state_dict())
    optimizer = torch.optim.SGD(param_groups(model, lr_main=0.01, lr_policy=0.1), momentum=0.9, nesterov=True)
    gen = torch.Generator().manual_seed(1)
    images = torch.randn(64, 1, 32, 32, generator=gen)
    masks = (F.avg_pool2d(images, 5, 1, 2) > 0).float()
    model.train()
    early = []
    for step in range(steps):
        idx = torch.randint(0, 64, (4,), generator=gen)
        out = model(images[idx])
        loss = F.binary_cross_entropy_with_logits(out, masks[idx]) + policy_penalty(model.last_policy, lam)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step < 5:
            early.append((1 - model.last_policy.detach()).mean().item())
    model.eval()
    with torch.no_grad():
        model(images[:16])
    return sum(early) / len(early), (1 - model.last_policy).mean().item()


def test_penalty_moves_the_policy_toward_the_frozen_units():
    early_0, final_0 = _toy_fraction_finetuned(0.0)
    early_pen, final_pen = _toy_fraction_finetuned(0.5)
    # without the penalty the task loss pulls toward the (improving) fine-tuned units; with it, toward the frozen
    assert final_0 > early_0 and final_0 > 0.55
    assert final_pen < early_pen and final_pen < 0.3
    assert final_0 - final_pen > 0.3


def test_state_dict_and_rng_are_all_a_resume_needs():
    """2 + 2 steps in one go equal 2 steps, a save (model, optimizer, torch RNG) into fresh objects, and 2 more."""
    _, base = _perturbed_pair("dsa")

    def steps(model, optimizer, first, n):
        model.train()
        for step in range(first, first + n):
            x = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(step))
            loss = F.binary_cross_entropy_with_logits(model(x), (x > 0).float())
            loss = loss + policy_penalty(model.last_policy, 0.01)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

    straight = copy.deepcopy(base)
    opt = torch.optim.SGD(param_groups(straight), momentum=0.9, nesterov=True)
    torch.manual_seed(7)
    steps(straight, opt, 0, 4)

    first = copy.deepcopy(base)
    opt = torch.optim.SGD(param_groups(first), momentum=0.9, nesterov=True)
    torch.manual_seed(7)
    steps(first, opt, 0, 2)
    saved = copy.deepcopy({"model": first.state_dict(), "optimizer": opt.state_dict(), "rng": torch.get_rng_state()})
    resumed = SpotTUnet("dsa")
    resumed.load_state_dict(saved["model"])
    opt = torch.optim.SGD(param_groups(resumed), momentum=0.9, nesterov=True)
    opt.load_state_dict(saved["optimizer"])
    torch.manual_seed(999)
    torch.set_rng_state(saved["rng"])
    steps(resumed, opt, 2, 2)
    for key, value in straight.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key
    assert int(resumed.record_slices) == 8
