import statistics

import pytest
import torch

from fastvideo_grpo.algorithms import advantages, grpo
from fastvideo_grpo.algorithms.advantages import advantages_of
from fastvideo_grpo.config import Config
from fastvideo_grpo.parallel import World


def compute_advantages(rewards, weights, group_size, adv_clip_max, mode="group"):
    """The trainer's advantages (advantages.advantages_of) on one rank."""
    cfg = Config()
    cfg.reward.weights, cfg.sampling.group_size = weights, group_size
    cfg.policy_update.adv_clip_max, cfg.policy_update.advantage_mode = adv_clip_max, mode
    return advantages_of(rewards, cfg, World(0, 1, torch.device("cpu"), None)).advantages


def test_group_advantages_against_statistics_module():
    rewards = {"a": torch.tensor([1.0, 2.0, 4.0, 7.0, 0.5, 0.5, 0.5, 0.5]),
               "b": torch.tensor([0.0, 1.0, 0.0, 1.0, 3.0, 1.0, 2.0, 0.0])}
    weights = {"a": 1.0, "b": 0.5}
    got = compute_advantages(rewards, weights, group_size=4, adv_clip_max=100.0)
    expected = []
    for g in range(2):
        total = [0.0] * 4
        for name, w in weights.items():
            values = rewards[name][4 * g: 4 * g + 4].tolist()
            mean, std = statistics.mean(values), statistics.stdev(values)
            for i, r in enumerate(values):
                total[i] += w * (0.0 if std == 0 else (r - mean) / (std + 1e-8))
        expected += total
    torch.testing.assert_close(got, torch.tensor(expected), rtol=1e-6, atol=1e-6)


def test_zero_std_group_gives_zero_not_nan():
    # 0.1 is not exact in binary: a naive (r - mean) / (0 + 1e-8) gives rounding noise * 1e8.
    rewards = torch.tensor([0.1, 0.1, 0.1, 0.3, 0.2, 0.7])
    adv = advantages.normalize_rewards(rewards, group_size=3)
    assert torch.equal(adv[:3], torch.zeros(3))
    assert torch.isfinite(adv).all() and adv[3:].abs().sum() > 0
    assert advantages.zero_std_fraction(rewards, 3) == 0.5


def test_advantage_clip_and_batch_mode():
    rewards = {"r": torch.tensor([0.0, 0.0, 0.0, 10.0, 1.0, 1.0, 1.0, 1.0])}
    clipped = compute_advantages(rewards, {"r": 1.0}, 4, adv_clip_max=1.0)
    assert clipped.max().item() == 1.0 and clipped.min().item() >= -1.0
    batch = compute_advantages(rewards, {"r": 1.0}, 4, adv_clip_max=100.0, mode="batch")
    values = rewards["r"].tolist()
    mean, std = statistics.mean(values), statistics.stdev(values)
    torch.testing.assert_close(batch, torch.tensor([(r - mean) / (std + 1e-8) for r in values]))


def test_clipped_loss_value_and_gradient():
    # ratios 1.05, 0.85, 1.0, 1.3 with clip 0.1 and advantages +1, +1, -2, -1
    new = torch.log(torch.tensor([1.05, 0.85, 1.0, 1.3])).requires_grad_()
    adv = torch.tensor([1.0, 1.0, -2.0, -1.0])
    loss, ratio = grpo.clipped_loss(new, adv, clip_range=0.1)
    # per sample: max(-A r, -A clip(r)): -1.05 | max(-0.85, -0.9) | 2.0 | max(1.3, 1.1)
    assert loss.item() == pytest.approx((-1.05 - 0.85 + 2.0 + 1.3) / 4, rel=1e-6)
    loss.backward()
    # d/dlp of -A r is -A r; in each of these samples the unclipped term is the larger.
    expected = torch.tensor([-1.05, -0.85, 2.0, 1.3]) / 4
    torch.testing.assert_close(new.grad, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ratio, torch.tensor([1.05, 0.85, 1.0, 1.3]))


def test_clipped_loss_gradient_zero_outside_trust_region():
    new = torch.log(torch.tensor([1.5, 0.5])).requires_grad_()
    loss, _ = grpo.clipped_loss(new, torch.tensor([1.0, -1.0]), clip_range=0.2)
    loss.backward()
    assert torch.equal(new.grad, torch.zeros(2))


@pytest.mark.parametrize("num_steps,fraction", [(16, 0.6), (25, 0.6), (8, 0.3), (10, 1.0), (20, 0.4)])
def test_timestep_subset_sizes(num_steps, fraction):
    expected = int((num_steps - 1) * fraction)
    generator = torch.Generator().manual_seed(0)
    trainable = range(num_steps - 1)
    random = grpo.select_timesteps(trainable, fraction, "random", generator)
    assert len(random) == expected and len(set(random.tolist())) == expected
    assert random.min() >= 0 and random.max() < num_steps - 1
    assert grpo.select_timesteps(trainable, fraction, "first").tolist() == list(range(expected))
    assert grpo.select_timesteps(trainable, fraction, "last").tolist() == list(range(num_steps - 1 - expected, num_steps - 1))


def test_timesteps_of_a_window_are_drawn_from_the_window():
    window = range(5, 9)
    generator = torch.Generator().manual_seed(0)
    assert sorted(grpo.select_timesteps(window, 1.0, "random", generator).tolist()) == [5, 6, 7, 8]
    assert grpo.select_timesteps(window, 0.6, "first").tolist() == [5, 6]  # int(4 * 0.6)
    assert grpo.select_timesteps(window, 0.6, "last").tolist() == [7, 8]
    assert grpo.select_timesteps(range(3, 4), 0.3, "first").tolist() == [3]  # at least one


def test_random_timesteps_differ_between_draws():
    generator = torch.Generator().manual_seed(0)
    draws = {tuple(grpo.select_timesteps(range(15), 0.6, "random", generator).tolist()) for _ in range(5)}
    assert len(draws) > 1


def test_best_of_keeps_top_and_bottom_of_each_group():
    adv = torch.tensor([0.5, -1.0, 2.0, 0.1, -0.3, 1.5,   # group 0
                        3.0, 2.0, 1.0, 0.0, -1.0, -2.0])  # group 1
    idx = advantages.best_of_indices(adv, group_size=6, keep=4)
    # group 0: bottom two -1.0 (1), -0.3 (4); top two 2.0 (2), 1.5 (5)
    assert idx.tolist() == [1, 2, 4, 5, 6, 7, 10, 11]


def test_kl_to_reference_is_gaussian_kl():
    mean, ref = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    std = torch.tensor(0.3)
    expected = torch.distributions.kl_divergence(
        torch.distributions.Normal(mean, std), torch.distributions.Normal(ref, std)).mean(dim=(1, 2))
    torch.testing.assert_close(grpo.kl_to_reference(mean, ref, std), expected)
