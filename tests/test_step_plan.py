"""SDE windows (MixGRPO, Flow-GRPO-Fast), the ODE solver outside them, the shared prefix
and the transformer-row counts."""

import dataclasses

import pytest
import torch

from conftest import ROOT
from fastvideo_grpo.config import ConfigError, load_config
from fastvideo_grpo.sampling.sde import sigma_schedule
from fastvideo_grpo.sampling.seeding import Purpose, make_generator
from fastvideo_grpo.sampling.step_plan import build_step_plan
from fastvideo_grpo.algorithms.grpo import plan_micro_batches
from fastvideo_grpo.algorithms.learner import build_optimizer
from helpers import run_update, tiny_conditioning, tiny_policy, tiny_rollout

PROMPTS = ["a red ball", "a blue cube"]


def sampling(num_steps=8, **window):
    cfg = load_config(ROOT / "assets/configs/tiny_t2v.yaml", [f"sampling.num_steps={num_steps}"])
    return dataclasses.replace(cfg.sampling, **window)


@pytest.mark.parametrize("num_steps", [8, 16, 25, 50])
@pytest.mark.parametrize("window,post", [(1, 0), (4, 0), (4, 3)])
def test_every_window_position_ends_at_the_last_level(num_steps, window, post):
    s = sampling(num_steps, sde_window_size=window, post_window_steps=post)
    starts = set()
    for iteration in range(num_steps + 2):  # progressive: every start, then it wraps
        plan = build_step_plan(s, iteration)
        start = plan.sde_steps[0]
        end = min(start + window, num_steps - 1)  # cut at the last trainable step, as MixGRPO
        starts.add(start)
        assert plan.sde_steps == tuple(range(start, end)) == plan.trainable
        assert plan.visited[0] == 0 and plan.visited[-1] == num_steps  # noise to fully denoised
        assert list(plan.visited) == sorted(set(plan.visited))
        assert plan.visited[:end + 1] == tuple(range(end + 1))  # window levels unchanged
        tail = plan.num_transitions - end
        assert tail >= 1 and (post == 0 or tail <= post)
        assert max(plan.trainable) <= num_steps - 2  # the last transition is never trained
    assert starts == set(range(num_steps - 1))  # every start up to the last trainable step


def test_the_default_plan_is_every_step():
    plan = build_step_plan(sampling(8), 3)
    assert plan.visited == tuple(range(9)) and plan.sde_steps == tuple(range(8)) and plan.trainable == tuple(range(7))


def test_progressive_stride_every_and_fixed():
    s = sampling(16, sde_window_size=4, sde_window_stride=2, sde_window_every=3)
    # Starts 0..14 (up to the last trainable step), then back to 0; the last windows are cut at 14.
    plans = [build_step_plan(s, i) for i in range(0, 30, 3)]
    assert [p.sde_steps[0] for p in plans] == [0, 2, 4, 6, 8, 10, 12, 14, 0, 2]
    assert plans[6].sde_steps == (12, 13, 14) and plans[7].sde_steps == (14,)
    assert build_step_plan(s, 2).sde_steps == build_step_plan(s, 0).sde_steps  # moved every 3 iterations
    fixed = sampling(16, sde_window_size=4, sde_window_schedule="fixed", sde_window_start=11)
    assert {build_step_plan(fixed, i).sde_steps[0] for i in range(5)} == {11}


def test_random_windows_come_from_the_seeded_generator():
    s = sampling(16, sde_window_size=3, sde_window_schedule="random")
    starts = [build_step_plan(s, i, make_generator(42, i, Purpose.STEP_PLAN)).sde_steps[0] for i in range(40)]
    again = [build_step_plan(s, i, make_generator(42, i, Purpose.STEP_PLAN)).sde_steps[0] for i in range(40)]
    assert starts == again  # resume redraws the same windows
    assert len(set(starts)) > 5 and max(starts) <= 16 - 1 - 3


def test_post_window_steps_resample_the_rest_of_the_schedule():
    plan = build_step_plan(sampling(16, sde_window_size=4, post_window_steps=3), 0)
    assert plan.visited == (0, 1, 2, 3, 4, 8, 12, 16)


@pytest.mark.parametrize("override,key", [
    ("sampling.sde_window_size=8", "sampling.sde_window_size"),  # > num_steps - 1 = 7
    ("sampling.sde_window_stride=0", "sampling.sde_window_stride"),
    ("sampling.sde_window_every=0", "sampling.sde_window_every"),
    ("sampling.sde_window_start=5", "sampling.sde_window_start"),  # with window 4 of 8: at most 3
    ("sampling.post_window_steps=-1", "sampling.post_window_steps"),
])
def test_impossible_plans_are_config_errors(override, key):
    with pytest.raises(ConfigError, match=key):
        load_config(ROOT / "assets/configs/tiny_t2v.yaml", ["sampling.sde_window_size=4", override])


def windowed_cfg(tmp_path, *overrides):
    return load_config(ROOT / "assets/configs/tiny_t2v.yaml", [
        f"train.output_dir={tmp_path}", "sampling.group_size=4", "sampling.sde_window_size=2",
        "policy_update.timestep_fraction=1.0", *overrides])


@pytest.mark.parametrize("solver", ["euler", "dpmpp_2m"])
def test_windowed_rollout_is_finite_and_denoised_at_every_position(tmp_path, solver):
    cfg = windowed_cfg(tmp_path, f"sampling.ode_solver={solver}", "sampling.post_window_steps=2")
    policy = tiny_policy(cfg)
    cond = tiny_conditioning(cfg, PROMPTS[:1], 4)
    for iteration in range(cfg.sampling.num_steps - 2):
        plan = build_step_plan(cfg.sampling, iteration)
        ro = tiny_rollout(cfg, policy, cond, batch_size=4, plan=plan)
        assert ro.schedule[-1] == 0.0 and ro.latents.shape[1] == plan.num_transitions + 1
        assert torch.isfinite(ro.latents).all() and torch.equal(ro.scored_latents, ro.final_latents)
        sde = list(plan.sde_steps)
        assert torch.isfinite(ro.log_probs[:, sde]).all()
        assert torch.isnan(ro.log_probs[:, [j for j in range(plan.num_transitions) if j not in sde]]).all()


def test_the_shared_prefix_runs_once_per_group_and_equals_the_per_sample_ode(tmp_path):
    cfg = windowed_cfg(tmp_path, "sampling.sde_window_schedule=fixed", "sampling.sde_window_start=3")
    policy = tiny_policy(cfg)
    g = cfg.sampling.group_size
    cond = tiny_conditioning(cfg, PROMPTS, g)
    plan = build_step_plan(cfg.sampling, 0)
    ro = tiny_rollout(cfg, policy, cond, batch_size=1, plan=plan)
    # Rows: the 3 prefix steps once per group, the 2 window and 3 remaining steps per sample.
    assert ro.forward_rows == 2 * 3 + 2 * g * (2 + 3)
    prefix = ro.latents[:, :4]
    assert torch.equal(prefix, prefix[::g].repeat_interleave(g, dim=0))
    # The same prefix, computed sample by sample with Euler steps of the velocity.
    sigmas = sigma_schedule(cfg.sampling.num_steps, cfg.sampling.shift)
    with torch.no_grad():
        for i in (0, g):
            x = ro.latents[i:i + 1, 0]
            for k in range(3):
                x = x + (float(sigmas[k + 1]) - float(sigmas[k])) * policy.predict(x, float(sigmas[k]), cond.select([i]))
                torch.testing.assert_close(ro.latents[i:i + 1, k + 1], x, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("batch_size", ["one", "group"])
def test_windowed_ratio_is_exactly_one_before_the_first_update(tmp_path, batch_size):
    cfg = windowed_cfg(tmp_path, "sampling.sde_window_schedule=fixed", "sampling.sde_window_start=2",
                       "sampling.ode_solver=dpmpp_2m", "train.gradient_accumulation_steps=1000")
    g = cfg.sampling.group_size
    policy = tiny_policy(cfg)
    cond = tiny_conditioning(cfg, PROMPTS, g)
    plan = build_step_plan(cfg.sampling, 0)
    ro = tiny_rollout(cfg, policy, cond, batch_size=1 if batch_size == "one" else g, plan=plan)
    micro = plan_micro_batches(ro, torch.ones(2 * g, dtype=torch.bool), cfg, (0, 0))
    assert {mb.step for step in micro for mb in step} == {2, 3}  # only the window is trained
    optimizer, scheduler = build_optimizer(policy, cfg)
    stats = run_update(policy, optimizer, scheduler, ro, cond, torch.randn(2 * g), micro, cfg)
    assert stats["ratio_dev_first_update"] == 0.0
    assert stats["transformer_forwards_train"] == 2 * g * 2


def test_iteration_metrics_count_transformer_rows(tmp_path):
    from fastvideo_grpo.training.trainer import setup, train_iteration

    cfg = windowed_cfg(tmp_path, "train.iterations=1", "train.progress_bar=false", "sampling.post_window_steps=2",
                       "train.sample_every=0", "reward.mode=inline")
    c = setup(cfg)
    try:
        samples = cfg.train.prompts_per_iteration * cfg.sampling.group_size
        metrics = train_iteration(0, c, cfg)  # window 0..1: no prefix, 2 window + 2 post steps
        assert metrics["transformer_forwards_rollout"] == samples * 4
        assert metrics["transformer_forwards_train"] == samples * 2
        metrics = train_iteration(3, c, cfg)  # window 3..4: 3 prefix steps per group
        assert metrics["transformer_forwards_rollout"] == cfg.train.prompts_per_iteration * 3 + samples * 4
    finally:
        c.scorer.close()


@pytest.mark.parametrize("family", ["stable_diffusion", "flux"])
def test_windowed_cfg_rollout_counts_the_doubled_batch_as_rows(tmp_path, family):
    """Counted rows are the network's own batch rows: CFG runs [uncond; cond] in one call."""
    from test_cfg import conditioning, config, count_forwards

    cfg = config(tmp_path, family, 5.0, "sampling.sde_window_size=2", "sampling.ode_solver=dpmpp_2m",
                 "sampling.post_window_steps=2", "sampling.sde_window_schedule=fixed", "sampling.sde_window_start=1")
    policy = tiny_policy(cfg)
    batches = count_forwards(policy)
    cond = conditioning(cfg, cfg.sampling.group_size)
    ro = tiny_rollout(cfg, policy, cond, batch_size=4, plan=build_step_plan(cfg.sampling, 0))
    assert ro.forward_rows == sum(batches) == 2 * (2 * 1 + 8 * (2 + 2))  # prefix per group, then per sample
    assert torch.isfinite(ro.latents).all() and torch.isfinite(ro.log_probs[:, [1, 2]]).all()


def test_cps_windowed_training_keeps_the_exact_ratio(tmp_path):
    cfg = windowed_cfg(tmp_path, "sampling.sde_type=cps", "sampling.eta=0.5", "train.gradient_accumulation_steps=1000")
    policy = tiny_policy(cfg)
    cond = tiny_conditioning(cfg, PROMPTS, 4)
    ro = tiny_rollout(cfg, policy, cond, batch_size=4, plan=build_step_plan(cfg.sampling, 2))
    micro = plan_micro_batches(ro, torch.ones(8, dtype=torch.bool), cfg, (0, 0))
    optimizer, scheduler = build_optimizer(policy, cfg)
    stats = run_update(policy, optimizer, scheduler, ro, cond, torch.randn(8), micro, cfg)
    assert stats["ratio_dev_first_update"] == 0.0 and stats["optimizer_steps"] == 1
