"""The guards against the field's failure modes, each off by default: GRPO-Guard's ratio
normalisation and per-step reweighting, a scheduled or adaptive KL weight, a reference
that resets to the policy, early stop on the held-out evaluation with a marked best
checkpoint. Formulas against independent computations; the rest on real tiny runs."""

import json
import math

import pytest
import torch

from conftest import ROOT
from fastvideo_grpo.training import trainer
from fastvideo_grpo.algorithms import grpo
from fastvideo_grpo.checkpoint import best_checkpoint, latest_checkpoint
from fastvideo_grpo.config import ConfigError, load_config
from fastvideo_grpo.training.early_stop import EarlyStop, held_out_score
from fastvideo_grpo.training.outputs import append_metrics
from fastvideo_grpo.sampling.samplers import DDIMSampler, RectifiedFlowSampler
from fastvideo_grpo.sampling.sde import ddim_timesteps, sigma_schedule
from fastvideo_grpo.algorithms.learner import build_reference, reset_to_policy
from helpers import TIMING, read_jsonl, tiny_policy


def gaussian_log_prob(x, mean, std):
    """log N(x; mean, std^2) averaged over the elements of each row."""
    return (-((x - mean) ** 2) / (2 * std**2) - math.log(std) - 0.5 * math.log(2 * math.pi)).flatten(1).mean(1)


def test_normalized_log_ratio_is_the_unbiased_cross_term():
    torch.manual_seed(0)
    rows, dim, std = 20000, 6, 0.05
    old_mean = torch.randn(rows, dim)
    mean = old_mean + 0.02 * torch.randn(rows, dim)  # the policy moved a little
    sample = old_mean + std * torch.randn(rows, dim)  # what the old policy sampled
    log_ratio = gaussian_log_prob(sample, mean, std) - gaussian_log_prob(sample, old_mean, std)
    normalized = grpo.normalized_log_ratio(log_ratio, mean, old_mean, torch.tensor(std))
    cross = ((sample - old_mean) * (mean - old_mean)).mean(1) / std
    torch.testing.assert_close(normalized, cross, rtol=1e-4, atol=1e-6)
    # The plain log-ratio is biased below 0 by mean(d^2) / (2 std^2) (0.08 here); the normalised one is not.
    bias = ((mean - old_mean) ** 2).mean() / (2 * std**2)
    assert log_ratio.mean().item() == pytest.approx(-bias.item(), rel=0.05)
    assert abs(normalized.mean().item()) < 4 * normalized.std().item() / math.sqrt(rows)
    # Before the first update (policy = old policy) it is exactly 0: ratio 1.
    assert torch.equal(grpo.normalized_log_ratio(torch.zeros(3), old_mean[:3], old_mean[:3], torch.tensor(std)),
                       torch.zeros(3))


def samplers():
    from diffusers import DDPMScheduler

    sd = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    flow = sigma_schedule(12, 3.0)
    return {
        "dance": (RectifiedFlowSampler(flow, 0.3, "dance"), flow),
        "flow_grpo": (RectifiedFlowSampler(flow, 0.7, "flow_grpo"), flow),
        "cps": (RectifiedFlowSampler(flow, 0.7, "cps"), flow),
        "ddim": (DDIMSampler(ddim_timesteps(12, 1000, 1), 1.0, sd.alphas_cumprod, float(sd.alphas_cumprod[0])),
                 ddim_timesteps(12, 1000, 1)),
    }


@pytest.mark.parametrize("family", ["dance", "flow_grpo", "cps", "ddim"])
@pytest.mark.parametrize("ratio_norm", [False, True])
def test_step_weights_equalise_the_gradient_of_every_step(family, ratio_norm):
    """Autograd's gradient of each step's log-ratio with respect to the network output, at
    the same noise, differs by step by orders of magnitude; times the step's weight it is the
    same for all steps."""
    sampler, levels = samplers()[family]
    steps = list(range(10))  # CPS's last step is deterministic (std 0): not trainable
    torch.manual_seed(1)
    x, output0, eps = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4)
    norms = {}
    for j in steps:
        old = sampler.sde_step(output0, x, levels, j, noise=eps)
        output = output0.clone().requires_grad_()
        new = sampler.sde_step(output, x, levels, j, prev_sample=old.prev_sample)
        log_ratio = new.log_prob - old.log_prob
        if ratio_norm:
            log_ratio = grpo.normalized_log_ratio(log_ratio, new.mean, old.mean, new.std)
        (gradient,) = torch.autograd.grad(log_ratio.sum(), output)
        norms[j] = gradient.norm().item()
    weights = grpo.step_weights(grpo.step_gradient_scales(sampler, levels, steps, x[:1], ratio_norm))
    assert sum(weights.values()) / len(weights) == pytest.approx(1.0)
    weighted = [weights[j] * norms[j] for j in steps]
    assert max(norms.values()) / min(norms.values()) > 1.2  # there is something to equalise
    assert max(weighted) / min(weighted) == pytest.approx(1.0, abs=1e-4)


def test_kl_weight_schedules():
    assert grpo.linear_kl_weight(0.1, 0.0, 0, 5) == 0.1
    assert grpo.linear_kl_weight(0.1, 0.0, 4, 5) == 0.0
    assert grpo.linear_kl_weight(0.1, 0.3, 2, 5) == pytest.approx(0.2)
    # PPO's rule around a target of 0.01: above 0.015 doubles, below 0.00667 halves.
    assert grpo.adaptive_kl_weight(0.1, 0.02, 0.01) == 0.2
    assert grpo.adaptive_kl_weight(0.1, 0.005, 0.01) == 0.05
    assert grpo.adaptive_kl_weight(0.1, 0.012, 0.01) == 0.1


def guard_cfg(out, *overrides):
    return load_config(ROOT / "assets/configs/tiny_t2v.yaml", [
        f"train.output_dir={out}", "train.progress_bar=false", "reward.mode=inline", "train.sample_every=0",
        f"data.prompts_file={ROOT / 'assets/prompts/tiny.txt'}", "train.prompts_per_iteration=2",
        "sampling.num_steps=6", *overrides])


def comparable(rows):
    return [{k: v for k, v in r.items() if not k.startswith(TIMING)} for r in rows]


def test_ratio_normalisation_and_reweighting_train_with_ratio_one_at_the_first_update(tmp_path):
    plain = read_jsonl(trainer.train(guard_cfg(tmp_path / "plain", "train.iterations=2")) / "metrics.jsonl")
    guarded = read_jsonl(trainer.train(guard_cfg(tmp_path / "guard", "train.iterations=2", "grpo.ratio_norm=true",
                                                 "grpo.step_reweight=true")) / "metrics.jsonl")
    assert guarded[0]["ratio_dev_first_update"] == 0.0
    assert guarded[0]["reward_mean"] == plain[0]["reward_mean"]  # the same first rollout
    assert guarded[1]["reward_mean"] != plain[1]["reward_mean"]  # a different update
    assert all(math.isfinite(r["loss"]) and math.isfinite(r["grad_norm"]) for r in guarded)


def test_the_adaptive_kl_weight_follows_the_measured_kl(tmp_path):
    rows = read_jsonl(trainer.train(guard_cfg(tmp_path, "train.iterations=4", "grpo.kl_weight=0.5",
                                              "grpo.kl_schedule=adaptive", "grpo.kl_target=1e-6",
                                              "train.lr=1e-3")) / "metrics.jsonl")
    assert rows[0]["kl_weight"] == 0.5
    for before, after in zip(rows, rows[1:]):
        expected = before["kl_weight"] * (2 if before["kl"] > 1.5e-6 else 0.5 if before["kl"] < 1e-6 / 1.5 else 1)
        assert after["kl_weight"] == pytest.approx(expected)
    assert len({r["kl_weight"] for r in rows}) > 1


def test_the_linear_kl_schedule(tmp_path):
    rows = read_jsonl(trainer.train(guard_cfg(tmp_path, "train.iterations=3", "grpo.kl_weight=0.2",
                                              "grpo.kl_schedule=linear", "grpo.kl_weight_final=0.0"))
                      / "metrics.jsonl")
    assert [r["kl_weight"] for r in rows] == pytest.approx([0.2, 0.1, 0.0])


@pytest.mark.parametrize("lora", [0, 2])
def test_a_reset_copies_the_trained_weights_into_the_reference(tiny_cfg, lora):
    from fastvideo_grpo.models import model_family
    from fastvideo_grpo.models.lora import apply_lora

    policy = tiny_policy(tiny_cfg)
    if lora:
        apply_lora(policy.transformer, lora, lora, model_family(tiny_cfg.model).lora_targets)
    reference = build_reference(policy)
    with torch.no_grad():
        for p in policy.transformer.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p))
    trained = {n for n, p in policy.transformer.named_parameters() if p.requires_grad}
    ref = dict(reference.transformer.named_parameters())
    assert not any(torch.equal(ref[n], p) for n, p in policy.transformer.named_parameters() if n in trained)
    reset_to_policy(reference, policy)
    for name, p in policy.transformer.named_parameters():
        assert torch.equal(ref[name], p), name
        assert not ref[name].requires_grad


def test_a_resumed_run_with_resets_and_an_adaptive_weight_is_bit_exact(tmp_path):
    """The reset reference and the KL weight are checkpointed: resuming after a reset
    trains exactly as the uninterrupted run."""
    guards = ["grpo.kl_weight=0.5", "grpo.reference_reset_every=2", "grpo.kl_schedule=adaptive",
              "grpo.kl_target=1e-6", "train.lr=1e-3", "checkpoint.every=2"]
    straight = read_jsonl(trainer.train(guard_cfg(tmp_path / "a", "train.iterations=4", *guards)) / "metrics.jsonl")
    trainer.train(guard_cfg(tmp_path / "b", "train.iterations=2", *guards))
    resumed = read_jsonl(trainer.train(guard_cfg(tmp_path / "b", "train.iterations=4", *guards)) / "metrics.jsonl")
    assert [r["reference_reset"] for r in straight] == [0, 1, 0, 1]
    assert comparable(straight) == comparable(resumed)
    # Without the saved reference the resumed run's KL differs (the reference would be the initial model).
    assert straight[2]["kl"] != read_jsonl(trainer.train(guard_cfg(
        tmp_path / "c", "train.iterations=4", *guards[:1], *guards[2:])) / "metrics.jsonl")[2]["kl"]


def test_the_reference_resets_once_the_kl_exceeds_the_limit(tmp_path):
    rows = read_jsonl(trainer.train(guard_cfg(tmp_path, "train.iterations=3", "grpo.kl_weight=0.1",
                                              "grpo.reference_reset_kl=1e-12", "train.lr=1e-3")) / "metrics.jsonl")
    assert [r["reference_reset"] for r in rows] == [int(r["kl"] > 1e-12) for r in rows]
    assert rows[-1]["reference_reset"] == 1


def test_early_stop_counts_evaluations_below_the_best_by_the_margin(tiny_cfg):
    cfg = load_config(ROOT / "assets/configs/tiny_t2v.yaml", ["eval.every=1", "eval.early_stop_patience=2", "eval.early_stop_margin=0.1",
                             "reward.weights={a: 1.0, b: 0.5}"])
    stop = EarlyStop(cfg)
    scores = []
    # Evaluations after 1, 2, ... iterations (one after 0 is the untrained policy's: no candidate).
    for iteration, (a, b) in enumerate([(1.0, 0.0), (2.0, 0.0), (1.5, 0.2), (1.9, 0.2), (1.0, 0.0), (0.5, 0.0)],
                                       start=1):
        record = {"iteration": iteration, "eval/a_mean": a, "eval/b_mean": b}
        scores.append(held_out_score(record, cfg.reward.weights))
        best = stop.observe_eval(record)
        assert best == (scores[-1] == max(scores) and scores.count(max(scores)) == 1)
        # 1.6 is 0.4 below the best 2.0, 2.0 is within the margin: the count starts again.
        assert (stop.reason() is not None) == (iteration == 6)
    assert scores[2] == pytest.approx(1.6) and stop.best_iteration == 2


def test_early_stop_on_collapsing_diversity(tiny_cfg):
    cfg = load_config(ROOT / "assets/configs/tiny_t2v.yaml", ["eval.early_stop_diversity=0.5", "health.window=2"])
    stop = EarlyStop(cfg)
    for i, diversity in enumerate([1.0, 0.8, 0.7, 0.5, 0.35, 0.3]):
        stop.observe_iteration({"group_diversity": diversity})
        # Recent mean over the first window's mean (0.9): 0.6 / 0.9, then 0.425 / 0.9 < 0.5.
        assert (stop.reason() is not None) == (i >= 4), i


HELD_OUT = [1.0, 2.0, 1.5, 1.95, 1.0, 0.5, 3.0, 3.0, 3.0, 3.0]  # the held-out score after iteration i + 1


def fake_evaluation(out):
    def evaluate(policy, source, cfg, latent_shape, scorer, world, tracker, iteration):
        record = {"iteration": iteration, "eval/color_mean": HELD_OUT[iteration - 1]}
        append_metrics(out / "eval.jsonl", record)
        return record, []
    return evaluate


def test_early_stop_stops_with_a_checkpoint_and_marks_the_best(tmp_path, monkeypatch):
    out = tmp_path / "run"
    monkeypatch.setattr(trainer, "evaluate_in_loop", fake_evaluation(out))
    cfg = guard_cfg(out, "train.iterations=10", "eval.every=1", "eval.early_stop_patience=2",
                    "eval.early_stop_margin=0.1", "checkpoint.every=0", "checkpoint.keep_last=1")
    trainer.train(cfg)
    rows = read_jsonl(out / "metrics.jsonl")
    # Best 2.0 after iteration 2; 1.5 below it (1), 1.95 within the margin (0), 1.0 (1), 0.5 (2): stop after 6.
    assert [r["iteration"] for r in rows] == [0, 1, 2, 3, 4, 5]
    assert latest_checkpoint(out).name == "step_6"
    assert best_checkpoint(out).name == "step_2"  # kept although keep_last=1
    assert sorted(p.name for p in (out / "checkpoints").glob("step_*")) == ["step_2", "step_6"]
    health = json.loads((out / "health.json").read_text())
    assert health["early_stop"]["iteration"] == 5
    assert "eval.early_stop_patience=2" in health["early_stop"]["reason"]
    assert health["best_eval"]["iteration"] == 2

    # Resuming a stopped run trains nothing more.
    trainer.train(cfg)
    assert len(read_jsonl(out / "metrics.jsonl")) == 6

    from diffusers import HunyuanVideoTransformer3DModel

    from fastvideo_grpo.cli.export import main as export_main

    def exported(*checkpoint):
        folder = tmp_path / "export" / str(len(list((tmp_path / "export").glob("*"))) if (tmp_path / "export").is_dir() else 0)
        assert export_main(["--checkpoint", *checkpoint, "--output", str(folder)]) == 0
        return HunyuanVideoTransformer3DModel.from_pretrained(folder, subfolder="transformer").state_dict()

    best, step_2, last = exported(str(out), "--best"), exported(str(out / "checkpoints" / "step_2")), exported(str(out))
    assert all(torch.equal(best[k], step_2[k]) for k in best)
    assert not all(torch.equal(best[k], last[k]) for k in best)


def test_export_best_of_a_run_without_one_names_the_missing_file(tmp_path):
    trainer.train(guard_cfg(tmp_path / "run", "train.iterations=1"))
    from fastvideo_grpo.cli.export import main as export_main

    with pytest.raises(FileNotFoundError, match=r"checkpoints/best does not exist"):
        export_main(["--checkpoint", str(tmp_path / "run"), "--best", "--output", str(tmp_path / "out")])


@pytest.mark.parametrize("overrides,key", [
    (["grpo.kl_schedule=adaptive", "grpo.kl_weight=0.1"], "grpo.kl_target"),
    (["grpo.reference_reset_every=5"], "grpo.kl_weight"),
    (["grpo.kl_schedule=linear"], "grpo.kl_weight"),
    (["train.algorithm=nft", "sampling.shared_noise=false", "grpo.ratio_norm=true"], "grpo.ratio_norm"),
    (["eval.early_stop_patience=3"], "eval.early_stop_patience"),
    (["eval.early_stop_diversity=1.5"], "eval.early_stop_diversity"),
    (["eval.every=2", "eval.early_stop_margin=-1"], "eval.early_stop_margin"),
])
def test_guard_config_errors_name_the_key(overrides, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(ROOT / "assets/configs/tiny_t2v.yaml", overrides)


GUARDS = ("grpo.ratio_norm=true", "grpo.step_reweight=true", "grpo.kl_weight=0.5", "grpo.kl_schedule=adaptive",
          "grpo.kl_target=1e-6", "grpo.reference_reset_every=2")


def test_two_ranks_with_every_guard_match_one_rank(one_rank_run, tmp_path):
    """The reference resets shard to shard under FSDP2, the step means and weights are per
    sample: two data-parallel ranks train what one does."""
    from helpers import COMMON, DIST, assert_same_training, run

    one = one_rank_run(ROOT / "assets/configs/tiny_t2v.yaml", *COMMON, "train.prompts_per_iteration=2", *GUARDS)
    run([DIST / "train_run.py", *COMMON, "train.prompts_per_iteration=1", *GUARDS, f"train.output_dir={tmp_path}"],
        nproc=2)
    assert_same_training(one, tmp_path)
    assert [r["reference_reset"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [0, 1, 0]
