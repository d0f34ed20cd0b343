import math

import pytest
import torch

from fastvideo_grpo.algorithms.grpo import plan_micro_batches
from fastvideo_grpo.algorithms.learner import build_optimizer
from helpers import run_update, tiny_conditioning, tiny_policy, tiny_rollout

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


@pytest.mark.parametrize("window", [0, 2], ids=["all_sde", "window_with_shared_prefix"])
def test_a_rollout_without_its_trajectory_scores_the_same_latents(tiny_cfg, window):
    import dataclasses

    from fastvideo_grpo.sampling.step_plan import build_step_plan

    g = tiny_cfg.sampling.group_size
    s = dataclasses.replace(tiny_cfg.sampling, sde_window_size=window, sde_window_schedule="fixed", sde_window_start=3)
    cfg = dataclasses.replace(tiny_cfg, sampling=s)
    policy = tiny_policy(cfg)
    cond = tiny_conditioning(cfg, PROMPTS[:2], g)
    plan = build_step_plan(s, 0)
    assert plan.prefix_steps == (3 if window else 0)
    full = tiny_rollout(cfg, policy, cond, batch_size=3, plan=plan)
    bare = tiny_rollout(cfg, policy, cond, batch_size=3, plan=plan, keep_trajectory=False)
    assert bare.latents is None and bare.log_probs is None
    assert torch.equal(bare.scored_latents, full.scored_latents) and bare.forward_rows == full.forward_rows
    with pytest.raises(ValueError, match="keep_trajectory"):
        bare.final_latents


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
    stats = run_update(policy, optimizer, scheduler, ro, cond, advantages, plan, tiny_cfg)
    assert stats["ratio_dev_first_update"] == 0.0
    assert stats["optimizer_steps"] == 1
    # After that step the policy moved: the same plan no longer gives ratio 1.
    again = run_update(policy, optimizer, scheduler, ro, cond, advantages, plan, tiny_cfg)
    assert again["ratio_dev_first_update"] > 0


def test_micro_batch_plan_counts_samples_and_mirrors_rollout_batches(tiny_cfg):
    tiny_cfg.sampling.group_size = g = 4
    tiny_cfg.train.gradient_accumulation_steps = 4
    policy = tiny_policy(tiny_cfg)
    cond = tiny_conditioning(tiny_cfg, PROMPTS[:2], g)
    ro = tiny_rollout(tiny_cfg, policy, cond, batch_size=3)  # 8 samples: batches of 3, 3, 2
    kept = torch.ones(2 * g, dtype=torch.bool)
    kept[[0, 7]] = False
    plan = plan_micro_batches(ro, kept, tiny_cfg, (0, 0))
    trained = int((tiny_cfg.sampling.num_steps - 1) * tiny_cfg.policy_update.timestep_fraction)
    # 6 kept samples, 4 per optimizer step: [1, 2, 3, 4] then [5, 6]; within a step, one
    # micro-batch per (rollout batch part, trained timestep).
    assert len(plan) == 2
    assert [[mb.samples.tolist() for mb in step[::trained]] for step in plan] == [[[1, 2], [3, 4]], [[5], [6]]]
    for step in plan:
        for start in range(0, len(step), trained):
            steps = [mb.step for mb in step[start:start + trained]]
            assert len(set(steps)) == trained and max(steps) < tiny_cfg.sampling.num_steps - 1
    # Rollout batch 1 ([3, 4, 5]) is split over both steps, at the same timesteps.
    assert [mb.step for mb in plan[0][trained:]] == [mb.step for mb in plan[1][:trained]]


@pytest.mark.parametrize("kept_count, per_step", [(8, 3), (8, 4), (8, 8), (6, 4), (2, 5)])
def test_optimizer_steps_per_iteration_count_samples(tiny_cfg, kept_count, per_step):
    """Every sample is trained at all its timesteps within one optimizer step, and an
    iteration takes ceil(kept / gradient_accumulation_steps) steps, leftovers included."""
    g = tiny_cfg.sampling.group_size
    tiny_cfg.train.gradient_accumulation_steps = per_step
    policy = tiny_policy(tiny_cfg)
    cond = tiny_conditioning(tiny_cfg, PROMPTS[:2], g)
    ro = tiny_rollout(tiny_cfg, policy, cond, batch_size=2)
    kept = torch.zeros(2 * g, dtype=torch.bool)
    kept[torch.randperm(2 * g, generator=torch.Generator().manual_seed(kept_count))[:kept_count]] = True
    plan = plan_micro_batches(ro, kept, tiny_cfg, (0, 0))
    trained = int((tiny_cfg.sampling.num_steps - 1) * tiny_cfg.policy_update.timestep_fraction)
    assert len(plan) == math.ceil(kept_count / per_step)
    seen = []
    for step in plan:
        samples = [i for mb in step for i in mb.samples.tolist()]
        distinct = sorted(set(samples))
        assert len(distinct) <= per_step
        assert all(samples.count(i) == trained for i in distinct)
        seen += distinct
    assert seen == torch.nonzero(kept).flatten().tolist()
    optimizer, scheduler = build_optimizer(policy, tiny_cfg)
    before = [p.detach().clone() for p in policy.transformer.parameters()]
    stats = run_update(policy, optimizer, scheduler, ro, cond, torch.randn(2 * g), plan, tiny_cfg)
    assert stats["optimizer_steps"] == math.ceil(kept_count / per_step)
    assert all(p.grad is None for p in policy.transformer.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, policy.transformer.parameters()))


def test_a_step_loss_is_the_mean_over_its_samples_and_timesteps(tiny_cfg):
    """The gradient of one optimizer step equals that of the mean clipped loss over its
    (sample, timestep) pairs computed one pair at a time (the reference's 1 / (GA * T))."""
    g = tiny_cfg.sampling.group_size
    tiny_cfg.train.gradient_accumulation_steps = 1000
    tiny_cfg.train.grad_clip = 1e9
    policy = tiny_policy(tiny_cfg)
    cond = tiny_conditioning(tiny_cfg, PROMPTS[:1], g)
    ro = tiny_rollout(tiny_cfg, policy, cond, batch_size=2)
    plan = plan_micro_batches(ro, torch.ones(g, dtype=torch.bool), tiny_cfg, (0, 0))
    advantages = torch.randn(g)
    pairs = [(i, mb.step) for mb in plan[0] for i in mb.samples.tolist()]
    for p in policy.transformer.parameters():
        p.grad = None
    for i, k in pairs:
        x, x_next = ro.latents[i:i + 1, k], ro.latents[i:i + 1, k + 1]
        step = ro.sampler.sde_step(policy.predict(x, float(ro.schedule[k]), cond.select([i])), x, ro.schedule, k,
                                   prev_sample=x_next)
        ratio = torch.exp(step.log_prob - ro.log_probs[i, k])
        clip = tiny_cfg.grpo.clip_range
        a = advantages[i]
        loss = torch.maximum(-a * ratio, -a * ratio.clamp(1 - clip, 1 + clip)).sum() / len(pairs)
        loss.backward()
    expected = [p.grad.clone() for p in policy.transformer.parameters()]
    grads = []
    optimizer, scheduler = build_optimizer(policy, tiny_cfg)
    optimizer.register_step_pre_hook(
        lambda *args: grads.extend(p.grad.clone() for p in policy.transformer.parameters()))
    for p in policy.transformer.parameters():
        p.grad = None
    run_update(policy, optimizer, scheduler, ro, cond, advantages, plan, tiny_cfg)
    for got, want in zip(grads, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-9)


def test_a_host_trajectory_trains_exactly_as_one_on_the_device(tiny_cfg):
    """sampling.trajectory_device=cpu keeps the latents and log-probs in host memory; the
    update moves each micro-batch's rows to the device. Same numbers either way."""
    g = tiny_cfg.sampling.group_size
    results = {}
    for where in ("device", "cpu"):
        tiny_cfg.sampling.trajectory_device = where
        policy = tiny_policy(tiny_cfg)
        cond = tiny_conditioning(tiny_cfg, PROMPTS[:2], g)
        ro = tiny_rollout(tiny_cfg, policy, cond, batch_size=g)
        assert ro.latents.device.type == "cpu" and ro.log_probs.device.type == "cpu"
        plan = plan_micro_batches(ro, torch.ones(2 * g, dtype=torch.bool), tiny_cfg, (0, 0))
        optimizer, scheduler = build_optimizer(policy, tiny_cfg)
        results[where] = (ro, run_update(policy, optimizer, scheduler, ro, cond, torch.linspace(-1, 1, 2 * g), plan,
                                         tiny_cfg), [p.detach().clone() for p in policy.transformer.parameters()])
    (ro_a, stats_a, weights_a), (ro_b, stats_b, weights_b) = results.values()
    assert torch.equal(ro_a.latents, ro_b.latents) and stats_a == stats_b
    assert all(torch.equal(a, b) for a, b in zip(weights_a, weights_b))


@pytest.mark.parametrize("every_micro_batch", [False, True])
def test_gradient_reduction_per_micro_batch_is_a_choice(tiny_cfg, monkeypatch, every_micro_batch):
    from fastvideo_grpo.algorithms import grpo

    tiny_cfg.parallel.reduce_grads_every_micro_batch = every_micro_batch
    tiny_cfg.train.gradient_accumulation_steps = 1000  # one optimizer step over every micro-batch
    calls = []
    monkeypatch.setattr(grpo, "set_gradient_sync", lambda model, enabled: calls.append(enabled))
    g = tiny_cfg.sampling.group_size
    policy = tiny_policy(tiny_cfg)
    cond = tiny_conditioning(tiny_cfg, PROMPTS[:1], g)
    ro = tiny_rollout(tiny_cfg, policy, cond, batch_size=g)
    plan = plan_micro_batches(ro, torch.ones(g, dtype=torch.bool), tiny_cfg, (0, 0))
    optimizer, scheduler = build_optimizer(policy, tiny_cfg)
    run_update(policy, optimizer, scheduler, ro, cond, torch.randn(g), plan, tiny_cfg)
    assert len(calls) == len(plan[0]) > 1
    assert calls == ([True] * len(calls) if every_micro_batch else [False] * (len(calls) - 1) + [True])


@pytest.mark.parametrize("setting,tiled", [("auto", False), ("on", True), ("off", False)])
def test_vae_tiling_follows_the_config(tiny_cfg, setting, tiled):
    tiny_cfg.model.vae_tiling = setting
    assert tiny_policy(tiny_cfg).vae.use_tiling is tiled  # auto: off for the tiny model, on at full size
