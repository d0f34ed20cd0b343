import dataclasses

import pytest
import torch
from diffusers import FluxTransformer2DModel, HunyuanVideoTransformer3DModel

from conftest import ROOT
from helpers import read_jsonl, tiny_conditioning, tiny_policy
from fastvideo_grpo.algorithms import grpo
from fastvideo_grpo.config import ConfigError, ModelConfig, load_config
from fastvideo_grpo.flops import forward_flops, iteration_flops, peak_tflops, throughput
from fastvideo_grpo.models.flop_count import counter
from fastvideo_grpo.models.flux.published import FLUX_DEV
from fastvideo_grpo.models.hunyuan_video.published import HUNYUAN_VIDEO
from fastvideo_grpo.parallel import World
from fastvideo_grpo.training.trainer import train

CPU = torch.device("cpu")


def tiny(config, *overrides):
    return load_config(ROOT / "assets/configs" / config, [f"data.prompts_file={ROOT / 'assets/prompts/tiny.txt'}",
                                                          *overrides])


def predict_inputs(cfg, policy, samples=2):
    s = cfg.sampling
    cond = tiny_conditioning(cfg, ["a red cube", "the blue sky at noon"][:samples], 1)
    if cfg.model.cfg_scale > 1:
        cond.negative = tiny_conditioning(cfg, [""] * samples, 1)
    return torch.randn(samples, *policy.latent_shape(s.num_frames, s.height, s.width)), cond


@pytest.mark.parametrize("config", ["tiny_t2v.yaml", "tiny_flux_t2i.yaml", "tiny_hunyuan_t2i.yaml",
                                    "tiny_sd_t2i.yaml", "tiny_wan_t2v.yaml", "tiny_wan_ti2v.yaml",
                                    "tiny_hunyuan_video_15_t2v.yaml", "tiny_wan_moe_t2v.yaml"])
def test_one_rows_forward_is_what_flop_counter_mode_counts(config):
    cfg = tiny(config, "model.tiny_layers=2", "model.tiny_single_layers=2")
    policy = tiny_policy(cfg)
    x, cond = predict_inputs(cfg, policy)
    with torch.no_grad(), counter() as count:
        policy.predict(x, 0.5, cond)
    rows = x.shape[0] * (2 if cfg.model.cfg_scale > 1 else 1)
    counted = forward_flops(cfg.model, policy.transformer, tuple(x.shape[1:]), policy.text_tokens(cond))
    assert counted == pytest.approx(count.get_total_flops() / rows, rel=0.01)


@pytest.mark.parametrize("condition", [dict(in_channels=33, image_condition_type="latent_concat"),
                                       dict(in_channels=16, image_condition_type="token_replace")])
def test_image_to_video_variants_are_counted(condition):
    net = HunyuanVideoTransformer3DModel(num_attention_heads=4, attention_head_dim=16, num_layers=1, num_single_layers=1,
                                         num_refiner_layers=1, mlp_ratio=2.0, text_embed_dim=32,
                                         pooled_projection_dim=32, rope_axes_dim=(4, 6, 6), guidance_embeds=False,
                                         **condition)
    with torch.no_grad(), counter() as count:
        net(torch.randn(1, condition["in_channels"], 3, 8, 8), torch.full((1,), 500.0), torch.randn(1, 16, 32),
            torch.ones(1, 16, dtype=torch.long), torch.randn(1, 32))
    counted = forward_flops(ModelConfig(family="hunyuan_video_i2v"), net, (16, 3, 8, 8), 16)
    assert counted == pytest.approx(count.get_total_flops(), rel=0.01)


def test_full_size_forwards_are_what_flop_counter_mode_counts_on_the_meta_device():
    """The released HunyuanVideo at 53 frames of 480 x 832 (latent 14 x 60 x 104, 256 text
    tokens) and FLUX.1-dev at 1024^2 (512 text tokens): shapes only, no compute."""
    with torch.device("meta"):
        hunyuan = HunyuanVideoTransformer3DModel(**HUNYUAN_VIDEO)
        flux = FluxTransformer2DModel(**FLUX_DEV)
        with torch.no_grad(), counter() as hv:
            hunyuan(torch.empty(1, 16, 14, 60, 104), torch.ones(1), torch.empty(1, 256, 4096),
                    torch.ones(1, 256, dtype=torch.long), torch.empty(1, 768), guidance=torch.ones(1))
        with torch.no_grad(), counter() as fx:
            flux(torch.empty(1, 64 * 64, 64), torch.empty(1, 512, 4096), torch.empty(1, 768), torch.ones(1),
                 torch.empty(64 * 64, 3), torch.empty(512, 3), torch.ones(1), return_dict=False)
    hunyuan_flops = forward_flops(ModelConfig(family="hunyuan_video"), hunyuan, (16, 14, 60, 104), 256)
    assert hunyuan_flops == pytest.approx(hv.get_total_flops(), rel=0.01)
    assert forward_flops(ModelConfig(family="flux"), flux, (16, 128, 128), 512) == pytest.approx(fx.get_total_flops(),
                                                                                                 rel=0.01)
    # The textbook count of 60 blocks over S = 14 * 30 * 52 + 256 tokens at D = 3072: q, k, v,
    # out and an MLP of ratio 4 (24 D^2 per token) and attention (4 S^2 D); the embedders and
    # the output projection are the remaining 0.02%.
    s, d = 14 * 30 * 52 + 256, 3072
    blocks = 60 * (24 * d * d * s + 4 * s * s * d)
    assert blocks / hv.get_total_flops() == pytest.approx(0.9998, abs=1e-4)
    assert 4 * s * s * d / (24 * d * d * s + 4 * s * s * d) == pytest.approx(0.545, abs=1e-3)  # attention's share


@pytest.mark.parametrize("checkpointing", [False, True])
def test_a_training_micro_batch_is_three_forwards_and_a_recompute_with_checkpointing(checkpointing):
    """Forward, backward and (with activation checkpointing) the blocks' recompute under
    FlopCounterMode, against the trainer's count of the same rows; blocks dominate at
    64 x 64 x 9 frames (they are 95% of the forward)."""
    cfg = tiny("tiny_t2v.yaml", "sampling.height=64", "sampling.width=64", "sampling.num_frames=9",
               "data.max_text_tokens=32", "model.tiny_layers=2", "model.tiny_single_layers=2",
               f"parallel.activation_checkpointing={str(checkpointing).lower()}")
    policy = tiny_policy(cfg)
    if checkpointing:
        policy.transformer.enable_gradient_checkpointing()
    x, cond = predict_inputs(cfg, policy)
    sampler = policy.sampler(cfg.sampling)
    with counter() as count:
        step = sampler.sde_step(policy.predict(x, float(sampler.levels[2]), cond), x, sampler.levels, 2,
                                prev_sample=torch.randn_like(x))
        loss, _ = grpo.clipped_loss(step.log_prob - step.log_prob.detach(), torch.tensor([1.0, -1.0]), 0.2)
        loss.backward()
    row = forward_flops(cfg.model, policy.transformer, tuple(x.shape[1:]), policy.text_tokens(cond))
    predicted = iteration_flops(cfg, row, 0, x.shape[0])["train"]
    assert predicted == pytest.approx(count.get_total_flops(), rel=0.05)
    assert predicted == (4 if checkpointing else 3) * x.shape[0] * row


def test_frozen_networks_add_one_forward_per_counted_row():
    """transformer_forwards_train counts trained and frozen rows together: GRPO with a KL
    reference logs 2 rows per trained sample (3 + 1 forwards), NFT 2 (the old policy) or 3
    (and its reference), LoRA's backward is one forward (no weight gradients of the base)."""
    f = 1000.0
    plain = tiny("tiny_t2v.yaml")
    assert iteration_flops(plain, f, 10, 4) == {"rollout": 10 * f, "train": 4 * 3 * f}
    kl = tiny("tiny_t2v.yaml", "grpo.kl_weight=0.1")
    assert iteration_flops(kl, f, 0, 2 * 4)["train"] == 4 * (3 + 1) * f
    nft = tiny("tiny_t2v.yaml", "train.algorithm=nft", "sampling.shared_noise=false")
    assert iteration_flops(nft, f, 0, 2 * 4)["train"] == 4 * (3 + 1) * f
    nft_kl = tiny("tiny_t2v.yaml", "train.algorithm=nft", "sampling.shared_noise=false", "nft.kl_weight=0.1")
    assert iteration_flops(nft_kl, f, 0, 3 * 4)["train"] == 4 * (3 + 2) * f
    lora = tiny("tiny_t2v.yaml", "model.lora_rank=4", "parallel.activation_checkpointing=true")
    assert iteration_flops(lora, f, 0, 4)["train"] == 4 * (1 + 1 + 1) * f


def test_throughput_per_rank_over_the_iteration_time_and_mfu_against_the_configured_peak():
    cfg = tiny("tiny_t2v.yaml")
    policy = tiny_policy(cfg)
    shape, text = policy.latent_shape(5, 32, 32), 16
    row = forward_flops(cfg.model, policy.transformer, shape, text)
    metrics = {"transformer_forwards_rollout": 100, "transformer_forwards_train": 40, "time_iteration": 2.0}
    world = World(0, 4, CPU, None)
    got = throughput(cfg, policy.transformer, shape, text, metrics, world)
    expected = (100 * row + 40 * 3 * row) / 4 / 2.0 / 1e12
    assert got == {"tflops_per_gpu": pytest.approx(expected, rel=1e-12)}  # CPU: no peak, no MFU
    cfg.logging.peak_tflops = 2 * expected
    assert throughput(cfg, policy.transformer, shape, text, metrics, world)["mfu"] == pytest.approx(0.5)


def test_the_peak_is_looked_up_by_cuda_device_name_for_bf16_runs(monkeypatch):
    cfg = tiny("tiny_t2v.yaml", "model.dtype=bf16")
    gpu = torch.device("cuda", 0)
    for name, peak in [("NVIDIA H100 80GB HBM3", 989.0), ("NVIDIA H100 PCIe", 756.0), ("NVIDIA H200", 989.0),
                       ("NVIDIA H800", 989.0), ("NVIDIA A100-SXM4-80GB", 312.0), ("Tesla V100-SXM2-32GB", 0.0)]:
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device, name=name: name)
        assert peak_tflops(cfg, gpu) == peak, name
    assert peak_tflops(dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, dtype="fp32")), gpu) == 0.0
    assert peak_tflops(cfg, CPU) == 0.0
    cfg.logging.peak_tflops = 500.0
    assert peak_tflops(cfg, gpu) == 500.0
    with pytest.raises(ConfigError, match="logging.peak_tflops"):
        tiny("tiny_t2v.yaml", "logging.peak_tflops=-1")


def test_a_run_logs_tflops_per_gpu_and_mfu_from_its_forward_counts(tmp_path):
    prompt = "a red ball bouncing on the floor"
    (tmp_path / "prompts.txt").write_text(prompt + "\n")
    cfg = tiny("tiny_t2v.yaml", f"train.output_dir={tmp_path / 'run'}", "train.iterations=1", "train.progress_bar=false",
               "train.sample_every=0", "checkpoint.every=0", "train.prompts_per_iteration=1",
               "sampling.group_size=4", "sampling.rollout_batch_size=4", "logging.peak_tflops=0.001",
               f"data.prompts_file={tmp_path / 'prompts.txt'}")
    (row,) = read_jsonl(train(cfg) / "metrics.jsonl")
    policy = tiny_policy(cfg)
    s = cfg.sampling
    # The network runs over the prompt's own tokens, not the padded max_text_tokens.
    tokens = int(tiny_conditioning(cfg, [prompt], 1).attention_mask.sum())
    assert policy.text_tokens(tiny_conditioning(cfg, [prompt], 1)) == tokens < cfg.data.max_text_tokens
    flops = forward_flops(cfg.model, policy.transformer, policy.latent_shape(s.num_frames, s.height, s.width), tokens)
    executed = flops * (row["transformer_forwards_rollout"] + 3 * row["transformer_forwards_train"])
    assert row["transformer_forwards_rollout"] == 4 * 8
    assert row["tflops_per_gpu"] == pytest.approx(executed / row["time_iteration"] / 1e12, rel=1e-9)
    assert row["mfu"] == pytest.approx(row["tflops_per_gpu"] / 0.001, rel=1e-9)
