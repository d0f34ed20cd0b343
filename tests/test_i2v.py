"""HunyuanVideo image-to-video: first-frame latent conditioning and the latents' checks. Training,
export and LoRA: test_families.py."""

from dataclasses import replace

import pytest
import torch

from conftest import ROOT
from fastvideo_grpo.config import load_config
from fastvideo_grpo.data.embeddings import ImageLatents
from fastvideo_grpo.models.hunyuan_video_i2v.policy import HunyuanVideoI2VPolicy
from fastvideo_grpo.models.hunyuan_video.tiny import tiny_transformer, tiny_vae
from fastvideo_grpo.data.sources import build_prompt_source
from helpers import tiny_rollout, write_image_latents

TINY_I2V = ROOT / "assets/configs/tiny_i2v.yaml"


@pytest.fixture(scope="module")
def image_latents(tmp_path_factory):
    """One image per tiny prompt, encoded by preprocess_latents.py with the tiny HunyuanVideo VAE."""
    return write_image_latents(tmp_path_factory.mktemp("i2v"))


def i2v_config(out, image_latents, *overrides):
    return load_config(TINY_I2V, [f"train.output_dir={out}", f"data.image_latents_dir={image_latents}",
                                  f"data.prompts_file={ROOT / 'assets/prompts/tiny.txt'}", *overrides])


def policy_of(cfg, condition_type="token_replace"):
    m = cfg.model
    torch.manual_seed(m.init_seed)
    in_channels = 16 if condition_type == "token_replace" else 33
    transformer = tiny_transformer(m, m.tiny_text_dim, m.tiny_pooled_dim, in_channels=in_channels,
                                   image_condition_type=condition_type, guidance_embeds=False)
    return HunyuanVideoI2VPolicy(transformer, tiny_vae(m).eval(), m, torch.device("cpu"))


@pytest.mark.parametrize("condition_type", ["token_replace", "latent_concat"])
def test_conditioning_latent_reaches_the_transformer_input(tmp_path, image_latents, condition_type):
    cfg = i2v_config(tmp_path, image_latents, "model.cfg_scale=1.0")
    policy = policy_of(cfg, condition_type)
    cond = build_prompt_source(cfg).conditioning([0, 1])
    x = torch.randn(2, *policy.latent_shape(5, 32, 32), generator=torch.Generator().manual_seed(0))
    inputs = []
    policy.transformer.register_forward_pre_hook(lambda m, args, kw: inputs.append(kw["hidden_states"]),
                                                 with_kwargs=True)
    with torch.no_grad():
        out = policy.predict(x, 0.6, cond)
        other = policy.predict(x, 0.6, replace(cond, image_latents=cond.image_latents.flip(0)))
    image = cond.image_latents
    if condition_type == "token_replace":
        assert torch.equal(inputs[0][:, :, :1], image) and torch.equal(inputs[0][:, :, 1:], x[:, :, 1:])
    else:
        assert inputs[0].shape[1] == 33
        assert torch.equal(inputs[0][:, 16:32, :1], image) and not inputs[0][:, 16:32, 1:].any()
        assert inputs[0][:, 32, 0].eq(1).all() and not inputs[0][:, 32, 1:].any()
    assert not torch.allclose(out[:, :, 1:], other[:, :, 1:])


def test_decoded_first_frame_is_the_conditioning_image(tmp_path, image_latents):
    cfg = i2v_config(tmp_path, image_latents, "sampling.group_size=2")
    policy = policy_of(cfg)
    cond = build_prompt_source(cfg).conditioning([0, 1, 2]).repeat_interleave(2)
    ro = tiny_rollout(cfg, policy, cond, batch_size=6)
    for final in (ro.final_latents, ro.scored_latents):  # the trajectory's x_N and what is decoded
        torch.testing.assert_close(final[:, :, :1], cond.image_latents, rtol=0, atol=1e-6)
        assert not torch.allclose(final[0, :, 1:], final[1, :, 1:])  # the other frames are sampled
    # What is decoded is the last step's clean prediction, not the noisy x_N.
    n = cfg.sampling.num_steps
    x = ro.latents[:, n - 1]
    with torch.no_grad():
        v = policy.predict(x, float(ro.schedule[n - 1]), cond)
    torch.testing.assert_close(ro.scored_latents, x - float(ro.schedule[n - 1]) * v, rtol=1e-5, atol=1e-5)


def test_decoded_first_frame_follows_the_conditioning_image(tmp_path, image_latents):
    """Pixels: a sample's first frame changes less with the sampling seed than when its
    conditioning image is swapped for a random one. (The tiny VAE has random weights, so
    its decode is no reconstruction of the image itself; the latent-level test above is exact.)"""
    cfg = i2v_config(tmp_path, image_latents, "sampling.group_size=2")
    policy = policy_of(cfg)
    cond = build_prompt_source(cfg).conditioning([0, 1, 2, 3]).repeat_interleave(2)
    random_images = torch.rand(8, 3, 1, 32, 32, generator=torch.Generator().manual_seed(5)) * 2 - 1
    with torch.no_grad():
        random_latents = policy.vae.encode(random_images).latent_dist.mode() * policy.vae.config.scaling_factor

    def first_frames(c, seed):
        ro = tiny_rollout(cfg, policy, c, batch_size=8, seed_parts=(seed, 0, 0))
        return policy.decode(ro.scored_latents)[:, 0].float()

    sample = first_frames(cond, 0)
    other_seed = (sample - first_frames(cond, 1)).abs().mean()
    other_image = (sample - first_frames(replace(cond, image_latents=random_latents), 0)).abs().mean()
    assert other_seed < 0.75 * other_image


def test_latents_must_match_the_prompts(tmp_path, image_latents):
    (tmp_path / "two.txt").write_text("a red ball\na blue sky\n")
    cfg = i2v_config(tmp_path, image_latents, f"data.prompts_file={tmp_path / 'two.txt'}")
    with pytest.raises(ValueError, match=f"holds {len(ImageLatents(image_latents))} latents for 2 prompts"):
        build_prompt_source(cfg)
