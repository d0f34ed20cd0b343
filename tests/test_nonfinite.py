"""Nothing is trained on NaN: non-finite rewards, gradients, inputs and config numbers
are errors or counted skips, and nothing non-finite reaches a checkpoint or metrics.jsonl."""

import json
import math

import pytest
import torch

from conftest import ROOT
from fastvideo_grpo import rewards as reward_registry
from fastvideo_grpo.training import trainer
from fastvideo_grpo.algorithms import grpo
from fastvideo_grpo.checkpoint import latest_checkpoint
from fastvideo_grpo.training.run_state import save_run
from fastvideo_grpo.config import ConfigError, load_config
from fastvideo_grpo.rewards import RewardError
from fastvideo_grpo.rewards.rules import color_reward

SMALL = ["sampling.group_size=4", "sampling.rollout_batch_size=4", "sampling.decode_batch_size=4",
         "train.sample_every=0", "train.progress_bar=false", "checkpoint.every=0", "train.prompts_per_iteration=2",
         "reward.mode=inline"]


def small_cfg(out, *overrides):
    return load_config(ROOT / "assets/configs/tiny_t2v.yaml", [*SMALL, f"train.output_dir={out}", *overrides])


def strict_rows(path):
    """metrics.jsonl parsed as strict JSON: a bare NaN or Infinity is an error."""
    def reject(constant):
        raise ValueError(f"non-JSON constant {constant}")
    return [json.loads(line, parse_constant=reject) for line in path.read_text().splitlines()]


def nan_at(batch: int, row: int):
    """The colour reward, but NaN for one row of the `batch`-th batch it scores."""
    calls = []

    def reward(videos, prompts):
        scores = color_reward(videos, prompts)
        if len(calls) == batch:
            scores[row] = float("nan")
        calls.append(1)
        return scores
    return reward


def test_a_nan_reward_is_an_error_naming_reward_sample_and_prompt(tmp_path, monkeypatch):
    monkeypatch.setitem(reward_registry.REGISTRY, "color", reward_registry.rule_reward("color", nan_at(0, 1)))
    cfg = small_cfg(tmp_path, "train.iterations=2")
    with pytest.raises(RewardError, match=r"reward 'color' returned nan for sample 1 \(prompt '.+'\)"):
        trainer.train(cfg)
    assert not (tmp_path / "checkpoints").exists()  # nothing trained, nothing saved


def test_drop_group_leaves_the_group_out_and_counts_it(tmp_path, monkeypatch):
    # Sample 5: the second group of 4.
    monkeypatch.setitem(reward_registry.REGISTRY, "color", reward_registry.rule_reward("color", nan_at(1, 1)))
    cfg = small_cfg(tmp_path, "train.iterations=2", "reward.on_nonfinite=drop_group")
    c = trainer.setup(cfg)
    captured = {}
    original = grpo.update_policy

    def capture(learner, ro, cond, advantages, *args):
        captured["advantages"] = advantages.clone()
        return original(learner, ro, cond, advantages, *args)

    monkeypatch.setattr(grpo, "update_policy", capture)
    metrics = trainer.train_iteration(0, c, cfg)
    c.scorer.close()
    assert metrics["dropped_groups"] == 1
    assert torch.equal(captured["advantages"][4:8], torch.zeros(4))  # no gradient from the dropped group
    assert captured["advantages"][:4].abs().sum() > 0
    assert math.isfinite(metrics["loss"]) and math.isfinite(metrics["reward_mean"])
    assert all(math.isfinite(p.detach().sum()) for p in c.policy.transformer.parameters())


def test_nonfinite_gradients_skip_steps_then_stop_with_the_last_finite_weights(tmp_path, monkeypatch):
    """A NaN loss on every step: each step is skipped and counted; 3 in a row stop the run with
    a checkpoint of the (unchanged, finite) weights, metrics stay strict JSON."""
    original = grpo.clipped_loss

    def nan_loss(*args):
        loss, ratio = original(*args)
        return loss * float("nan"), ratio

    monkeypatch.setattr(grpo, "clipped_loss", nan_loss)
    cfg = small_cfg(tmp_path, "train.iterations=10", "train.max_nonfinite_steps=3",
                    "train.gradient_accumulation_steps=4")  # 8 samples: 2 optimizer steps per iteration
    initial = {k: v.clone() for k, v in trainer.setup(cfg).policy.transformer.state_dict().items()}
    trainer.shutdown()
    with pytest.raises(trainer.NonFiniteTraining, match="3 optimizer steps in a row .* iteration 1"):
        trainer.train(cfg)
    rows = strict_rows(tmp_path / "metrics.jsonl")
    assert [r["nonfinite_steps"] for r in rows] == [2, 1]  # the third in a row stops the update
    assert [r["optimizer_steps"] for r in rows] == [0, 0]
    assert all(r["loss"] is None for r in rows)  # NaN written as null
    checkpoint = latest_checkpoint(tmp_path)
    assert checkpoint.name == "step_2"
    from fastvideo_grpo.checkpoint import load_checkpoint
    from fastvideo_grpo.parallel import World

    c = trainer.setup(small_cfg(tmp_path / "other"))
    load_checkpoint(checkpoint, c.policy.transformer, c.optimizer, World(0, 1, torch.device("cpu"), None))
    for name, value in c.policy.transformer.state_dict().items():
        assert torch.equal(value, initial[name]), name  # skipped steps changed nothing


def test_one_nonfinite_step_is_skipped_and_training_goes_on(tmp_path, monkeypatch):
    original = grpo.clipped_loss
    calls = []

    def nan_once(*args):
        loss, ratio = original(*args)
        calls.append(1)
        return (loss * float("nan") if len(calls) == 1 else loss), ratio

    monkeypatch.setattr(grpo, "clipped_loss", nan_once)
    out = trainer.train(small_cfg(tmp_path, "train.iterations=2", "train.gradient_accumulation_steps=4"))
    rows = strict_rows(out / "metrics.jsonl")
    assert [r["nonfinite_steps"] for r in rows] == [1, 0]
    assert [r["optimizer_steps"] for r in rows] == [1, 2]
    assert all(math.isfinite(r["grad_norm"]) for r in rows)


def test_a_checkpoint_of_nonfinite_weights_is_refused(tmp_path):
    cfg = small_cfg(tmp_path, "train.iterations=1")
    c = trainer.setup(cfg)
    with torch.no_grad():
        next(c.policy.transformer.parameters())[0] = float("nan")
    with pytest.raises(trainer.NonFiniteTraining, match="hold NaN or inf; not checkpointing"):
        save_run(c, c.sampler, c.world, cfg, 1, None, {})
    c.scorer.close()
    assert latest_checkpoint(tmp_path) is None


@pytest.mark.parametrize("override, key", [("train.lr=.inf", "train.lr"), ("reward.weights={color: .nan}",
                                                                            "reward.weights.color"),
                                           ("grpo.clip_range=-.inf", "grpo.clip_range"),
                                           ("sampling.eta=nan", "sampling.eta")])
def test_nonfinite_config_numbers_are_config_errors(override, key):
    with pytest.raises(ConfigError, match=rf"{key}: expected a finite number"):
        load_config(ROOT / "assets/configs/tiny_t2v.yaml", [override])


def test_nan_bytes_in_an_embeddings_shard_name_the_shard_row_and_prompt(tmp_path):
    from fastvideo_grpo.data.embeddings import EmbeddingDataset, write_manifest, write_shard

    embeds = torch.randn(2, 4, 8)
    embeds[1, 2, 3] = float("nan")
    write_shard(tmp_path / "shard_00000.safetensors", {
        "prompt_embeds": embeds, "prompt_attention_mask": torch.ones(2, 4, dtype=torch.long),
        "pooled_prompt_embeds": torch.randn(2, 3), "token_count": torch.tensor([4, 4])})
    write_manifest(tmp_path, [{"prompt": "a red car", "shard": "shard_00000.safetensors", "row": 0},
                              {"prompt": "a blue sky", "shard": "shard_00000.safetensors", "row": 1}])
    dataset = EmbeddingDataset(tmp_path)
    assert torch.isfinite(dataset.conditioning([0]).prompt_embeds).all()
    with pytest.raises(ValueError, match=r"shard_00000.safetensors: prompt_embeds of row 1 \(prompt 1: 'a blue sky'\) "
                                         r"holds 1 non-finite"):
        dataset.conditioning([0, 1])
