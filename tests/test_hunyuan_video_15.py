"""HunyuanVideo-1.5 T2V: the adapter against diffusers' HunyuanVideo15Pipeline (its timesteps
and shift, its guider's classifier-free guidance, the zero condition latents and mask of
text-to-video, Qwen2.5-VL's cropped chat template and ByT5's glyph tokens), encode_prompt
bitwise in the shards, the released size and the FLOP count, LoRA's modules, export and
sequence parallelism. What every family passes (GRPO, resume, NFT, ...): test_families.py."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKLHunyuanVideo15, HunyuanVideo15Pipeline, HunyuanVideo15Transformer3DModel
from diffusers.guiders import ClassifierFreeGuidance

from conftest import ROOT
from fastvideo_grpo.checkpoint import latest_checkpoint
from fastvideo_grpo.config import ConfigError, load_config
from fastvideo_grpo.data.embeddings import EmbeddingDataset
from fastvideo_grpo.models import FAMILIES, TextConditioning, build_policy
from fastvideo_grpo.models.flop_count import counter
from fastvideo_grpo.models.hunyuan_video_15.policy import pack_glyphs, unpack_glyphs
from fastvideo_grpo.models.hunyuan_video_15.published import HUNYUAN_VIDEO_15_480P_T2V, HUNYUAN_VIDEO_15_VAE
from fastvideo_grpo.models.hunyuan_video_15.tiny import GLYPH_DIM, TEXT_DIM, tiny_model_config, write_folder
from fastvideo_grpo.sampling.rollout import rollout
from fastvideo_grpo.training.trainer import train
from helpers import COMMON, DIST, assert_same_training, run, tiny_conditioning, tiny_policy

sys.path.insert(0, str(ROOT / "data_preprocess"))
TINY = ROOT / "assets/configs/tiny_hunyuan_video_15_t2v.yaml"
PROMPTS = ROOT / "assets/prompts/tiny.txt"
CPU = torch.device("cpu")
# Quoted text is the glyph encoder's (ByT5) input.
GLYPH_PROMPT = 'a sign that says "red ball" on the street'
PACKED = 256 * (GLYPH_DIM + 1)  # the pipeline's 256 ByT5 tokens, packed with their mask


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_folder(tmp_path_factory.mktemp("hv15") / "model")


def folder_policy(folder, **overrides):
    model_cfg = dataclasses.replace(tiny_model_config(), size="full", path=str(folder), dtype="fp32", **overrides)
    return build_policy(model_cfg, CPU, TEXT_DIM, PACKED)


def load_pipeline(folder, **components) -> HunyuanVideo15Pipeline:
    pipe = HunyuanVideo15Pipeline.from_pretrained(folder, **components)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def pipeline_conditioning(pipe, prompt: str) -> TextConditioning:
    """encode_prompt's Qwen and ByT5 embeddings of `prompt`, and of the empty negative prompt."""
    def conditioning(p: str) -> TextConditioning:
        with torch.no_grad():
            embeds, mask, glyphs, glyph_mask = pipe.encode_prompt([p], device="cpu", batch_size=1)
        return TextConditioning(embeds, mask.long(), pack_glyphs(glyphs, glyph_mask))

    cond = conditioning(prompt)
    cond.negative = conditioning("")
    return cond


@pytest.mark.parametrize("guidance", [1.0, 6.0])
def test_ode_rollout_equals_the_pipeline(folder, guidance):
    """eta = 0 with the Euler solver == HunyuanVideo15Pipeline's own latents: its shifted
    linspace(1, 0) sigmas, timestep sigma * 1000, the zero condition latents and mask, its
    guider's uncond + g * (cond - uncond) against the empty prompt, both text encoders (the
    prompt quotes glyph text). Our forward crops the text padding and passes no image tokens."""
    num_steps, shift = 4, 5.0
    policy = folder_policy(folder, cfg_scale=guidance)
    pipe = load_pipeline(folder, transformer=policy.transformer, guider=ClassifierFreeGuidance(guidance_scale=guidance))
    cond = pipeline_conditioning(pipe, GLYPH_PROMPT)
    assert unpack_glyphs(cond.pooled_embeds, GLYPH_DIM)[1].sum() == len('Text "red ball". ') + 1  # bytes and </s>
    s = dataclasses.replace(load_config(TINY).sampling, num_steps=num_steps, shift=shift, eta=0.0, sde_type="dance",
                            ode_solver="euler", group_size=1, rollout_batch_size=1)
    shape = policy.latent_shape(5, 32, 32)
    assert shape == (32, 2, 2, 2)
    ours = rollout(policy, cond, s, shape, (0, 0), CPU)
    theirs = pipe(prompt=GLYPH_PROMPT, latents=ours.latents[:, 0], num_inference_steps=num_steps, height=32, width=32,
                  num_frames=5, output_type="latent").frames
    torch.testing.assert_close(pipe.scheduler.sigmas[:-1].double(), ours.schedule[:-1], rtol=0, atol=1e-7)
    torch.testing.assert_close(ours.final_latents, theirs, rtol=1e-5, atol=1e-5)
    assert not torch.equal(ours.latents[:, 0], ours.final_latents)


def test_guidance_and_glyphs_move_the_prediction(folder):
    """cfg_scale g: uncond + g * (cond - uncond); the glyph tokens are read (dropping them
    changes the prediction) and cropping their padding changes nothing."""
    pipe = load_pipeline(folder, transformer=None)
    cond = pipeline_conditioning(pipe, GLYPH_PROMPT)
    guided, plain = folder_policy(folder, cfg_scale=6.0), folder_policy(folder, cfg_scale=1.0)
    x = torch.randn(1, 32, 2, 2, 2, generator=torch.Generator().manual_seed(0))
    no_glyphs = dataclasses.replace(cond, pooled_embeds=torch.zeros_like(cond.pooled_embeds))
    with torch.no_grad():
        conditional, unconditional = plain.predict(x, 0.6, cond), plain.predict(x, 0.6, cond.negative)
        torch.testing.assert_close(guided.predict(x, 0.6, cond), unconditional + 6.0 * (conditional - unconditional),
                                   rtol=1e-5, atol=1e-5)
        assert (conditional - plain.predict(x, 0.6, no_glyphs)).abs().max() > 1e-4
        # The whole padded text, as the pipeline passes it, through the network unchanged.
        glyphs, glyph_mask = unpack_glyphs(cond.pooled_embeds, GLYPH_DIM)
        whole = plain.transformer(
            hidden_states=torch.cat([x, torch.zeros(1, 33, 2, 2, 2)], 1), timestep=torch.full((1,), 600.0),
            encoder_hidden_states=cond.prompt_embeds, encoder_attention_mask=cond.attention_mask,
            encoder_hidden_states_2=glyphs, encoder_attention_mask_2=glyph_mask,
            image_embeds=torch.zeros(1, 729, plain.transformer.config.image_embed_dim), return_dict=False)[0]
    torch.testing.assert_close(conditional, whole, rtol=1e-5, atol=1e-5)
    assert (conditional - unconditional).abs().max() > 1e-3
    assert plain.text_tokens(cond) == int(cond.attention_mask.sum()) + int(glyph_mask.sum())


def test_the_tiny_tokenizer_crops_exactly_the_chat_template(folder):
    """The pipeline crops a fixed 108 tokens (Qwen2.5's template before the prompt): the tiny
    Qwen2 tokenizer splits that template into exactly 108, so the kept tokens are the prompt's
    and the 5 after it (<|im_end|>, newline, <|im_start|>, assistant, newline)."""
    pipe = load_pipeline(folder, transformer=None)
    with torch.no_grad():
        _, mask, _, glyph_mask = pipe.encode_prompt(["a red ball", "", GLYPH_PROMPT], device="cpu", batch_size=3)
    prompt_tokens = [len(pipe.tokenizer(p).input_ids) for p in ("a red ball", " ", GLYPH_PROMPT)]
    assert mask.sum(1).tolist() == [n + 5 for n in prompt_tokens]
    assert glyph_mask.sum(1).tolist() == [0, 0, len('Text "red ball". ') + 1]


def test_decode_divides_by_the_scaling_factor_as_the_pipeline(folder):
    policy = folder_policy(folder, cfg_scale=1.0)
    pipe = load_pipeline(folder, transformer=policy.transformer, vae=policy.vae,
                         guider=ClassifierFreeGuidance(guidance_scale=1.0))
    inputs = dict(prompt="a blue ocean wave", num_inference_steps=1, height=32, width=32, num_frames=5)
    latents = pipe(**inputs, output_type="latent", generator=torch.Generator().manual_seed(0)).frames
    frames = pipe(**inputs, output_type="np", generator=torch.Generator().manual_seed(0)).frames
    ours = policy.decode(latents)
    assert ours.shape == frames.shape == (1, 5, 32, 32, 3) and ours.dtype == torch.uint8
    np.testing.assert_allclose(ours.numpy() / 255.0, frames, atol=1 / 255 + 1e-6)


def test_glyphs_pack_into_the_pooled_slot_and_other_widths_are_refused(folder):
    embeds, mask = torch.randn(2, 3, 4), torch.tensor([[1, 1, 0], [1, 0, 0]])
    packed = pack_glyphs(embeds, mask)
    assert packed.shape == (2, 3 * 5)
    unpacked, unpacked_mask = unpack_glyphs(packed, 4)
    assert torch.equal(unpacked, embeds) and torch.equal(unpacked_mask, mask)
    with pytest.raises(ValueError, match="the pooled conditioning of width 14 is not ByT5 glyph tokens of width 4"):
        unpack_glyphs(packed[:, :14], 4)
    model_cfg = dataclasses.replace(tiny_model_config(), size="full", path=str(folder), dtype="fp32")
    with pytest.raises(ConfigError, match=rf"the text embeddings \(data.embeddings_dir\) of width 16 do not match "
                                          rf"model.path={folder}: its transformer takes 32-dim Qwen2.5-VL"):
        build_policy(model_cfg, CPU, 16, PACKED)
    with pytest.raises(ConfigError, match=r"the pooled embeddings \(data.embeddings_dir\) of width 8 are not ByT5 "
                                          r"glyph tokens"):
        build_policy(model_cfg, CPU, TEXT_DIM, 8)
    policy = build_policy(model_cfg, CPU, TEXT_DIM, PACKED)
    assert policy.latent_shape(121, 480, 848) == (32, 31, 30, 53)
    with pytest.raises(ValueError, match=r"sampling.height/width/num_frames=480x840x121: HunyuanVideo-1.5 needs "
                                         r"height and width multiples of 16 and num_frames 1 \+ a multiple of 4"):
        policy.latent_shape(121, 480, 840)


def test_preprocessing_writes_what_encode_prompt_returns_bitwise(folder, tmp_path, monkeypatch):
    import preprocess_hunyuan_video_15_embeddings as cli

    prompts = ["a red ball bouncing on the floor", GLYPH_PROMPT, " ".join(["red"] * 20)]
    (tmp_path / "prompts.txt").write_text("\n".join(prompts) + "\n")
    assert cli.run(["--model-path", str(folder), "--prompts", str(tmp_path / "prompts.txt"), "--output",
                    str(tmp_path / "emb"), "--max-tokens", "16", "--dtype", "fp32", "--device", "cpu"]) == 0
    data = EmbeddingDataset(tmp_path / "emb")
    pipe = load_pipeline(folder, transformer=None)
    pipe.tokenizer_max_length = 16
    with torch.no_grad():
        embeds, mask, glyphs, glyph_mask = pipe.encode_prompt(prompts, device="cpu", batch_size=3)
        negative = pipe.encode_prompt([""], device="cpu", batch_size=1)
    cond = data.conditioning([0, 1, 2])
    assert torch.equal(cond.prompt_embeds, embeds) and torch.equal(cond.attention_mask, mask.long())
    assert torch.equal(cond.pooled_embeds, pack_glyphs(glyphs, glyph_mask))
    assert cond.attention_mask.sum(1).tolist() == [12, 16, 16]  # 7 words + 5, then truncated at 16
    assert torch.equal(cond.negative.prompt_embeds, negative[0].expand(3, -1, -1))
    assert torch.equal(cond.negative.pooled_embeds, pack_glyphs(negative[2], negative[3]).expand(3, -1))
    assert (data.max_tokens, data.text_dim, data.pooled_dim) == (16, TEXT_DIM, PACKED)
    # The same through `fastvideo-grpo-preprocess --family hunyuan_video_15`.
    from fastvideo_grpo.cli.preprocess import command

    monkeypatch.setattr("sys.argv", ["fastvideo-grpo-preprocess", "--family", "hunyuan_video_15", "--model-path",
                                     str(folder), "--prompts", str(tmp_path / "prompts.txt"), "--output",
                                     str(tmp_path / "emb2"), "--max-tokens", "16", "--dtype", "fp32", "--device",
                                     "cpu"])
    assert command() == 0
    again = EmbeddingDataset(tmp_path / "emb2").conditioning([0, 1, 2])
    assert all(torch.equal(getattr(again, key), getattr(cond, key))
               for key in ("prompt_embeds", "attention_mask", "pooled_embeds"))


def test_the_released_size_is_8_3b_and_flops_are_what_flop_counter_mode_counts():
    """The published config on the meta device: the model card's 8.3B parameters, diffusers'
    own defaults; the FLOP formula against FlopCounterMode on the tiny network (one row, the
    conditional and empty-prompt rows of a guided forward)."""
    with torch.device("meta"):
        network = HunyuanVideo15Transformer3DModel(**HUNYUAN_VIDEO_15_480P_T2V)
        assert sum(p.numel() for p in network.parameters()) == pytest.approx(8.33e9, rel=0.01)
        assert public(network.config) == public(HunyuanVideo15Transformer3DModel().config)
        assert public(AutoencoderKLHunyuanVideo15(**HUNYUAN_VIDEO_15_VAE).config) == public(
            AutoencoderKLHunyuanVideo15().config)
    cfg = load_config(TINY, [f"data.prompts_file={PROMPTS}", "model.tiny_layers=2"])
    policy = tiny_policy(cfg)
    cond = tiny_conditioning(cfg, ["a red cube", "the blue sky at noon"], 1)
    cond.negative = tiny_conditioning(cfg, ["", ""], 1)
    x = torch.randn(2, *policy.latent_shape(5, 64, 64))
    with torch.no_grad(), counter() as count:
        policy.predict(x, 0.5, cond)
    counted = FAMILIES["hunyuan_video_15"].forward_flops(policy.transformer, tuple(x.shape[1:]),
                                                          policy.text_tokens(cond))
    assert counted == pytest.approx(count.get_total_flops() / 4, rel=0.01)


def public(config) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in config.items() if not k.startswith("_")}


def test_lora_adapts_every_blocks_attention_and_mlp_linears():
    from fastvideo_grpo.models.lora import apply_lora

    cfg = load_config(TINY, [f"data.prompts_file={PROMPTS}", "model.tiny_layers=2"])
    network = tiny_policy(cfg).transformer
    apply_lora(network, 4, 0.0, FAMILIES["hunyuan_video_15"].lora_targets)
    adapted = sorted({n.split(".lora_A")[0] for n, _ in network.named_parameters() if ".lora_A." in n})
    expected = sorted(f"transformer_blocks.{i}.{m}" for i in range(2) for m in (
        *(f"attn.{p}" for p in ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj",
                                "to_add_out")), "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj",
        "ff_context.net.2"))
    assert adapted == expected


@pytest.mark.parametrize("lora", [False, True])
def test_every_trainable_parameter_gets_a_gradient(lora):
    """The last block's text stream feeds nothing; its parameters (and their adapters) still
    get a gradient, zero, so that the optimizer holds state for every trainable parameter
    (a checkpoint's optimizer state would otherwise miss them and not load)."""
    from fastvideo_grpo.models.lora import apply_lora

    cfg = load_config(TINY, [f"data.prompts_file={PROMPTS}", "model.tiny_layers=2"])
    policy = tiny_policy(cfg)
    if lora:
        apply_lora(policy.transformer, 4, 0.0, FAMILIES["hunyuan_video_15"].lora_targets)
    cond = tiny_conditioning(cfg, ["a red cube"], 1)
    cond.negative = tiny_conditioning(cfg, [""], 1)
    policy.predict(torch.randn(1, *policy.latent_shape(5, 32, 32)), 0.5, cond).square().sum().backward()
    trainable = {n: p for n, p in policy.transformer.named_parameters() if p.requires_grad}
    assert [n for n, p in trainable.items() if p.grad is None] == []
    last = ("transformer_blocks.1.attn.to_add_out", "transformer_blocks.1.ff_context")
    dead = [n for n in trainable if n.startswith(last)]
    assert dead and all(not trainable[n].grad.any() for n in dead)


SMALL = ("sampling.group_size=4", "sampling.rollout_batch_size=4", "sampling.decode_batch_size=4",
         "train.prompts_per_iteration=1", "train.iterations=3", "train.sample_every=0", "train.progress_bar=false")


@pytest.fixture(scope="module")
def grpo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("grpo")
    return train(load_config(TINY, [f"train.output_dir={out}", f"data.prompts_file={PROMPTS}", *SMALL,
                                    "train.iterations=1"]))


def test_the_export_cli_writes_a_folder_the_pipeline_samples_from(grpo_run, folder, tmp_path):
    checkpoint = latest_checkpoint(grpo_run)
    subprocess.run([sys.executable, "-m", "fastvideo_grpo.export", "--checkpoint", str(checkpoint), "--output",
                    str(tmp_path / "export"), "--base-model", str(folder)], check=True, cwd=ROOT, capture_output=True)
    pipe = load_pipeline(tmp_path / "export")
    trained = HunyuanVideo15Transformer3DModel.from_pretrained(tmp_path / "export", subfolder="transformer")
    initial = HunyuanVideo15Transformer3DModel.from_pretrained(folder, subfolder="transformer").state_dict()
    assert any(not torch.equal(w, initial[name]) for name, w in trained.state_dict().items())
    assert all(torch.equal(w, trained.state_dict()[name]) for name, w in pipe.transformer.state_dict().items())
    frames = pipe(prompt=GLYPH_PROMPT, height=32, width=32, num_frames=5, num_inference_steps=2, output_type="np",
                  generator=torch.Generator().manual_seed(0)).frames
    assert frames.shape == (1, 5, 32, 32, 3) and np.isfinite(frames).all()
    assert frames.min() >= 0 and frames.max() <= 1


def test_sequence_parallel_needs_the_video_tokens_to_split(folder):
    from fastvideo_grpo.models import check_model_config

    check_model_config(load_config(TINY, ["parallel.sp_size=2"]))  # 2 x 2 x 2 tokens
    # One frame of 48 x 48: 3 x 3 tokens; the same read from the folder's configs at full size.
    sizes = ["parallel.sp_size=2", "sampling.num_frames=1", "sampling.height=48", "sampling.width=48"]
    for model in ([], ["model.size=full", f"model.path={folder}", "data.embeddings_dir=/unread"]):
        with pytest.raises(ConfigError, match=r"parallel.sp_size: 2 is invalid for sampling.height=48 x "
                                              r"sampling.width=48 x sampling.num_frames=1: 9 video tokens per sample"):
            check_model_config(load_config(TINY, [*sizes, *model]))


@pytest.mark.slow  # two processes and the one-rank reference: ~55 s on 2 shared cores
def test_sequence_parallel_two_ranks_train_what_one_does(one_rank_run, tmp_path):
    """Ulysses over the video tokens of the joint attention (the text on every rank): the two
    sp ranks share 2 prompts and train what one rank trains alone."""
    args = [*COMMON, "train.prompts_per_iteration=2"]
    one = one_rank_run(TINY, *args)
    run([DIST / "train_run.py", "--config", TINY, *args, "parallel.sp_size=2", f"train.output_dir={tmp_path}"],
        nproc=2)
    assert_same_training(one, tmp_path)


def test_the_planners_forward_equals_the_models_on_real_tensors():
    """traced.all_valid_forward (the model's forward without reading values, for fake
    tensors) == the model's own forward where every text token is valid and there are no
    image tokens, with and without diffusers' activation checkpointing."""
    from fastvideo_grpo.models.hunyuan_video_15.traced import traced

    cfg = load_config(TINY, [f"data.prompts_file={PROMPTS}", "model.tiny_layers=2"])
    network = tiny_policy(cfg).transformer
    generator = torch.Generator().manual_seed(0)
    inputs = dict(hidden_states=torch.randn(2, 65, 2, 2, 2, generator=generator), timestep=torch.full((2,), 600.0),
                  encoder_hidden_states=torch.randn(2, 5, TEXT_DIM, generator=generator),
                  encoder_attention_mask=torch.ones(2, 5, dtype=torch.long),
                  encoder_hidden_states_2=torch.randn(2, 3, GLYPH_DIM, generator=generator),
                  encoder_attention_mask_2=torch.ones(2, 3, dtype=torch.long),
                  image_embeds=torch.zeros(2, 0, network.config.image_embed_dim), return_dict=False)
    expected = network(**inputs)[0]
    for checkpointing in (False, True):
        if checkpointing:
            network.enable_gradient_checkpointing()
        with traced(network):
            torch.testing.assert_close(network(**inputs)[0], expected, rtol=1e-5, atol=1e-5)
    assert "forward" not in vars(network)  # the model's own forward again


def test_the_flagship_config_plans_the_released_8_3b_on_paper():
    """hunyuan_video_15_t2v.yaml with no model.path: the released architecture on the meta
    device, 121 frames at 480x848 in 31 latent frames of 30 x 53, its VAE's spatial tiles
    (256 pixels every 192) in the decode estimate."""
    from fastvideo_grpo.planning.policy import load_plan_config, planned_policy
    from fastvideo_grpo.planning.tracer import DecodeProbe, decode_estimate

    cfg = load_plan_config(ROOT / "assets/configs/hunyuan_video_15_t2v.yaml", [])
    policy, source = planned_policy(cfg)
    assert "released" in source
    assert sum(p.numel() for p in policy.transformer.parameters()) == pytest.approx(8.33e9, rel=0.01)
    s = cfg.sampling
    assert policy.latent_shape(s.num_frames, s.height, s.width) == (32, 31, 30, 53)
    assert (policy.cfg_scale, s.shift, cfg.parallel.sp_size) == (6.0, 5.0, 2)
    working, flops = decode_estimate(cfg, policy, DecodeProbe(bytes_per_voxel=1.0, flops_per_voxel=1.0))
    video_bytes = 3 * 121 * 480 * 848 * 2  # bf16
    assert working == 121 * 256 * 256 + 2 * video_bytes
    # Tiles start every 192 pixels: rows at 0, 192, 384 (256, 256, 96 high), columns at 0 ... 768.
    assert flops == pytest.approx(121 * (256 + 256 + 96) * (4 * 256 + 80))


def test_the_planner_plans_the_tiny_folder_with_sequence_parallelism(folder):
    """The folder's config on fake tensors (the model's value reads replaced), SP 2 over 2
    ranks: it fits, with the folder's parameter count."""
    from fastvideo_grpo.planning.cluster import Cluster
    from fastvideo_grpo.planning.plan import plan

    result = plan(TINY, ["model.size=full", f"model.path={folder}", "data.embeddings_dir=/unread",
                         "parallel.sp_size=2"],
                  Cluster(nodes=1, gpus_per_node=2, gpu_memory_gb=80, reserve_gb=0), knobs=False)
    assert result["fits"]
    network = HunyuanVideo15Transformer3DModel.from_pretrained(folder, subfolder="transformer")
    assert result["parameters"] == sum(p.numel() for p in network.parameters())
