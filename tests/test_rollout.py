import pytest
import torch

from fastvideo_grpo.trainer import build_optimizer, plan_micro_batches, update_policy
from helpers import tiny_conditioning, tiny_policy, tiny_rollout

PROMPTS = ["a red ball", "a blue sky", "a green field"]


def test_group_shares_initial_noise_and_sde_noise_differs(tiny_cfg):
    g = tiny_cfg.sampling.group_size
    policy = tiny_policy(tiny_cfg)
    ro = tiny_rollout(tiny_cfg, policy, tiny_conditioning(tiny_cfg, PROMPTS, g), batch_size=2)
    x0 = ro.latents[:, 0]
    for group in range(len(PROMPTS)):
        members = x0[group * g:(group + 1) * g]
        assert all(torch.equal(members[0], m) for m in members[1:])
        after_first_step = ro.latents[group * g:(group + 1) * g, 1]
        assert not torch.allclose(after_first_step[0], after_first_step[1])
    assert not torch.allclose(x0[0], x0[g]) and not torch.allclose(x0[g], x0[2 * g])
    assert ro.latents.shape == (len(PROMPTS) * g, tiny_cfg.sampling.num_steps + 1,
                                *policy.latent_shape(tiny_cfg.sampling.num_frames, 32, 32))
    assert ro.log_probs.shape == (len(PROMPTS) * g, tiny_cfg.sampling.num_steps)
    assert torch.isfinite(ro.log_probs).all()


def test_independent_noise_ablation_gives_each_sample_its_own_start(tiny_cfg):
    g = tiny_cfg.sampling.group_size
    policy = tiny_policy(tiny_cfg)
    cond = tiny_conditioning(tiny_cfg, PROMPTS[:2], g)
    x0 = tiny_rollout(tiny_cfg, policy, cond, batch_size=2, shared_noise=False).latents[:, 0]
    distinct = {tuple(row.flatten()[:4].tolist()) for row in x0}
    assert len(distinct) == 2 * g
    per_sample = tiny_rollout(tiny_cfg, policy, cond, batch_size=5, shared_noise=False).latents[:, 0]
    assert torch.equal(per_sample, x0)


def test_rollout_does_not_depend_on_batch_size_or_repeat(tiny_cfg):
    policy = tiny_policy(tiny_cfg)
    cond = tiny_conditioning(tiny_cfg, PROMPTS[:2], tiny_cfg.sampling.group_size)
    one = tiny_rollout(tiny_cfg, policy, cond, batch_size=1)
    all_at_once = tiny_rollout(tiny_cfg, policy, cond, batch_size=8)
    torch.testing.assert_close(one.latents, all_at_once.latents, rtol=1e-5, atol=1e-5)
    assert torch.equal(tiny_rollout(tiny_cfg, policy, cond, batch_size=1).latents, one.latents)
    other_seed = tiny_rollout(tiny_cfg, policy, cond, batch_size=1, seed_parts=(0, 1, 0))
    assert not torch.allclose(other_seed.latents[:, 0], one.latents[:, 0])


@pytest.mark.parametrize("batch_size", ["one", "group"])
def test_ratio_is_exactly_one_before_first_update(tiny_cfg, batch_size):
    g = tiny_cfg.sampling.group_size
    tiny_cfg.sampling.rollout_batch_size = 1 if batch_size == "one" else g
    tiny_cfg.train.gradient_accumulation_steps = 1000  # the whole plan is one window: all before the step
    policy = tiny_policy(tiny_cfg)
    cond = tiny_conditioning(tiny_cfg, PROMPTS[:2], g)
    ro = tiny_rollout(tiny_cfg, policy, cond, batch_size=tiny_cfg.sampling.rollout_batch_size)
    plan = plan_micro_batches(ro, torch.ones(2 * g, dtype=torch.bool), tiny_cfg, (0, 0))
    optimizer, scheduler = build_optimizer(policy, tiny_cfg)
    advantages = torch.randn(2 * g)
    stats = update_policy(policy, None, optimizer, scheduler, ro, cond, advantages, plan, tiny_cfg)
    assert stats["ratio_dev_first_update"] == 0.0
    assert stats["optimizer_steps"] == 1
    # After that step the policy moved: the same plan no longer gives ratio 1.
    again = update_policy(policy, None, optimizer, scheduler, ro, cond, advantages, plan, tiny_cfg)
    assert again["ratio_dev_first_update"] > 0


def test_micro_batch_plan_mirrors_rollout_batches(tiny_cfg):
    tiny_cfg.sampling.group_size = g = 4
    policy = tiny_policy(tiny_cfg)
    cond = tiny_conditioning(tiny_cfg, PROMPTS[:2], g)
    ro = tiny_rollout(tiny_cfg, policy, cond, batch_size=3)  # 8 samples: batches of 3, 3, 2
    kept = torch.ones(2 * g, dtype=torch.bool)
    kept[[0, 7]] = False
    plan = plan_micro_batches(ro, kept, tiny_cfg, (0, 0))
    trained = int((tiny_cfg.sampling.num_steps - 1) * tiny_cfg.grpo.timestep_fraction)
    assert len(plan) == 3 * trained
    assert [mb.samples.tolist() for mb in plan[::trained]] == [[1, 2], [3, 4, 5], [6]]
    for start in range(0, len(plan), trained):
        steps = [mb.step for mb in plan[start:start + trained]]
        assert len(set(steps)) == trained and max(steps) < tiny_cfg.sampling.num_steps - 1


def test_accumulation_steps_every_leftover_window(tiny_cfg):
    g = tiny_cfg.sampling.group_size
    tiny_cfg.train.gradient_accumulation_steps = 3
    policy = tiny_policy(tiny_cfg)
    cond = tiny_conditioning(tiny_cfg, PROMPTS[:2], g)
    ro = tiny_rollout(tiny_cfg, policy, cond, batch_size=g)
    plan = plan_micro_batches(ro, torch.ones(2 * g, dtype=torch.bool), tiny_cfg, (0, 0))
    optimizer, scheduler = build_optimizer(policy, tiny_cfg)
    before = [p.detach().clone() for p in policy.transformer.parameters()]
    stats = update_policy(policy, None, optimizer, scheduler, ro, cond, torch.randn(2 * g), plan, tiny_cfg)
    assert stats["optimizer_steps"] == -(-len(plan) // 3)
    assert all(p.grad is None for p in policy.transformer.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, policy.transformer.parameters()))
