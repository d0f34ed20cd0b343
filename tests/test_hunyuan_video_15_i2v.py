"""HunyuanVideo-1.5 image-to-video (model.family hunyuan_video_15_i2v): the adapter against
diffusers' HunyuanVideo15ImageToVideoPipeline (the first-frame condition latents and mask
channels, the SigLIP image tokens in both guidance branches), the tiny folder, the first-frame
latents and image tokens of preprocess_latents.py bitwise, the conditioning's image tokens
from the shards to the network, GRPO and NFT training, resume, export and sequence
parallelism. The text-to-video family it builds on: test_hunyuan_video_15.py."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import HunyuanVideo15ImageToVideoPipeline, HunyuanVideo15Transformer3DModel
from diffusers.guiders import ClassifierFreeGuidance

from conftest import ROOT
from fastvideo_grpo.checkpoint import latest_checkpoint
from fastvideo_grpo.cli.export import load_trained_transformer
from fastvideo_grpo.config import load_config
from fastvideo_grpo.data.embeddings import ImageLatents
from fastvideo_grpo.models import TextConditioning, build_policy
from fastvideo_grpo.models.base import guided_prediction
from fastvideo_grpo.models.hunyuan_video_15.policy import pack_glyphs
from fastvideo_grpo.models.hunyuan_video_15.tiny import GLYPH_DIM, IMAGE_DIM, TEXT_DIM
from fastvideo_grpo.models.hunyuan_video_15_i2v.tiny import tiny_model_config, write_folder
from fastvideo_grpo.sampling.rollout import rollout
from fastvideo_grpo.training.trainer import train
from helpers import COMMON, DIST, TIMING, assert_same_training, read_jsonl, run, smooth_image

sys.path.insert(0, str(ROOT / "data_preprocess"))
TINY = ROOT / "assets/configs/tiny_hunyuan_video_15_i2v.yaml"
PROMPTS = ROOT / "assets/prompts/tiny.txt"
CPU = torch.device("cpu")
PACKED = 256 * (GLYPH_DIM + 1)  # the pipeline's 256 ByT5 tokens, packed with their mask
IMAGE_TOKENS = 16  # the tiny SigLIP's 32 / 8 squared
PROMPT = 'a sign that says "red ball" on the street'


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_folder(tmp_path_factory.mktemp("hv15_i2v") / "model")


@pytest.fixture(scope="module")
def image_latents(folder):
    """preprocess_latents.py --family hunyuan_video_15_i2v over one 32 x 32 image per prompt
    of tiny.txt, VAE batches of 4: data.image_latents_dir."""
    import imageio.v3 as iio
    import preprocess_latents

    images = folder.parent / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(8):
        iio.imwrite(images / f"{i}.png", smooth_image(rng))
    (images / "inputs.txt").write_text("".join(f"{i}.png\n" for i in range(8)))
    assert preprocess_latents.main(["--family", "hunyuan_video_15_i2v", "--model-path", str(folder), "--inputs",
                                    str(images / "inputs.txt"), "--output", str(folder.parent / "latents"),
                                    "--height", "32", "--width", "32", "--dtype", "fp32", "--device", "cpu"]) == 0
    return folder.parent / "latents"


def folder_policy(folder, **overrides):
    model_cfg = dataclasses.replace(tiny_model_config(), size="full", path=str(folder), dtype="fp32", **overrides)
    return build_policy(model_cfg, CPU, TEXT_DIM, PACKED)


def load_pipeline(folder, **components) -> HunyuanVideo15ImageToVideoPipeline:
    pipe = HunyuanVideo15ImageToVideoPipeline.from_pretrained(folder, **components)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def pipeline_image_condition(pipe, image) -> tuple[torch.Tensor, torch.Tensor]:
    """The pipeline's first-frame latent [1, 32, 1, 2, 2] and image tokens [1, 16, 16] of `image`."""
    with torch.no_grad():
        latents = pipe._get_image_latents(pipe.vae, pipe.video_processor, image, 32, 32, CPU)
        embeds = pipe.encode_image(image, batch_size=1, device=CPU, dtype=torch.float32)
    return latents, embeds


def pipeline_conditioning(pipe, prompt: str, image) -> TextConditioning:
    """encode_prompt's embeddings of `prompt` and of the empty negative prompt, and the image's condition."""
    def conditioning(p: str) -> TextConditioning:
        with torch.no_grad():
            embeds, mask, glyphs, glyph_mask = pipe.encode_prompt([p], device="cpu", batch_size=1)
        return TextConditioning(embeds, mask.long(), pack_glyphs(glyphs, glyph_mask))

    cond = conditioning(prompt)
    cond.negative = conditioning("")
    cond.image_latents, cond.image_embeds = pipeline_image_condition(pipe, image)
    return cond


def test_the_tiny_folder_is_an_image_to_video_pipeline_at_32_pixels(folder):
    """SigLIP's 16 x 16 tokens (the released 729 x 1152), the transformer's image width, and
    a target size whose buckets keep a square image at the tiny config's 32 x 32."""
    pipe = load_pipeline(folder, transformer=None, text_encoder=None, text_encoder_2=None)
    image = PIL.Image.fromarray(smooth_image(np.random.default_rng(1)))
    with torch.no_grad():
        embeds = pipe.encode_image(image, batch_size=1, device=CPU, dtype=torch.float32)
    assert embeds.shape == (1, IMAGE_TOKENS, IMAGE_DIM)
    config = HunyuanVideo15Transformer3DModel.load_config(folder / "transformer")
    assert (config["image_embed_dim"], config["task_type"], config["in_channels"]) == (IMAGE_DIM, "i2v", 65)
    assert pipe.video_processor.calculate_default_height_width(32, 32, config["target_size"]) == (32, 32)


@pytest.mark.parametrize("guidance", [1.0, 6.0])
def test_ode_rollout_equals_the_pipeline(folder, guidance):
    """eta = 0 with the Euler solver == HunyuanVideo15ImageToVideoPipeline's own latents for
    the same image, prompt, noise, steps, shift and guidance: the image's latent on the first
    frame's condition channels with a mask of ones there, its SigLIP tokens as image tokens
    in both branches of its guider."""
    num_steps, shift = 4, 5.0
    policy = folder_policy(folder, cfg_scale=guidance)
    pipe = load_pipeline(folder, transformer=policy.transformer, guider=ClassifierFreeGuidance(guidance_scale=guidance))
    image = PIL.Image.fromarray(smooth_image(np.random.default_rng(1)))
    cond = pipeline_conditioning(pipe, PROMPT, image)
    s = dataclasses.replace(load_config(TINY).sampling, num_steps=num_steps, shift=shift, eta=0.0, sde_type="dance",
                            ode_solver="euler", group_size=1, rollout_batch_size=1)
    shape = policy.latent_shape(5, 32, 32)
    assert shape == (32, 2, 2, 2)
    ours = rollout(policy, cond, s, shape, (0, 0), CPU)
    theirs = pipe(image=image, prompt=PROMPT, latents=ours.latents[:, 0], num_inference_steps=num_steps,
                  num_frames=5, output_type="latent").frames
    torch.testing.assert_close(pipe.scheduler.sigmas[:-1].double(), ours.schedule[:-1], rtol=0, atol=1e-7)
    torch.testing.assert_close(ours.final_latents, theirs, rtol=1e-5, atol=1e-5)
    assert not torch.equal(ours.latents[:, 0], ours.final_latents)


def test_the_first_frame_and_the_image_tokens_move_the_prediction(folder):
    """The condition channels: the image latent on frame 0 and the mask (1 there, 0 after),
    as the network's input; other image latents or image tokens change the prediction."""
    policy = folder_policy(folder, cfg_scale=1.0)
    pipe = load_pipeline(folder, transformer=None)
    cond = pipeline_conditioning(pipe, PROMPT, PIL.Image.fromarray(smooth_image(np.random.default_rng(1))))
    x = torch.randn(1, 32, 2, 2, 2, generator=torch.Generator().manual_seed(0))
    condition = policy.condition(x, cond)
    assert condition.shape == (1, 33, 2, 2, 2)
    assert torch.equal(condition[:, :32, :1], cond.image_latents) and not condition[:, :32, 1:].any()
    assert (condition[:, 32, 0] == 1).all() and not condition[:, 32, 1:].any()
    with torch.no_grad():
        base = policy.predict(x, 0.6, cond)
        other_image = policy.predict(x, 0.6, dataclasses.replace(cond, image_latents=-cond.image_latents))
        other_tokens = policy.predict(x, 0.6, dataclasses.replace(cond, image_embeds=-cond.image_embeds))
        # The image tokens carry no position (no RoPE on the text side): their order is immaterial.
        reordered = policy.predict(x, 0.6, dataclasses.replace(cond, image_embeds=cond.image_embeds.flip(1)))
    assert (base - other_image).abs().max() > 1e-3 and (base - other_tokens).abs().max() > 1e-3
    torch.testing.assert_close(reordered, base, rtol=1e-5, atol=1e-5)
    assert policy.text_tokens(cond) == int(cond.attention_mask.sum()) + len('Text "red ball". ') + 1 + IMAGE_TOKENS


def test_missing_or_mismatched_image_conditioning_is_refused(folder):
    policy = folder_policy(folder, cfg_scale=1.0)
    cond = TextConditioning(torch.randn(1, 4, TEXT_DIM), torch.ones(1, 4, dtype=torch.long), torch.zeros(1, PACKED),
                            image_latents=torch.randn(1, 32, 1, 2, 2))
    x = torch.randn(1, 32, 2, 2, 2)
    with pytest.raises(ValueError, match=r"needs the image encoder's tokens of each first frame \(image_embeds\): "
                                         r"set data.image_latents_dir to the output of .*preprocess_latents.py "
                                         r"--family hunyuan_video_15_i2v"):
        policy.predict(x, 0.5, cond)
    with pytest.raises(ValueError, match="the image tokens .* are 8 wide, the transformer takes 16"):
        policy.predict(x, 0.5, dataclasses.replace(cond, image_embeds=torch.randn(1, 3, 8)))
    with pytest.raises(ValueError, match=r"first-frame latents are \(32, 1, 4, 4\) \(C, 1, h, w\), the sampled "
                                         r"latents \(32, 2, 2, 2\)"):
        policy.predict(x, 0.5, dataclasses.replace(cond, image_latents=torch.randn(1, 32, 1, 4, 4),
                                                   image_embeds=torch.randn(1, 3, 16)))


def test_the_conditioning_carries_image_tokens_through_selection_and_guidance():
    """select / repeat_interleave / to keep image_embeds, and both guidance branches see them."""
    cond = TextConditioning(torch.randn(2, 3, 4), torch.ones(2, 3, dtype=torch.long), torch.randn(2, 5),
                            image_embeds=torch.randn(2, 6, 7))
    cond.negative = TextConditioning(torch.randn(2, 3, 4), torch.ones(2, 3, dtype=torch.long), torch.randn(2, 5))
    assert torch.equal(cond.select([1]).image_embeds, cond.image_embeds[1:])
    assert torch.equal(cond.repeat_interleave(2).image_embeds, cond.image_embeds.repeat_interleave(2, dim=0))
    assert cond.to("cpu", torch.float64).image_embeds.dtype == torch.float64
    seen = []

    def forward(x, c):
        seen.append(c.image_embeds)
        return x

    guided_prediction(forward, torch.randn(2, 1), cond, 5.0)
    assert torch.equal(seen[0], torch.cat([cond.image_embeds, cond.image_embeds]))


def test_preprocessing_writes_the_pipelines_first_frame_latents_and_image_tokens_bitwise(folder, image_latents):
    """preprocess_latents.py --family hunyuan_video_15_i2v: the VAE's posterior mode times
    its scaling factor, and SigLIP's last hidden state, bitwise what the pipeline computes
    for the same image at the sampled size; the image-latents loader carries both into the
    conditioning."""
    from fastvideo_grpo.data.embeddings import TinyRandomPrompts, WithImageLatents
    from fastvideo_grpo.models.tiny.hashing_text_encoder import TinyTextEncoder

    pipe = load_pipeline(folder, transformer=None, text_encoder=None, text_encoder_2=None)
    images = [PIL.Image.open(image_latents.parent / "images" / f"{i}.png") for i in (0, 5)]
    theirs = [torch.cat(parts) for parts in zip(*(pipeline_image_condition(pipe, image) for image in images))]
    ours = ImageLatents(image_latents).tensors([0, 5])
    assert ours["latents"].shape == (2, 32, 1, 2, 2) and ours["image_embeds"].shape == (2, IMAGE_TOKENS, IMAGE_DIM)
    assert torch.equal(ours["latents"], theirs[0]) and torch.equal(ours["image_embeds"], theirs[1])
    prompts = TinyRandomPrompts(["a"] * 8, TinyTextEncoder(TEXT_DIM, 17, 8))
    source = WithImageLatents(prompts, ImageLatents(image_latents))
    cond = source.conditioning([5, 0]).repeat_interleave(2)
    assert torch.equal(cond.image_embeds, theirs[1].flip(0).repeat_interleave(2, dim=0))
    assert torch.equal(cond.image_latents, theirs[0].flip(0).repeat_interleave(2, dim=0))


def test_latents_without_image_tokens_load_as_before(folder, tmp_path):
    """Without --family (or for a family without an image encoder) the shards hold `latents`
    alone and the conditioning no image tokens; a folder mixing both is refused; a re-run
    with --family re-encodes every shard (its settings name the image encoder)."""
    import preprocess_latents
    from safetensors.torch import load_file, save_file

    from fastvideo_grpo.data.embeddings import TinyRandomPrompts, WithImageLatents
    from fastvideo_grpo.models.tiny.hashing_text_encoder import TinyTextEncoder

    PIL.Image.fromarray(smooth_image(np.random.default_rng(2))).save(tmp_path / "0.png")
    (tmp_path / "inputs.txt").write_text("0.png\n0.png\n")
    args = ["--model-path", str(folder), "--inputs", str(tmp_path / "inputs.txt"), "--output", str(tmp_path / "out"),
            "--height", "32", "--width", "32", "--dtype", "fp32", "--device", "cpu", "--shard-size", "1"]
    assert preprocess_latents.main(args) == 0
    plain = ImageLatents(tmp_path / "out")
    assert set(plain.tensors([0, 1])) == {"latents"}
    prompts = TinyRandomPrompts(["a", "b"], TinyTextEncoder(TEXT_DIM, 17, 8))
    assert WithImageLatents(prompts, plain).conditioning([1]).image_embeds is None
    shard = sorted((tmp_path / "out").glob("*.safetensors"))[0]
    save_file({**load_file(shard), "image_embeds": torch.zeros(1, 2, 3)}, shard)
    with pytest.raises(ValueError, match=r"hold `image_embeds`, \[.*\] do not; re-run preprocess_latents.py"):
        ImageLatents(tmp_path / "out")
    assert preprocess_latents.main([*args, "--family", "hunyuan_video_15_i2v"]) == 0
    tensors = ImageLatents(tmp_path / "out").tensors([0, 1])
    assert tensors["image_embeds"].shape == (2, IMAGE_TOKENS, IMAGE_DIM)
    assert torch.equal(tensors["image_embeds"][0], tensors["image_embeds"][1])


def test_the_folder_trains_with_its_offline_text_and_first_frames(folder, image_latents, tmp_path, monkeypatch):
    """The full path: `fastvideo-grpo-preprocess --family hunyuan_video_15_i2v` on the folder
    (the text-to-video family's encoder, bitwise HunyuanVideo15ImageToVideoPipeline.encode_prompt),
    preprocess_latents.py's first frames and image tokens, then model.size=full from the
    folder: the seeded tiny network, trained."""
    from fastvideo_grpo.cli.preprocess import command
    from fastvideo_grpo.data.embeddings import EmbeddingDataset
    from fastvideo_grpo.training.trainer import setup
    from helpers import tiny_policy

    monkeypatch.setattr("sys.argv", ["fastvideo-grpo-preprocess", "--family", "hunyuan_video_15_i2v", "--model-path",
                                     str(folder), "--prompts", str(PROMPTS), "--output", str(tmp_path / "emb"),
                                     "--max-tokens", "16", "--dtype", "fp32", "--device", "cpu"])
    assert command() == 0
    pipe = load_pipeline(folder, transformer=None, image_encoder=None)
    pipe.tokenizer_max_length = 16
    prompts = PROMPTS.read_text().splitlines()[:2]
    with torch.no_grad():
        embeds, mask, glyphs, glyph_mask = pipe.encode_prompt(prompts, device="cpu", batch_size=2)
    cond = EmbeddingDataset(tmp_path / "emb").conditioning([0, 1])
    assert torch.equal(cond.prompt_embeds, embeds) and torch.equal(cond.attention_mask, mask.long())
    assert torch.equal(cond.pooled_embeds, pack_glyphs(glyphs, glyph_mask))
    cfg = tiny_config(tmp_path / "run", image_latents, "train.iterations=1", "model.size=full",
                      f"model.path={folder}", f"data.embeddings_dir={tmp_path / 'emb'}")
    in_process = tiny_policy(tiny_config(tmp_path / "unused", image_latents)).transformer
    assert all(torch.equal(a, b) for a, b in zip(in_process.parameters(), setup(cfg).policy.transformer.parameters(),
                                                 strict=True))
    (row,) = read_jsonl(train(cfg) / "metrics.jsonl")
    assert row["ratio_dev_first_update"] == 0.0 and row["grad_norm"] > 0


SMALL = ("sampling.group_size=4", "sampling.rollout_batch_size=4", "sampling.decode_batch_size=4",
         "train.prompts_per_iteration=1", "train.iterations=3", "train.sample_every=0", "train.progress_bar=false")


def tiny_config(out, image_latents, *overrides):
    return load_config(TINY, [f"train.output_dir={out}", f"data.prompts_file={PROMPTS}",
                              f"data.image_latents_dir={image_latents}", *SMALL, *overrides])


@pytest.fixture(scope="module")
def grpo_run(tmp_path_factory, image_latents):
    return train(tiny_config(tmp_path_factory.mktemp("grpo"), image_latents))


def test_three_iterations_of_grpo_with_cfg(grpo_run):
    rows = read_jsonl(grpo_run / "metrics.jsonl")
    assert [r["iteration"] for r in rows] == [0, 1, 2]
    for row in rows:
        assert row["ratio_dev_first_update"] == 0.0  # both CFG branches recomputed bit for bit
        assert row["optimizer_steps"] == 1 and np.isfinite(row["loss"]) and row["grad_norm"] > 0


def test_a_resumed_run_is_bit_exact(grpo_run, image_latents, tmp_path):
    """Two iterations, then the third from the checkpoint: the straight run's metrics and weights."""
    for iterations in (2, 3):
        train(tiny_config(tmp_path, image_latents, f"train.iterations={iterations}"))
    straight, resumed = read_jsonl(grpo_run / "metrics.jsonl"), read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["iteration"] for r in resumed] == [0, 1, 2]
    for a, b in zip(straight, resumed, strict=True):
        assert {k: v for k, v in a.items() if not k.startswith(TIMING)} == {
            k: v for k, v in b.items() if not k.startswith(TIMING)}
    weights = [load_trained_transformer(latest_checkpoint(run)).state_dict() for run in (grpo_run, tmp_path)]
    assert all(torch.equal(w, weights[1][name]) for name, w in weights[0].items())


def test_three_iterations_of_nft_without_cfg(image_latents, tmp_path):
    """DiffusionNFT trains CFG-free: model.cfg_scale=1, the conditional branch alone."""
    cfg = tiny_config(tmp_path, image_latents, "train.algorithm=nft", "sampling.shared_noise=false",
                      "model.cfg_scale=1.0")
    rows = read_jsonl(train(cfg) / "metrics.jsonl")
    assert [r["iteration"] for r in rows] == [0, 1, 2]
    assert all(np.isfinite(r["loss"]) and r["optimizer_steps"] >= 1 and r["grad_norm"] > 0 for r in rows)


def test_the_export_cli_writes_a_folder_the_pipeline_samples_from(grpo_run, folder, tmp_path):
    checkpoint = latest_checkpoint(grpo_run)
    subprocess.run([sys.executable, "-m", "fastvideo_grpo.export", "--checkpoint", str(checkpoint), "--output",
                    str(tmp_path / "export"), "--base-model", str(folder)], check=True, cwd=ROOT, capture_output=True)
    pipe = load_pipeline(tmp_path / "export")
    trained = HunyuanVideo15Transformer3DModel.from_pretrained(tmp_path / "export", subfolder="transformer")
    initial = HunyuanVideo15Transformer3DModel.from_pretrained(folder, subfolder="transformer").state_dict()
    assert any(not torch.equal(w, initial[name]) for name, w in trained.state_dict().items())
    assert all(torch.equal(w, trained.state_dict()[name]) for name, w in pipe.transformer.state_dict().items())
    image = PIL.Image.fromarray(smooth_image(np.random.default_rng(1)))
    frames = pipe(image=image, prompt=PROMPT, num_frames=5, num_inference_steps=2, output_type="np",
                  generator=torch.Generator().manual_seed(0)).frames
    assert frames.shape == (1, 5, 32, 32, 3) and np.isfinite(frames).all()
    assert frames.min() >= 0 and frames.max() <= 1


@pytest.mark.slow  # two processes and the one-rank reference: ~50 s on 2 shared cores
def test_sequence_parallel_two_ranks_train_what_one_does(one_rank_run, image_latents, tmp_path):
    """Ulysses over the video tokens; the text and image tokens whole on every rank: the two
    sp ranks share 2 prompts and train what one rank trains alone, two iterations (the second
    on updated weights). The colour reward: the tiny model's motion rewards spread by ~1e-3 in
    a group, so that a decoded pixel's rounding flip (~1e-6 in a reward) moves an advantage by
    ~1e-3; and by a third iteration such flips move the colour reward's mean by ~1e-5, beyond
    what the comparison allows."""
    args = [*COMMON, "train.prompts_per_iteration=2", f"data.image_latents_dir={image_latents}",
            "reward.weights={color: 1.0}", "train.iterations=2"]
    one = one_rank_run(TINY, *args)
    run([DIST / "train_run.py", "--config", TINY, *args, "parallel.sp_size=2", f"train.output_dir={tmp_path}"],
        nproc=2)
    assert_same_training(one, tmp_path)


def test_the_planners_forward_equals_the_models_with_image_tokens(folder):
    """traced.all_valid_forward (the model's forward without reading values, for fake
    tensors) == the model's own forward with every text token valid and image tokens first."""
    from fastvideo_grpo.models.hunyuan_video_15.traced import traced

    network = folder_policy(folder).transformer
    generator = torch.Generator().manual_seed(0)
    inputs = dict(hidden_states=torch.randn(2, 65, 2, 2, 2, generator=generator), timestep=torch.full((2,), 600.0),
                  encoder_hidden_states=torch.randn(2, 5, TEXT_DIM, generator=generator),
                  encoder_attention_mask=torch.ones(2, 5, dtype=torch.long),
                  encoder_hidden_states_2=torch.randn(2, 3, GLYPH_DIM, generator=generator),
                  encoder_attention_mask_2=torch.ones(2, 3, dtype=torch.long),
                  image_embeds=torch.randn(2, IMAGE_TOKENS, IMAGE_DIM, generator=generator), return_dict=False)
    expected = network(**inputs)[0]
    with traced(network):
        torch.testing.assert_close(network(**inputs)[0], expected, rtol=1e-5, atol=1e-5)
        without_image = network(**{**inputs, "image_embeds": inputs["image_embeds"][:, :0]})[0]
    assert (without_image - expected).abs().max() > 1e-3


def test_the_planner_plans_the_tiny_folder_with_image_tokens_and_sequence_parallelism(folder):
    """The folder's config on fake tensors, its SigLIP's 16 image tokens in the stand-in
    conditioning, SP 2 over 2 ranks: it fits, with the folder's parameter count."""
    from fastvideo_grpo.planning.cluster import Cluster
    from fastvideo_grpo.planning.plan import plan
    from fastvideo_grpo.planning.policy import load_plan_config, planned_policy
    from fastvideo_grpo.planning.tracer import conditioning

    # No data.image_latents_dir: the planner reads no data, and parallelize's SP check is SP's alone.
    overrides = ["model.size=full", f"model.path={folder}", "data.embeddings_dir=/unread", "parallel.sp_size=2"]
    cfg = load_plan_config(TINY, overrides)
    policy, _ = planned_policy(cfg)
    cond = conditioning(cfg, policy, 2, policy.latent_shape(5, 32, 32))
    assert cond.image_embeds.shape == (2, IMAGE_TOKENS, IMAGE_DIM) and cond.image_latents.shape == (2, 32, 1, 2, 2)
    result = plan(TINY, overrides, Cluster(nodes=1, gpus_per_node=2, gpu_memory_gb=80, reserve_gb=0), knobs=False)
    assert result["fits"]
    network = HunyuanVideo15Transformer3DModel.from_pretrained(folder, subfolder="transformer")
    assert result["parameters"] == sum(p.numel() for p in network.parameters())


def test_the_released_480p_i2v_is_planned_with_729_siglip_tokens():
    """No model.path: the released architecture on the meta device (8.3B, diffusers' own
    defaults with task_type i2v) and SigLIP-384's 27 x 27 tokens of 1152 per image."""
    from fastvideo_grpo.models.hunyuan_video_15_i2v.published import image_tokens
    from fastvideo_grpo.planning.policy import load_plan_config, planned_policy

    cfg = load_plan_config(TINY, ["model.size=full", "model.dtype=bf16", "sampling.height=480", "sampling.width=848",
                                  "sampling.num_frames=121"])
    policy, source = planned_policy(cfg)
    assert "released HunyuanVideo-1.5-480p-I2V" in source
    assert sum(p.numel() for p in policy.transformer.parameters()) == pytest.approx(8.33e9, rel=0.01)
    assert policy.transformer.config.task_type == "i2v"
    assert image_tokens(cfg) == (729, 1152) and policy.transformer.config.image_embed_dim == 1152
