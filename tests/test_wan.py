"""Wan2.1 T2V: the adapter against diffusers' WanPipeline (its flow-matching timesteps and shift,
classifier-free guidance with the negative prompt, latent normalisation, encode_prompt), the
released sizes and their FLOP counts, LoRA's modules, NFT's refusal of guidance and the export CLI.
What every family passes (GRPO, resume, NFT, export, LoRA export, the full path from the tiny
folder): test_families.py."""

from __future__ import annotations

import dataclasses
import functools
import subprocess
import sys

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline, WanTransformer3DModel

from conftest import ROOT
from fastvideo_grpo.checkpoint import latest_checkpoint
from fastvideo_grpo.config import ConfigError, load_config
from fastvideo_grpo.data.embeddings import EmbeddingDataset
from fastvideo_grpo.models import FAMILIES, TextConditioning, build_policy
from fastvideo_grpo.models.flop_count import counter
from fastvideo_grpo.models.wan.published import WAN21_T2V_1_3B, WAN21_T2V_14B, WAN21_VAE
from fastvideo_grpo.models.wan.tiny import TEXT_DIM, tiny_model_config, write_folder
from fastvideo_grpo.sampling.rollout import rollout
from fastvideo_grpo.training.trainer import train
from helpers import COMMON, DIST, assert_same_training, run, tiny_policy

sys.path.insert(0, str(ROOT / "data_preprocess"))
TINY = ROOT / "assets/configs/tiny_wan_t2v.yaml"
PROMPTS = ROOT / "assets/prompts/tiny.txt"
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def wan_folder(tmp_path_factory):
    return write_folder(tmp_path_factory.mktemp("wan") / "model")


def folder_policy(folder, **overrides):
    model_cfg = dataclasses.replace(tiny_model_config(), size="full", path=str(folder), dtype="fp32", **overrides)
    return build_policy(model_cfg, CPU, TEXT_DIM, 0)


def pipeline_conditioning(pipe, prompt: str, tokens: int) -> TextConditioning:
    """WanPipeline.encode_prompt's embeddings of `prompt` and of the empty negative prompt."""
    with torch.no_grad():
        embeds, negative = pipe.encode_prompt(prompt, negative_prompt="", max_sequence_length=tokens, device="cpu")

    def conditioning(e: torch.Tensor) -> TextConditioning:
        return TextConditioning(e, (e.abs().sum(-1) > 0).long(), torch.zeros(1, 0))

    cond = conditioning(embeds)
    cond.negative = conditioning(negative)
    return cond


@pytest.mark.parametrize("guidance", [1.0, 5.0])
def test_ode_rollout_equals_wan_pipeline_with_flow_match_euler(wan_folder, guidance):
    """eta = 0 with the Euler solver == WanPipeline's own latents, with FlowMatchEulerDiscreteScheduler
    of the same shift on the same (unshifted) levels: timestep sigma * 1000, the guided
    prediction uncond + g * (cond - uncond) against the negative prompt's embeddings."""
    num_steps, shift = 4, 3.0
    policy = folder_policy(wan_folder, cfg_scale=guidance)
    pipe = WanPipeline.from_pretrained(wan_folder, transformer=policy.transformer,
                                       scheduler=FlowMatchEulerDiscreteScheduler(shift=shift))
    pipe.set_progress_bar_config(disable=True)
    cond = pipeline_conditioning(pipe, "a red ball on the floor", 16)
    s = dataclasses.replace(load_config(TINY).sampling, num_steps=num_steps, shift=shift, eta=0.0, sde_type="dance",
                            ode_solver="euler", group_size=1, rollout_batch_size=1)
    shape = policy.latent_shape(5, 32, 32)
    assert shape == (16, 2, 4, 4)
    ours = rollout(policy, cond, s, shape, (0, 0), CPU)

    # The pipeline sets the scheduler's default levels; ours are linspace(1, 0) shifted.
    levels = torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float64)[:-1].tolist()
    pipe.scheduler.set_timesteps = functools.partial(pipe.scheduler.set_timesteps, sigmas=levels)
    theirs = pipe(prompt_embeds=cond.prompt_embeds, negative_prompt_embeds=cond.negative.prompt_embeds,
                  latents=ours.latents[:, 0], num_inference_steps=num_steps, guidance_scale=guidance, height=32,
                  width=32, num_frames=5, output_type="latent").frames
    torch.testing.assert_close(pipe.scheduler.sigmas[:-1].double(), ours.schedule[:-1], rtol=0, atol=1e-7)
    torch.testing.assert_close(ours.final_latents, theirs, rtol=1e-5, atol=1e-5)
    assert not torch.equal(ours.latents[:, 0], ours.final_latents)


def test_guidance_moves_the_prediction_toward_the_prompt(wan_folder):
    """cfg_scale g: uncond + g * (cond - uncond), the network run on [negative; prompt]."""
    pipe = WanPipeline.from_pretrained(wan_folder, transformer=None, vae=None)
    cond = pipeline_conditioning(pipe, "a red ball on the floor", 16)
    guided, plain = folder_policy(wan_folder, cfg_scale=5.0), folder_policy(wan_folder, cfg_scale=1.0)
    x = torch.randn(1, 16, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        conditional = plain.predict(x, 0.6, cond)
        unconditional = plain.predict(x, 0.6, cond.negative)
        expected = unconditional + 5.0 * (conditional - unconditional)
        torch.testing.assert_close(guided.predict(x, 0.6, cond), expected, rtol=1e-5, atol=1e-5)
    assert (conditional - unconditional).abs().max() > 1e-3


def test_decode_unnormalises_the_latents_as_the_pipeline(wan_folder):
    """WanPipeline's frames (output_type="np", [0, 1]) == the adapter's decode of the same
    latents (uint8), one step of the pipeline's own scheduler."""
    policy = folder_policy(wan_folder, cfg_scale=1.0)
    pipe = WanPipeline.from_pretrained(wan_folder, transformer=policy.transformer, vae=policy.vae)
    pipe.set_progress_bar_config(disable=True)
    cond = pipeline_conditioning(pipe, "a blue ocean wave", 16)
    inputs = dict(prompt_embeds=cond.prompt_embeds, num_inference_steps=1, guidance_scale=1.0, height=32, width=32,
                  num_frames=5, generator=torch.Generator().manual_seed(0))
    latents = pipe(**inputs, output_type="latent").frames
    inputs["generator"] = torch.Generator().manual_seed(0)
    frames = pipe(**inputs, output_type="np").frames
    ours = policy.decode(latents)
    assert ours.shape == frames.shape == (1, 5, 32, 32, 3) and ours.dtype == torch.uint8
    np.testing.assert_allclose(ours.numpy() / 255.0, frames, atol=1 / 255 + 1e-6)
    assert ours.float().std() > 0


def test_embeddings_of_another_width_and_sizes_wan_cannot_make_are_refused(wan_folder):
    model_cfg = dataclasses.replace(tiny_model_config(), size="full", path=str(wan_folder), dtype="fp32")
    with pytest.raises(ConfigError, match=rf"the text embeddings \(data.embeddings_dir\) of width 16 do not match "
                                          rf"model.path={wan_folder}: its transformer takes 32-dim UMT5 embeddings"):
        build_policy(model_cfg, CPU, 16, 0)
    policy = build_policy(model_cfg, CPU, TEXT_DIM, 0)
    assert policy.latent_shape(81, 480, 832) == (16, 21, 60, 104)
    for frames, height, width in ((80, 480, 832), (81, 488, 832), (81, 480, 840)):
        with pytest.raises(ValueError, match=rf"sampling.height/width/num_frames={height}x{width}x{frames}: Wan "
                                             r"needs height and width multiples of 16 and 16 and num_frames 1 \+ a "
                                             r"multiple of 4"):
            policy.latent_shape(frames, height, width)


def test_preprocessing_writes_what_encode_prompt_returns_bitwise(wan_folder, tmp_path):
    import preprocess_wan_embeddings as cli

    prompts = ["a red ball bouncing on the floor", "  a blue   ocean wave &amp; wind", " ".join(["red"] * 20)]
    (tmp_path / "prompts.txt").write_text("\n".join(prompts) + "\n")
    assert cli.run(["--model-path", str(wan_folder), "--prompts", str(tmp_path / "prompts.txt"), "--output",
                    str(tmp_path / "emb"), "--max-tokens", "16", "--dtype", "fp32", "--device", "cpu"]) == 0
    data = EmbeddingDataset(tmp_path / "emb")
    pipe = WanPipeline.from_pretrained(wan_folder, transformer=None, vae=None)
    with torch.no_grad():
        embeds, negative = pipe.encode_prompt(prompts, negative_prompt="", max_sequence_length=16, device="cpu")
    cond = data.conditioning([0, 1, 2])
    assert torch.equal(cond.prompt_embeds, embeds)
    assert cond.pooled_embeds.shape == (3, 0)
    # The cleaned prompts' tokens ("&amp;" -> "&", unknown to the tiny vocabulary), then zeros.
    assert cond.attention_mask.sum(1).tolist() == [8, 7, 16]
    assert not embeds[0, 8:].any() and embeds[0, :8].abs().sum(-1).gt(0).all()
    assert torch.equal(cond.negative.prompt_embeds, negative.expand(3, -1, -1))


def test_released_sizes_match_the_model_cards_and_count_their_flops():
    """1.3B and 14B built on the meta device from the published configs: the model cards'
    parameter counts, and the FLOP formula against FlopCounterMode at 480x832x81."""
    latent, text = (16, 21, 60, 104), 512
    for config, parameters in ((WAN21_T2V_1_3B, 1.42e9), (WAN21_T2V_14B, 1.43e10)):
        with torch.device("meta"):
            network = WanTransformer3DModel(**config)
            with torch.no_grad(), counter() as count:
                network(torch.empty(1, *latent), torch.ones(1), torch.empty(1, text, 4096), return_dict=False)
        assert sum(p.numel() for p in network.parameters()) == pytest.approx(parameters, rel=0.01)
        assert FAMILIES["wan"].forward_flops(network, latent, text) == pytest.approx(count.get_total_flops(),
                                                                                      rel=0.01)
    with torch.device("meta"):  # 14B and the VAE: diffusers' defaults
        assert public(WanTransformer3DModel(**WAN21_T2V_14B).config) == public(WanTransformer3DModel().config)
        assert public(AutoencoderKLWan(**WAN21_VAE).config) == public(AutoencoderKLWan().config)


def public(config) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in config.items() if not k.startswith("_")}


def test_lora_adapts_every_blocks_attention_and_mlp_linears():
    from fastvideo_grpo.models.lora import apply_lora

    cfg = load_config(TINY, [f"data.prompts_file={PROMPTS}", "model.tiny_layers=2"])
    network = tiny_policy(cfg).transformer
    apply_lora(network, 4, 0.0, FAMILIES["wan"].lora_targets)
    adapted = sorted({n.split(".lora_A")[0] for n, _ in network.named_parameters() if ".lora_A." in n})
    expected = sorted(f"blocks.{i}.{m}" for i in range(2) for m in (
        *(f"attn{a}.{p}" for a in (1, 2) for p in ("to_q", "to_k", "to_v", "to_out.0")), "ffn.net.0.proj",
        "ffn.net.2"))
    assert adapted == [f"{name}" for name in expected]


def test_the_flagship_config_plans_the_released_1_3b_on_paper():
    """wan21_t2v_1_3b.yaml with no model.path: the released architecture on the meta device,
    81 frames at 480x832 in 21 latent frames of 60 x 104."""
    from fastvideo_grpo.planning.policy import load_plan_config, planned_policy
    from fastvideo_grpo.planning.tracer import DecodeProbe, decode_estimate

    cfg = load_plan_config(ROOT / "assets/configs/wan21_t2v_1_3b.yaml", [])
    policy, source = planned_policy(cfg)
    assert "released" in source
    assert sum(p.numel() for p in policy.transformer.parameters()) == pytest.approx(1.42e9, rel=0.01)
    s = cfg.sampling
    assert policy.latent_shape(s.num_frames, s.height, s.width) == (16, 21, 60, 104)
    assert policy.cfg_scale == 5.0
    # Its VAE tiles in space only (256-pixel tiles every 192): the decode estimate holds every
    # frame of one spatial tile at once and counts the tiles' overlap.
    assert not hasattr(policy.vae, "tile_sample_min_num_frames")
    working, flops = decode_estimate(cfg, policy, DecodeProbe(bytes_per_voxel=1.0, flops_per_voxel=1.0))
    video_bytes = 3 * 81 * 480 * 832 * 2  # bf16
    assert working == 81 * 256 * 256 + 2 * video_bytes
    assert flops == pytest.approx(81 * (256 + 256 + 96) * (4 * 256 + 64))


SMALL = ("sampling.group_size=4", "sampling.rollout_batch_size=4", "sampling.decode_batch_size=4",
         "train.prompts_per_iteration=1", "train.iterations=3", "train.sample_every=0", "train.progress_bar=false")


@pytest.fixture(scope="module")
def grpo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("grpo")
    return train(load_config(TINY, [f"train.output_dir={out}", f"data.prompts_file={PROMPTS}", *SMALL,
                                    "train.iterations=1"]))


NFT = ("train.algorithm=nft", "sampling.shared_noise=false")


def test_nft_with_the_tiny_configs_guidance_is_refused_naming_model_cfg_scale(tmp_path):
    """tiny_wan_t2v.yaml guides GRPO's rollouts (cfg_scale 5); NFT, guidance-free as its
    reference, refuses it before any process starts or any model is built."""
    cfg = load_config(TINY, [f"train.output_dir={tmp_path / 'run'}", f"data.prompts_file={PROMPTS}", *SMALL, *NFT])
    assert cfg.model.cfg_scale == 5.0
    with pytest.raises(ConfigError, match=r"model\.cfg_scale: 5\.0 is invalid; expected 1 with train\.algorithm=nft"):
        train(cfg)
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_the_export_cli_writes_a_folder_wan_pipeline_samples_from(grpo_run, wan_folder, tmp_path):
    checkpoint = latest_checkpoint(grpo_run)
    subprocess.run([sys.executable, "-m", "fastvideo_grpo.export", "--checkpoint", str(checkpoint), "--output",
                    str(tmp_path / "export"), "--base-model", str(wan_folder)], check=True, cwd=ROOT,
                   capture_output=True)
    pipe = WanPipeline.from_pretrained(tmp_path / "export")
    pipe.set_progress_bar_config(disable=True)
    trained = WanTransformer3DModel.from_pretrained(tmp_path / "export", subfolder="transformer").state_dict()
    initial = WanTransformer3DModel.from_pretrained(wan_folder, subfolder="transformer").state_dict()
    assert any(not torch.equal(w, initial[name]) for name, w in trained.items())
    assert all(torch.equal(w, trained[name]) for name, w in pipe.transformer.state_dict().items())
    frames = pipe(prompt="a red ball", height=32, width=32, num_frames=5, num_inference_steps=2, output_type="np",
                  generator=torch.Generator().manual_seed(0)).frames
    assert frames.shape == (1, 5, 32, 32, 3) and np.isfinite(frames).all()
    assert frames.min() >= 0 and frames.max() <= 1


def test_sequence_parallel_needs_the_video_tokens_to_split(wan_folder):
    from fastvideo_grpo.models import check_model_config

    check_model_config(load_config(TINY, ["parallel.sp_size=2"]))  # 2 x 2 x 2 tokens
    # One frame of 48 x 48: 3 x 3 tokens; the same read from the folder's configs at full size.
    sizes = ["parallel.sp_size=2", "sampling.num_frames=1", "sampling.height=48", "sampling.width=48"]
    for model in ([], ["model.size=full", f"model.path={wan_folder}", "data.embeddings_dir=/unread"]):
        with pytest.raises(ConfigError, match=r"parallel.sp_size: 2 is invalid for sampling.height=48 x "
                                              r"sampling.width=48 x sampling.num_frames=1: 9 video tokens per sample"):
            check_model_config(load_config(TINY, [*sizes, *model]))


def test_sequence_parallel_two_ranks_train_what_one_does(one_rank_run, tmp_path):
    """Ulysses over Wan's self-attention (its cross-attention reads the whole text on each
    rank): the two sp ranks share 2 prompts and train what one rank trains alone."""
    args = [*COMMON, "train.prompts_per_iteration=2"]
    one = one_rank_run(TINY, *args)
    run([DIST / "train_run.py", "--config", TINY, *args, "parallel.sp_size=2", f"train.output_dir={tmp_path}"],
        nproc=2)
    assert_same_training(one, tmp_path)
