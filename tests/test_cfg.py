"""Classifier-free guidance: one batched forward, ratio 1 before the first update, one
optimizer step per iteration, and the empty-prompt embedding from preprocessing."""

import sys

import pytest
import torch

from conftest import ROOT
from fastvideo_grpo.config import load_config
from fastvideo_grpo.data.embeddings import NEGATIVE, EmbeddingDataset, TinyRandomPrompts
from fastvideo_grpo.models.tiny.hashing_text_encoder import TinyTextEncoder
from fastvideo_grpo.algorithms.grpo import plan_micro_batches
from fastvideo_grpo.algorithms.learner import build_optimizer
from helpers import run_update, tiny_policy, tiny_rollout

sys.path.insert(0, str(ROOT / "data_preprocess"))
CONFIGS = {"stable_diffusion": "tiny_sd_t2i.yaml", "hunyuan_video": "tiny_t2v.yaml", "flux": "tiny_flux_t2i.yaml"}
PROMPTS = ["a red ball", "a blue sky"]


def config(tmp_path, family, cfg_scale, *overrides):
    return load_config(ROOT / "assets/configs" / CONFIGS[family], [
        f"train.output_dir={tmp_path / 'run'}", "train.progress_bar=false", f"model.cfg_scale={cfg_scale}",
        "sampling.group_size=4", "sampling.rollout_batch_size=4", *overrides])


def conditioning(cfg, group_size):
    encoder = TinyTextEncoder(cfg.model.tiny_text_dim, cfg.model.tiny_pooled_dim, cfg.data.max_text_tokens)
    return TinyRandomPrompts(PROMPTS, encoder).conditioning([0, 1]).repeat_interleave(group_size)


def count_forwards(policy) -> list[int]:
    """Batch sizes of the network's forward calls."""
    batches = []
    policy.transformer.register_forward_pre_hook(
        lambda module, args, kwargs: batches.append((args[0] if args else kwargs["hidden_states"]).shape[0]),
        with_kwargs=True)
    return batches


@pytest.mark.parametrize("family", sorted(CONFIGS))
def test_guided_prediction_is_one_forward_of_both_branches(tmp_path, family):
    cfg = config(tmp_path, family, 4.5)
    policy = tiny_policy(cfg)
    cond = conditioning(cfg, 2)
    shape = policy.latent_shape(cfg.sampling.num_frames, cfg.sampling.height, cfg.sampling.width)
    x = torch.randn(4, *shape, generator=torch.Generator().manual_seed(1))
    t = float(policy.sampler(cfg.sampling).levels[2])
    batches = count_forwards(policy)
    with torch.no_grad():
        guided = policy.predict(x, t, cond)
        assert batches == [8]
        policy.cfg_scale = 1.0  # two separate plain forwards
        conditional = policy.predict(x, t, cond)
        unconditional = policy.predict(x, t, cond.negative)
    torch.testing.assert_close(guided, unconditional + 4.5 * (conditional - unconditional), rtol=1e-4, atol=1e-5)
    assert not torch.allclose(conditional, unconditional)


@pytest.mark.parametrize("family", sorted(CONFIGS))
@pytest.mark.parametrize("cfg_scale", [1.0, 5.0])
def test_ratio_is_exactly_one_before_the_first_update(tmp_path, family, cfg_scale):
    cfg = config(tmp_path, family, cfg_scale, "train.gradient_accumulation_steps=1000")
    policy = tiny_policy(cfg)
    cond = conditioning(cfg, cfg.sampling.group_size)
    ro = tiny_rollout(cfg, policy, cond, batch_size=cfg.sampling.rollout_batch_size)
    assert torch.isfinite(ro.log_probs).all()
    plan = plan_micro_batches(ro, torch.ones(len(ro.latents), dtype=torch.bool), cfg, (0, 0))
    optimizer, scheduler = build_optimizer(policy, cfg)
    stats = run_update(policy, optimizer, scheduler, ro, cond, torch.randn(len(ro.latents)), plan, cfg)
    assert stats["ratio_dev_first_update"] == 0.0


@pytest.mark.parametrize("cfg_scale", [5.0, 1.0])
@pytest.mark.parametrize("per_step", [2, 1000])
def test_optimizer_steps_follow_gradient_accumulation_with_and_without_cfg(tmp_path, cfg_scale, per_step):
    """CFG is no special case: gradient_accumulation_steps = the kept samples per rank gives
    the paper's one step per iteration, a smaller value more steps."""
    cfg = config(tmp_path, "stable_diffusion", cfg_scale, f"train.gradient_accumulation_steps={per_step}")
    policy = tiny_policy(cfg)
    cond = conditioning(cfg, cfg.sampling.group_size)
    ro = tiny_rollout(cfg, policy, cond, batch_size=cfg.sampling.rollout_batch_size)
    samples = len(ro.latents)
    plan = plan_micro_batches(ro, torch.ones(samples, dtype=torch.bool), cfg, (0, 0))
    optimizer, scheduler = build_optimizer(policy, cfg)
    steps = []
    optimizer.register_step_post_hook(lambda *args: steps.append(1))
    stats = run_update(policy, optimizer, scheduler, ro, cond, torch.randn(samples), plan, cfg)
    expected = -(-samples // per_step)
    assert len(steps) == stats["optimizer_steps"] == expected
    if expected == 1:  # every micro-batch is trained against the old policy: no ratio moves
        assert stats["ratio_max_dev"] == 0.0


def test_cfg_without_negative_embeddings_names_the_missing_file(tmp_path):
    cfg = config(tmp_path, "stable_diffusion", 5.0)
    policy = tiny_policy(cfg)
    cond = conditioning(cfg, 1)
    cond.negative = None
    with pytest.raises(ValueError, match=NEGATIVE):
        policy.predict(torch.zeros(2, *policy.latent_shape(1, 64, 64)), 981.0, cond)


def test_tiny_prompts_negative_is_the_encoded_empty_prompt(tmp_path):
    cfg = config(tmp_path, "stable_diffusion", 5.0)
    encoder = TinyTextEncoder(cfg.model.tiny_text_dim, cfg.model.tiny_pooled_dim, cfg.data.max_text_tokens)
    cond = TinyRandomPrompts(PROMPTS, encoder).conditioning([1, 0, 1])
    empty = encoder([""])
    assert cond.negative.prompt_embeds.shape == cond.prompt_embeds.shape
    for row in range(3):
        assert torch.equal(cond.negative.prompt_embeds[row], empty.prompt_embeds[0])
        assert torch.equal(cond.negative.attention_mask[row], empty.attention_mask[0])
    selected = cond.repeat_interleave(2).select([5])
    assert torch.equal(selected.prompt_embeds, cond.prompt_embeds[2:3])
    assert torch.equal(selected.negative.prompt_embeds, empty.prompt_embeds)


def test_preprocessing_writes_the_pipelines_unconditional_embedding(tmp_path):
    from diffusers import StableDiffusionPipeline

    import preprocess_sd_embeddings as sd_cli
    from fastvideo_grpo.models.stable_diffusion.tiny import write_folder as write_tiny_sd_folder

    folder = write_tiny_sd_folder(tmp_path / "sd")
    (tmp_path / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    sd_cli.run(["--model-path", str(folder), "--prompts", str(tmp_path / "prompts.txt"), "--output",
                str(tmp_path / "emb"), "--dtype", "fp32", "--device", "cpu"])
    assert (tmp_path / "emb" / NEGATIVE).is_file()
    data = EmbeddingDataset(tmp_path / "emb")
    cond = data.conditioning([0, 1])
    pipe = StableDiffusionPipeline.from_pretrained(folder, unet=None, vae=None)
    with torch.no_grad():
        embeds, negative = pipe.encode_prompt(PROMPTS, "cpu", 1, do_classifier_free_guidance=True)
    assert torch.equal(cond.prompt_embeds, embeds)
    assert torch.equal(cond.negative.prompt_embeds, negative)


def test_negative_of_another_shape_names_the_file(tmp_path):
    from fastvideo_grpo.data.embeddings import write_manifest, write_shard
    from fastvideo_grpo.data.preprocess import text_shard_tensors

    write_shard(tmp_path / "shard_00000.safetensors",
                text_shard_tensors(torch.zeros(2, 4, 8), torch.ones(2, 4, dtype=torch.long), torch.zeros(2, 0)))
    write_shard(tmp_path / NEGATIVE,
                text_shard_tensors(torch.zeros(1, 5, 8), torch.ones(1, 5, dtype=torch.long), torch.zeros(1, 0)))
    write_manifest(tmp_path, [{"id": i, "prompt": p, "shard": "shard_00000.safetensors", "row": i}
                              for i, p in enumerate(PROMPTS)])
    with pytest.raises(ValueError, match=NEGATIVE):
        EmbeddingDataset(tmp_path)
