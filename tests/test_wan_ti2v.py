"""Wan2.2 TI2V-5B (model.family wan_ti2v, and wan_ti2v_i2v for image-to-video from the same
folder): the adapter against diffusers' WanPipeline and WanImageToVideoPipeline with
expand_timesteps (per-token timesteps, the first frame's tokens at timestep 0 in I2V, the
Wan2.2 VAE), the tiny folder, offline text and first-frame latents, the released size and its
FLOP count, image-to-video GRPO and NFT training, export, and sequence parallelism splitting
the per-token timesteps with the tokens. What every family passes (GRPO, resume, NFT, ...):
test_families.py."""

from __future__ import annotations

import dataclasses
import functools
import json
import sys

import numpy as np
import pytest
import torch
from diffusers import (AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanImageToVideoPipeline, WanPipeline,
                       WanTransformer3DModel)

from conftest import ROOT
from fastvideo_grpo.config import ConfigError, load_config
from fastvideo_grpo.models import FAMILIES, TextConditioning, build_policy
from fastvideo_grpo.models.flop_count import counter
from fastvideo_grpo.models.wan_ti2v.published import WAN22_TI2V_5B, WAN22_VAE
from fastvideo_grpo.models.wan_ti2v.tiny import TEXT_DIM, tiny_model_config, tiny_vae, write_folder
from fastvideo_grpo.sampling.rollout import rollout
from helpers import smooth_image

sys.path.insert(0, str(ROOT / "data_preprocess"))
TINY = ROOT / "assets/configs/tiny_wan_ti2v.yaml"
PROMPTS = ROOT / "assets/prompts/tiny.txt"
CPU = torch.device("cpu")
SIZE = dict(height=64, width=64, num_frames=5)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_folder(tmp_path_factory.mktemp("wan_ti2v") / "model")


def folder_policy(folder, family="wan_ti2v", **overrides):
    model_cfg = dataclasses.replace(tiny_model_config(), family=family, size="full", path=str(folder), dtype="fp32",
                                    **overrides)
    return build_policy(model_cfg, CPU, TEXT_DIM, 0)


def pipeline_conditioning(pipe, prompt: str, tokens: int) -> TextConditioning:
    """encode_prompt's embeddings of `prompt` and of the empty negative prompt."""
    with torch.no_grad():
        embeds, negative = pipe.encode_prompt(prompt, negative_prompt="", max_sequence_length=tokens, device="cpu")

    def conditioning(e: torch.Tensor) -> TextConditioning:
        return TextConditioning(e, (e.abs().sum(-1) > 0).long(), torch.zeros(1, 0))

    cond = conditioning(embeds)
    cond.negative = conditioning(negative)
    return cond


def euler_pipeline(pipeline_cls, folder, policy, shift: float, num_steps: int):
    """The pipeline with the policy's network and FlowMatchEulerDiscreteScheduler on our
    (unshifted) levels linspace(1, 0), which the scheduler shifts as our schedule does."""
    pipe = pipeline_cls.from_pretrained(folder, transformer=policy.transformer,
                                        scheduler=FlowMatchEulerDiscreteScheduler(shift=shift))
    pipe.set_progress_bar_config(disable=True)
    levels = torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float64)[:-1].tolist()
    pipe.scheduler.set_timesteps = functools.partial(pipe.scheduler.set_timesteps, sigmas=levels)
    return pipe


def euler_sampling(num_steps: int, shift: float):
    return dataclasses.replace(load_config(TINY).sampling, num_steps=num_steps, shift=shift, eta=0.0,
                               sde_type="dance", ode_solver="euler", group_size=1, rollout_batch_size=1)


@pytest.mark.parametrize("guidance", [1.0, 5.0])
def test_ode_rollout_equals_wan_pipeline_text_to_video(folder, guidance):
    """eta = 0 with the Euler solver == WanPipeline's own latents with expand_timesteps: every
    token at timestep sigma * 1000, guided against the negative prompt."""
    num_steps, shift = 4, 5.0
    policy = folder_policy(folder, cfg_scale=guidance)
    pipe = euler_pipeline(WanPipeline, folder, policy, shift, num_steps)
    assert pipe.config.expand_timesteps
    cond = pipeline_conditioning(pipe, "a red ball on the floor", 16)
    shape = policy.latent_shape(5, 64, 64)
    assert shape == (48, 2, 4, 4)
    ours = rollout(policy, cond, euler_sampling(num_steps, shift), shape, (0, 0), CPU)
    theirs = pipe(prompt_embeds=cond.prompt_embeds, negative_prompt_embeds=cond.negative.prompt_embeds,
                  latents=ours.latents[:, 0], num_inference_steps=num_steps, guidance_scale=guidance,
                  output_type="latent", **SIZE).frames
    torch.testing.assert_close(pipe.scheduler.sigmas[:-1].double(), ours.schedule[:-1], rtol=0, atol=1e-7)
    torch.testing.assert_close(ours.final_latents, theirs, rtol=1e-5, atol=1e-5)
    assert not torch.equal(ours.latents[:, 0], ours.final_latents)


def pipeline_image_latents(pipe, image) -> torch.Tensor:
    """WanImageToVideoPipeline's first-frame condition of `image`: its VAE latent, normalised. [1, 48, 1, h, w]"""
    pixels = pipe.video_processor.preprocess(image, height=64, width=64).to(torch.float32)
    with torch.no_grad():
        _, condition, mask = pipe.prepare_latents(pixels, 1, 48, 64, 64, 5, torch.float32, CPU, None, None)
    assert mask[0, 0, :, 0, 0].tolist() == [0.0, 1.0]
    return condition


@pytest.mark.parametrize("guidance", [1.0, 5.0])
def test_ode_rollout_equals_wan_image_to_video_pipeline(folder, guidance):
    """model.family wan_ti2v_i2v, eta = 0 with the Euler solver == WanImageToVideoPipeline's
    latents from the same folder: the first latent frame is the image's, its tokens at
    timestep 0, the other frames sampled."""
    import PIL.Image

    num_steps, shift = 4, 5.0
    policy = folder_policy(folder, "wan_ti2v_i2v", cfg_scale=guidance)
    pipe = euler_pipeline(WanImageToVideoPipeline, folder, policy, shift, num_steps)
    assert pipe.config.expand_timesteps
    image = PIL.Image.fromarray(smooth_image(np.random.default_rng(1), 64))
    cond = pipeline_conditioning(pipe, "a red ball on the floor", 16)
    cond.image_latents = pipeline_image_latents(pipe, image)
    ours = rollout(policy, cond, euler_sampling(num_steps, shift), policy.latent_shape(5, 64, 64), (0, 0), CPU)
    theirs = pipe(image=image, prompt_embeds=cond.prompt_embeds, negative_prompt_embeds=cond.negative.prompt_embeds,
                  latents=ours.latents[:, 0], num_inference_steps=num_steps, guidance_scale=guidance,
                  output_type="latent", **SIZE).frames
    torch.testing.assert_close(ours.final_latents, theirs, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours.final_latents[:, :, :1], cond.image_latents, rtol=0, atol=1e-5)


def test_timesteps_are_per_token_and_image_tokens_carry_zero(folder):
    """[B, S]: one fp32 sigma * 1000 per token of 1x2x2 patches, frame by frame; in I2V the
    first latent frame's h/2 * w/2 tokens at 0 (the pipeline's mask[:, ::2, ::2] * t)."""
    x = torch.zeros(2, 48, 3, 4, 6)
    cond = TextConditioning(torch.zeros(2, 4, TEXT_DIM), torch.ones(2, 4), torch.zeros(2, 0))
    text = folder_policy(folder)._timestep(x, 0.75, cond)
    image = folder_policy(folder, "wan_ti2v_i2v")._timestep(x, 0.75, cond)
    assert text.shape == image.shape == (2, 3 * 2 * 3) and text.dtype == image.dtype == torch.float32
    assert (text == 750.0).all()
    assert (image[:, :6] == 0).all() and (image[:, 6:] == 750.0).all()


def test_a_folder_without_expand_timesteps_is_refused(folder, tmp_path):
    import shutil

    wan21 = shutil.copytree(folder, tmp_path / "wan21")
    index = json.loads((wan21 / "model_index.json").read_text())
    (wan21 / "model_index.json").write_text(json.dumps({**index, "expand_timesteps": False}))
    with pytest.raises(ConfigError, match=rf"model.path={wan21}: {wan21 / 'model_index.json'} has "
                                          r"expand_timesteps=False; model.family wan_ti2v needs a Wan2.2-TI2V folder"):
        folder_policy(wan21)


def test_decode_unnormalises_the_latents_as_the_pipeline(folder):
    """WanPipeline's frames (output_type="np") == the adapter's decode of the same latents:
    the Wan2.2 VAE un-normalised per channel, 2x2 pixel patches unfolded."""
    policy = folder_policy(folder, cfg_scale=1.0)
    pipe = WanPipeline.from_pretrained(folder, transformer=policy.transformer, vae=policy.vae)
    pipe.set_progress_bar_config(disable=True)
    cond = pipeline_conditioning(pipe, "a blue ocean wave", 16)
    inputs = dict(prompt_embeds=cond.prompt_embeds, num_inference_steps=1, guidance_scale=1.0, **SIZE)
    latents = pipe(**inputs, output_type="latent", generator=torch.Generator().manual_seed(0)).frames
    frames = pipe(**inputs, output_type="np", generator=torch.Generator().manual_seed(0)).frames
    ours = policy.decode(latents)
    assert ours.shape == frames.shape == (1, 5, 64, 64, 3) and ours.dtype == torch.uint8
    np.testing.assert_allclose(ours.numpy() / 255.0, frames, atol=1 / 255 + 1e-6)
    assert ours.float().std() > 0


def test_preprocessing_writes_what_encode_prompt_returns_bitwise(folder, tmp_path):
    import preprocess_wan_ti2v_embeddings as cli

    from fastvideo_grpo.data.embeddings import EmbeddingDataset

    prompts = ["a red ball bouncing on the floor", "  a blue   ocean wave &amp; wind", " ".join(["red"] * 20)]
    (tmp_path / "prompts.txt").write_text("\n".join(prompts) + "\n")
    assert cli.run(["--model-path", str(folder), "--prompts", str(tmp_path / "prompts.txt"), "--output",
                    str(tmp_path / "emb"), "--max-tokens", "16", "--dtype", "fp32", "--device", "cpu"]) == 0
    data = EmbeddingDataset(tmp_path / "emb")
    for pipeline_cls in (WanPipeline, WanImageToVideoPipeline):
        pipe = pipeline_cls.from_pretrained(folder, transformer=None, vae=None)
        with torch.no_grad():
            embeds, negative = pipe.encode_prompt(prompts, negative_prompt="", max_sequence_length=16, device="cpu")
        cond = data.conditioning([0, 1, 2])
        assert torch.equal(cond.prompt_embeds, embeds)
        assert torch.equal(cond.negative.prompt_embeds, negative.expand(3, -1, -1))
    assert cond.pooled_embeds.shape == (3, 0)
    assert cond.attention_mask.sum(1).tolist() == [8, 7, 16]


def write_images(folder, count: int = 8):
    """`count` 64x64 gradient PNGs and the list preprocess_latents.py reads."""
    import imageio.v3 as iio

    rng = np.random.default_rng(0)
    for i in range(count):
        iio.imwrite(folder / f"{i}.png", smooth_image(rng, 64))
    (folder / "inputs.txt").write_text("".join(f"{i}.png\n" for i in range(count)))
    return folder / "inputs.txt"


@pytest.fixture(scope="module")
def image_latents(folder, tmp_path_factory):
    """First-frame latents of one image per prompt of tiny.txt: data.image_latents_dir. One
    image a VAE batch, as the pipeline encodes it (a batch of 4 rounds differently)."""
    import preprocess_latents

    out = tmp_path_factory.mktemp("image_latents")
    assert preprocess_latents.main(["--model-path", str(folder), "--inputs", str(write_images(out)), "--output",
                                    str(out / "latents"), "--height", "64", "--width", "64", "--dtype", "fp32",
                                    "--batch-size", "1", "--device", "cpu"]) == 0
    return out / "latents"


def test_first_frame_latents_are_the_image_to_video_pipelines_condition(folder, image_latents):
    """preprocess_latents.py with the Wan2.2 VAE, bitwise: the pipeline's pixels of an image
    at the sampled size, the posterior mode, (z - mean) * (1 / std) per channel, as
    WanImageToVideoPipeline conditions on the same image."""
    import PIL.Image

    from fastvideo_grpo.data.embeddings import ImageLatents

    pipe = WanImageToVideoPipeline.from_pretrained(folder, transformer=None)
    ours = ImageLatents(image_latents).latents([0, 3])
    images = [PIL.Image.open(image_latents.parent / f"{i}.png") for i in (0, 3)]
    theirs = torch.cat([pipeline_image_latents(pipe, image) for image in images])
    assert ours.shape == theirs.shape == (2, 48, 1, 4, 4)
    assert torch.equal(ours, theirs)
    assert ours.std() > 0.1  # normalised: not the raw latents' scale


SMALL = ("sampling.group_size=4", "sampling.rollout_batch_size=4", "sampling.decode_batch_size=4",
         "train.prompts_per_iteration=1", "train.iterations=3", "train.sample_every=0", "train.progress_bar=false")


def tiny_config(out, *overrides):
    return load_config(TINY, [f"train.output_dir={out}", f"data.prompts_file={PROMPTS}", *SMALL, *overrides])


@pytest.fixture(scope="module")
def grpo_run(tmp_path_factory):
    from fastvideo_grpo.training.trainer import train

    return train(tiny_config(tmp_path_factory.mktemp("grpo"), "train.iterations=1"))


def test_three_iterations_of_image_to_video_nft_without_cfg(image_latents, tmp_path):
    """DiffusionNFT trains CFG-free (model.cfg_scale=1) from first frames too (text-to-video:
    test_families.py)."""
    from fastvideo_grpo.training.trainer import train
    from helpers import read_jsonl

    cfg = tiny_config(tmp_path, "model.family=wan_ti2v_i2v", f"data.image_latents_dir={image_latents}",
                      "train.algorithm=nft", "sampling.shared_noise=false", "model.cfg_scale=1.0")
    rows = read_jsonl(train(cfg) / "metrics.jsonl")
    assert [r["iteration"] for r in rows] == [0, 1, 2]
    assert all(np.isfinite(r["loss"]) and r["optimizer_steps"] >= 1 and r["grad_norm"] > 0 for r in rows)


def test_three_iterations_of_image_to_video_grpo(image_latents, tmp_path):
    from fastvideo_grpo.training.trainer import train
    from helpers import read_jsonl

    run = train(tiny_config(tmp_path, "model.family=wan_ti2v_i2v", f"data.image_latents_dir={image_latents}"))
    rows = read_jsonl(run / "metrics.jsonl")
    assert [r["iteration"] for r in rows] == [0, 1, 2]
    assert all(r["ratio_dev_first_update"] == 0.0 and np.isfinite(r["loss"]) and r["grad_norm"] > 0 for r in rows)


def test_image_to_video_trains_from_the_folder_with_offline_text_and_first_frames(folder, image_latents, tmp_path):
    """The full path: the folder's embeddings CLI, preprocess_latents.py's first frames,
    model.family wan_ti2v_i2v at model.size=full from the folder: the seeded tiny network."""
    import preprocess_wan_ti2v_embeddings as cli

    from fastvideo_grpo.training.trainer import setup, train
    from helpers import read_jsonl, tiny_policy

    cli.run(["--model-path", str(folder), "--prompts", str(PROMPTS), "--output", str(tmp_path / "emb"),
             "--max-tokens", "16", "--dtype", "fp32", "--device", "cpu"])
    overrides = ["model.family=wan_ti2v_i2v", f"data.image_latents_dir={image_latents}", "train.iterations=1"]
    cfg = tiny_config(tmp_path / "run", *overrides, "model.size=full", f"model.path={folder}",
                      f"data.embeddings_dir={tmp_path / 'emb'}")
    in_process = tiny_policy(tiny_config(tmp_path / "unused", *overrides)).transformer
    assert all(torch.equal(a, b) for a, b in zip(in_process.parameters(), setup(cfg).policy.transformer.parameters(),
                                                 strict=True))
    (row,) = read_jsonl(train(cfg) / "metrics.jsonl")
    assert row["ratio_dev_first_update"] == 0.0 and row["grad_norm"] > 0


def test_an_sde_rollout_ends_on_the_image_latent_and_samples_the_other_frames(image_latents):
    """With eta > 0 the first latent frame still follows the straight path to the image's
    latent, noise-free; the other frames of a group's samples differ."""
    from fastvideo_grpo.data.embeddings import ImageLatents
    from helpers import tiny_conditioning, tiny_policy, tiny_rollout

    cfg = tiny_config("/unused", "model.family=wan_ti2v_i2v", f"data.image_latents_dir={image_latents}")
    policy = tiny_policy(cfg)
    cond = tiny_conditioning(cfg, ["a red ball", "a blue sky"], 4)
    cond.negative = tiny_conditioning(cfg, ["", ""], 4)
    cond.image_latents = ImageLatents(image_latents).latents([0, 1]).repeat_interleave(4, dim=0)
    ro = tiny_rollout(cfg, policy, cond, 4, shared_noise=False)
    final = ro.final_latents
    torch.testing.assert_close(final[:, :, :1], cond.image_latents, rtol=0, atol=1e-5)
    assert (final[0, :, 1:] - final[1, :, 1:]).abs().max() > 1e-2
    assert torch.isfinite(ro.log_probs[:, ro.plan.sde_steps]).all()


def test_the_i2v_policy_refuses_conditioning_without_or_with_other_image_latents(folder):
    policy = folder_policy(folder, "wan_ti2v_i2v", cfg_scale=1.0)
    x = torch.randn(1, 48, 2, 4, 4)
    cond = TextConditioning(torch.randn(1, 4, TEXT_DIM), torch.ones(1, 4), torch.zeros(1, 0))
    with pytest.raises(ValueError, match="model.family=wan_ti2v_i2v needs first-frame latents: set "
                                         "data.image_latents_dir"):
        policy.predict(x, 0.5, cond)
    cond.image_latents = torch.randn(1, 16, 1, 4, 4)  # a Wan2.1 VAE's latent
    with pytest.raises(ValueError, match=r"first-frame latents are \(16, 1, 4, 4\) \(C, 1, h, w\), the sampled "
                                         r"latents \(48, 2, 4, 4\)"):
        policy.predict(x, 0.5, cond)
    cond.image_latents = torch.randn(1, 48, 1, 4, 4)
    with torch.no_grad():
        out = policy.predict(x, 0.5, cond)
    torch.testing.assert_close(out[:, :, :1], (x[:, :, :1] - cond.image_latents) / 0.5)  # the straight path


def export_folder(run, base, out):
    import subprocess

    from fastvideo_grpo.checkpoint import latest_checkpoint

    subprocess.run([sys.executable, "-m", "fastvideo_grpo.export", "--checkpoint", str(latest_checkpoint(run)),
                    "--output", str(out), "--base-model", str(base)], check=True, cwd=ROOT, capture_output=True)
    return out


def test_the_export_samples_text_to_video_and_image_to_video(grpo_run, folder, tmp_path):
    """The exported folder: WanPipeline (text-to-video) and WanImageToVideoPipeline (from an
    image) load it with no extra arguments and sample with the trained network."""
    import PIL.Image

    out = export_folder(grpo_run, folder, tmp_path / "export")
    trained = WanTransformer3DModel.from_pretrained(out, subfolder="transformer").state_dict()
    initial = WanTransformer3DModel.from_pretrained(folder, subfolder="transformer").state_dict()
    assert any(not torch.equal(w, initial[name]) for name, w in trained.items())
    image = PIL.Image.fromarray(smooth_image(np.random.default_rng(1), 64))
    for pipeline_cls, inputs in ((WanPipeline, {}), (WanImageToVideoPipeline, {"image": image})):
        pipe = pipeline_cls.from_pretrained(out)
        pipe.set_progress_bar_config(disable=True)
        assert pipe.config.expand_timesteps
        assert all(torch.equal(w, trained[name]) for name, w in pipe.transformer.state_dict().items())
        frames = pipe(prompt="a red ball", num_inference_steps=2, output_type="np",
                      generator=torch.Generator().manual_seed(0), **inputs, **SIZE).frames
        assert frames.shape == (1, 5, 64, 64, 3) and np.isfinite(frames).all()
        assert frames.min() >= 0 and frames.max() <= 1


@pytest.mark.slow
@pytest.mark.parametrize("family", ["wan_ti2v", "wan_ti2v_i2v"])
def test_sequence_parallel_two_ranks_train_what_one_does(family, image_latents, one_rank_run, tmp_path):
    """Ulysses over 2 sp ranks sharing 2 prompts train what one rank trains alone: each rank
    keeps the per-token timesteps of its own tokens (in image-to-video only the first
    rank's hold the image's timestep-0 tokens). ~1 min."""
    from helpers import COMMON, DIST, assert_same_training, run

    images = [f"data.image_latents_dir={image_latents}"] if family == "wan_ti2v_i2v" else []
    args = [*COMMON, "train.prompts_per_iteration=2", f"model.family={family}", *images]
    one = one_rank_run(TINY, *args)
    run([DIST / "train_run.py", "--config", TINY, *args, "parallel.sp_size=2", f"train.output_dir={tmp_path}"],
        nproc=2)
    assert_same_training(one, tmp_path)


def public(config) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in config.items() if not k.startswith("_")}


def test_the_released_5b_matches_its_model_card_and_counts_its_flops():
    """TI2V-5B built on the meta device from the published config: the model card's 5B
    parameters, and the FLOP formula (the timestep embedding on every token) against
    FlopCounterMode at 704x1280x121: 31 x 44 x 80 latents, 27280 tokens."""
    latent, text = (48, 31, 44, 80), 512
    tokens = 31 * 22 * 40
    with torch.device("meta"):
        network = WanTransformer3DModel(**WAN22_TI2V_5B)
        vae = AutoencoderKLWan(**WAN22_VAE)
        with torch.no_grad(), counter() as count:
            network(torch.empty(1, *latent), torch.ones(1, tokens), torch.empty(1, text, 4096), return_dict=False)
    assert sum(p.numel() for p in network.parameters()) == pytest.approx(5.0e9, rel=0.01)
    assert FAMILIES["wan_ti2v"].forward_flops(network, latent, text) == pytest.approx(count.get_total_flops(),
                                                                                       rel=0.01)
    assert FAMILIES["wan_ti2v_i2v"].forward_flops is FAMILIES["wan_ti2v"].forward_flops
    assert (vae.config.z_dim, vae.config.scale_factor_spatial, vae.config.patch_size) == (48, 16, 2)
    # The tiny model keeps the released VAE's layout but its widths.
    tiny = public(tiny_vae(tiny_model_config()).config)
    assert {k: v for k, v in tiny.items() if k not in ("base_dim", "decoder_base_dim", "num_res_blocks")} == {
        k: v for k, v in public(vae.config).items() if k not in ("base_dim", "decoder_base_dim", "num_res_blocks")}


@pytest.mark.parametrize("family", ["wan_ti2v", "wan_ti2v_i2v"])
def test_the_tiny_forward_is_what_flop_counter_mode_counts(family, folder):
    """One guided prediction of the tiny network, text-to-video and image-to-video (its
    image frame is a token like the others): two rows of the formula."""
    policy = folder_policy(folder, family, cfg_scale=5.0)
    x = torch.randn(1, 48, 2, 4, 4)
    cond = TextConditioning(torch.randn(1, 16, TEXT_DIM), torch.ones(1, 16), torch.zeros(1, 0),
                            image_latents=torch.randn(1, 48, 1, 4, 4))
    cond.negative = TextConditioning(torch.randn(1, 16, TEXT_DIM), torch.ones(1, 16), torch.zeros(1, 0))
    with torch.no_grad(), counter() as count:
        policy.predict(x, 0.5, cond)
    counted = FAMILIES[family].forward_flops(policy.transformer, tuple(x.shape[1:]), policy.text_tokens(cond))
    assert 2 * counted == pytest.approx(count.get_total_flops(), rel=0.01)


def test_the_flagship_config_plans_the_released_5b_on_paper():
    """wan22_ti2v_5b.yaml with no model.path: the released architecture on the meta device,
    121 frames at 704x1280 in 31 latent frames of 44 x 80."""
    from fastvideo_grpo.planning.policy import load_plan_config, planned_policy

    for family in ("wan_ti2v", "wan_ti2v_i2v"):
        cfg = load_plan_config(ROOT / "assets/configs/wan22_ti2v_5b.yaml", [f"model.family={family}"])
        policy, source = planned_policy(cfg)
        assert "released Wan2.2-TI2V-5B" in source
        assert sum(p.numel() for p in policy.transformer.parameters()) == pytest.approx(5.0e9, rel=0.01)
        s = cfg.sampling
        assert policy.latent_shape(s.num_frames, s.height, s.width) == (48, 31, 44, 80)
        assert policy.cfg_scale == 5.0
    assert (s.shift, s.fps) == (5.0, 24)


def test_sequence_parallel_needs_the_video_tokens_to_split(folder):
    """The Wan2.2 geometry (16x spatial): the tiny config's 64x64x5 is 2 x 2 x 2 tokens; 96x96
    in one frame is 3 x 3, for the tiny model and for the folder alike."""
    from fastvideo_grpo.models import check_model_config

    check_model_config(load_config(TINY, ["parallel.sp_size=2"]))
    sizes = ["parallel.sp_size=2", "sampling.num_frames=1", "sampling.height=96", "sampling.width=96"]
    for model in ([], ["model.size=full", f"model.path={folder}", "data.embeddings_dir=/unread"]):
        with pytest.raises(ConfigError, match=r"parallel.sp_size: 2 is invalid for sampling.height=96 x "
                                              r"sampling.width=96 x sampling.num_frames=1: 9 video tokens per sample"):
            check_model_config(load_config(TINY, [*sizes, *model]))
