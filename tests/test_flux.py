"""FLUX.1 T2I: the adapter against diffusers' FluxPipeline (packing, ids, sampling), its log-probs,
decode and configs. Training, export, LoRA, FSDP and the full path: test_families.py."""

import dataclasses

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline

from conftest import ROOT
from fastvideo_grpo.config import ConfigError, load_config
from fastvideo_grpo.models import build_policy, check_model_config
from fastvideo_grpo.models.flux.policy import image_ids, pack_latents, unpack_latents
from fastvideo_grpo.models.flux.tiny import tiny_model_config, write_folder as write_tiny_flux_folder
from fastvideo_grpo.models.tiny.hashing_text_encoder import TinyTextEncoder
from fastvideo_grpo.sampling.rollout import rollout

TINY = ROOT / "assets/configs/tiny_flux_t2i.yaml"


@pytest.fixture(scope="module")
def flux_folder(tmp_path_factory):
    return write_tiny_flux_folder(tmp_path_factory.mktemp("flux"))


def test_pack_unpack_round_trips_and_match_flux_pipeline():
    latents = torch.randn(2, 16, 8, 6)
    tokens = pack_latents(latents)
    assert tokens.shape == (2, 12, 64)
    assert torch.equal(tokens, FluxPipeline._pack_latents(latents, 2, 16, 8, 6))
    assert torch.equal(unpack_latents(tokens, 8, 6), latents)
    assert torch.equal(FluxPipeline._unpack_latents(tokens, 8 * 8, 6 * 8, 8), latents)
    expected_ids = FluxPipeline._prepare_latent_image_ids(2, 4, 3, torch.device("cpu"), torch.float32)
    assert torch.equal(image_ids(8, 6, torch.device("cpu")), expected_ids)


def test_ode_sampling_equals_flux_pipeline_with_flow_match_euler(flux_folder):
    """eta = 0 rollout == FluxPipeline (same transformer, FlowMatchEulerDiscreteScheduler on
    the same sigmas): packing, ids, timestep / 1000 and the guidance scale all agree."""
    model_cfg = tiny_model_config()
    model_cfg.size, model_cfg.path, model_cfg.dtype = "full", str(flux_folder), "fp32"
    policy = build_policy(model_cfg, torch.device("cpu"), 32, 32)
    cond = TinyTextEncoder(32, 32, max_tokens=12)(["a red ball on the floor"])
    num_steps, shift = 6, 3.0
    shape = policy.latent_shape(1, 64, 64)
    assert shape == (16, 8, 8)
    s = dataclasses.replace(load_config(TINY).sampling, num_steps=num_steps, shift=shift, eta=0.0, sde_type="dance",
                            group_size=1, rollout_batch_size=1)
    ours = rollout(policy, cond, s, shape, (0, 0), torch.device("cpu"))

    pipe = FluxPipeline.from_pretrained(flux_folder, transformer=policy.transformer,
                                        scheduler=FlowMatchEulerDiscreteScheduler(shift=1.0))
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe(prompt_embeds=cond.prompt_embeds, pooled_prompt_embeds=cond.pooled_embeds,
                  latents=pack_latents(ours.latents[:, 0]), sigmas=ours.schedule[:-1].float().tolist(),
                  num_inference_steps=num_steps, guidance_scale=3.5, height=64, width=64, output_type="latent").images
    torch.testing.assert_close(pack_latents(ours.final_latents), theirs, rtol=1e-5, atol=1e-5)
    assert not torch.equal(ours.latents[:, 0], ours.final_latents)


@pytest.mark.parametrize("batch_size", [1, 3])
def test_recomputed_log_probs_equal_the_rollouts_for_any_batch_size(batch_size):
    """The ratio before the first update is exactly 1 when training mirrors the rollout batches."""
    cfg = load_config(TINY)
    policy = build_policy(cfg.model, torch.device("cpu"), 32, 32)
    cond = TinyTextEncoder(32, 32, 32)(["a red ball"]).repeat_interleave(4)
    s = cfg.sampling
    s = dataclasses.replace(s, group_size=4, rollout_batch_size=batch_size)
    ro = rollout(policy, cond, s, policy.latent_shape(1, 64, 64), (0, 0), torch.device("cpu"))
    for batch in ro.batches:
        for k in range(s.num_steps):
            x = ro.latents[batch, k]
            step = ro.sampler.sde_step(policy.predict(x, float(ro.schedule[k]), cond.select(batch)), x, ro.schedule,
                                       k, prev_sample=ro.latents[batch, k + 1])
            assert torch.equal(step.log_prob, ro.log_probs[batch, k])


def test_decode_gives_one_frame_images():
    cfg = load_config(TINY)
    policy = build_policy(cfg.model, torch.device("cpu"), 32, 32)
    images = policy.decode(torch.randn(2, *policy.latent_shape(1, 64, 64)))
    assert images.dtype == torch.uint8 and images.shape == (2, 1, 64, 64, 3)
    with pytest.raises(ValueError, match="sampling.num_frames=5"):
        policy.latent_shape(5, 64, 64)


def test_sequence_parallel_is_refused_for_flux():
    with pytest.raises(ConfigError, match="parallel.sp_size.*'flux'"):
        check_model_config(load_config(TINY, ["parallel.sp_size=2"]))


def test_paper_config_plans_the_released_flux_on_one_frame_latents():
    from fastvideo_grpo.planning.policy import load_plan_config, planned_policy
    from fastvideo_grpo.rewards import check_reward_config

    cfg = load_plan_config(ROOT / "assets/configs/flux_t2i.yaml", ["reward.models.hps.path=/hps.pt",
                                                                   "reward.models.clip.path=/clip"])
    check_reward_config(cfg.reward)  # both reward sections, with their paths set
    policy, source = planned_policy(cfg)
    assert "released" in source and policy.transformer.config.guidance_embeds
    # Images: 16-channel latents at 1/8 of the size, no frame axis, as FluxPipeline makes them
    # (decode gives one-frame videos).
    s = cfg.sampling
    assert policy.latent_shape(s.num_frames, s.height, s.width) == (16, s.height // 8, s.width // 8)
    with pytest.raises(ConfigError, match="parallel.sp_size.*'flux'"):
        check_model_config(load_plan_config(ROOT / "assets/configs/flux_t2i.yaml", ["parallel.sp_size=2"]))
