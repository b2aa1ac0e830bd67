"""SpotTUnet on traced networks (models/spottune_traced.py): sites at each unit's output, the policy's meaning
(p = 1 reuses the frozen unit), a list output, and a learning signal; the built-in nets keep the declared wrapper."""
import copy

import pytest
import torch

from anatomy_nets import encoder_decoder, nested_unet
from fewshot_da.models.anatomy import describe
from fewshot_da.models.spottune import SpotTUnet
from fewshot_da.models.spottune_traced import TracedSpotTUnet, mixing_sites
from fewshot_da.models import build_model
from fewshot_da.training.strategies import make_strategy


def _perturbed(wrapper, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in wrapper.finetuned.parameters():
            p.add_(0.5 * torch.randn(p.shape, generator=g))


def test_sites_are_the_blocks_that_hold_one_unit():
    net = nested_unet()
    units = describe(net).units
    assert [site for site, _ in mixing_sites(net, units)] == [
        "0", "1.submodule.0", "1.submodule.1.submodule", "1.submodule.2", "2.conv"]
    net = encoder_decoder()
    sites = dict(mixing_sites(net, describe(net).units))
    assert "decoder.encoder.stages.0.0" in sites and "decoder.transpconvs.0" in sites
    assert "decoder.seg_layers.0" not in sites  # never called: no unit, never trained


@pytest.mark.parametrize("factory", [nested_unet, encoder_decoder])
def test_policy_one_reuses_the_frozen_network_and_zero_the_finetuned_copy(factory):
    torch.manual_seed(0)
    net = factory().eval()
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        reference = net(x)
        reference = reference[0] if isinstance(reference, list) else reference
    wrapper = TracedSpotTUnet(net).eval()
    _perturbed(wrapper)
    n = len(wrapper.units)
    with torch.no_grad():
        frozen = wrapper(x, policy=torch.ones(2, n))
        finetuned = wrapper(x, policy=torch.zeros(2, n))
        alone = wrapper.finetuned(x)
    alone = alone[0] if isinstance(alone, list) else alone
    assert frozen.shape == reference.shape
    assert torch.allclose(frozen, reference, atol=1e-6)
    assert torch.allclose(finetuned, alone, atol=1e-6) and not torch.allclose(finetuned, reference, atol=1e-3)


def test_one_unit_switched_uses_only_that_units_finetuned_weights():
    torch.manual_seed(0)
    net = nested_unet().eval()
    x = torch.randn(2, 1, 32, 32)
    wrapper = TracedSpotTUnet(net).eval()
    _perturbed(wrapper)
    policy = torch.ones(2, len(wrapper.units))
    policy[:, 1] = 0  # unit 1 fine-tuned, every other unit frozen
    expected = copy.deepcopy(net)
    site = dict((u, s) for s, u in wrapper.sites)[1]
    expected.get_submodule(site).load_state_dict(wrapper.finetuned.get_submodule(site).state_dict())
    with torch.no_grad():
        assert torch.allclose(wrapper(x, policy=policy), expected(x), atol=1e-6)


def test_strategy_picks_the_traced_wrapper_and_trains_only_finetuned_and_policy():
    net = encoder_decoder()
    strategy = make_strategy("spottune", net, "", {})
    wrapper = strategy.wrap(net)
    assert isinstance(wrapper, TracedSpotTUnet)
    names = wrapper.trainable_names()
    assert names and all(n.startswith(("finetuned.", "policy.")) for n in names)
    assert not any(p.requires_grad for p in wrapper.frozen.parameters())
    declared = make_strategy("spottune", build_model("dsa"), "dsa", {}).wrap(None)
    assert isinstance(declared, SpotTUnet)


def test_traced_spottune_learns_a_shifted_target():
    """Learning signal: on a target whose intensities are shifted, training the wrapper lowers the loss below the
    frozen source network's."""
    torch.manual_seed(0)
    net = nested_unet(out_channels=1)
    x = torch.rand(8, 1, 32, 32)
    y = (x > 0.5).float()
    opt = torch.optim.Adam(net.parameters(), lr=0.02)
    for _ in range(60):  # the source: threshold at 0.5
        opt.zero_grad()
        torch.nn.functional.binary_cross_entropy_with_logits(net(x), y).backward()
        opt.step()
    target_x = x * 0.5 + 0.4  # the target scanner: contrast and brightness changed
    wrapper = TracedSpotTUnet(net.eval())
    loss = torch.nn.functional.binary_cross_entropy_with_logits
    with torch.no_grad():
        before = loss(wrapper.eval()(target_x, policy=torch.ones(8, len(wrapper.units))), y).item()
    wrapper.train()
    opt = torch.optim.Adam([p for n, p in wrapper.named_parameters() if n in set(wrapper.trainable_names())], lr=0.01)
    for _ in range(60):
        opt.zero_grad()
        loss(wrapper(target_x), y).backward()
        opt.step()
    wrapper.eval()
    with torch.no_grad():
        after = loss(wrapper(target_x), y).item()
    assert after < 0.7 * before
