"""The planner (fastvideo_grpo/planning/): its tiny plan against the same step run for real, its
full-size architectures against diffusers', and its CLI's JSON."""

import json
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
from helpers import ROOT, run_update, tiny_conditioning, tiny_policy, tiny_rollout
from torch.distributed._tools.fsdp2_mem_tracker import FSDPMemTracker
from torch.distributed.fsdp import FSDPModule

from fastvideo_grpo.config import load_config
from fastvideo_grpo.parallel import init_distributed
from fastvideo_grpo.parallel.fsdp import parallelize, set_gradient_sync
from fastvideo_grpo.planning.cluster import Cluster
from fastvideo_grpo.planning.counts import micro_batch_size
from fastvideo_grpo.planning.plan import plan
from fastvideo_grpo.planning.policy import load_plan_config, planned_policy
from fastvideo_grpo.algorithms.grpo import MicroBatch
from fastvideo_grpo.algorithms.learner import build_optimizer

TINY = ROOT / "assets/configs/tiny_t2v.yaml"
ONE_RANK = Cluster(nodes=1, gpus_per_node=1, gpu_memory_gb=80, reserve_gb=0)
# The keys the module docstring documents for --json.
KEYS = {"config", "overrides", "family", "architecture", "world", "gpu_memory_gb", "reserve_gb", "reserve_items_gb",
        "fits", "fits_by", "headroom_gb", "parameters", "trainable_parameters", "peak_gb", "peak_phase",
        "setup_peak_gb", "micro_batch_peak_gb", "memory_gb", "memory_by_phase_gb", "host_gb", "host_memory_gb",
        "host_per_node_gb", "host_peak_per_node_gb", "reward", "rollout_reshard", "tracked", "estimated", "flops",
        "forwards", "seconds_per_iteration", "peak_tflops", "mfu", "knobs", "knobs_checked", "notes", "plan_seconds",
        "plan_cpu_seconds"}


@pytest.fixture(scope="module")
def tiny_plan():
    return plan(TINY, [], ONE_RANK, knobs=False)


def measured_micro_batch_peak(cfg, monkeypatch) -> int:
    """FSDPMemTracker's peak over one real micro-batch of GRPO's update on one gloo rank,
    after a first one (so AdamW's state exists, as at any later step)."""
    monkeypatch.setenv("RANK", "0")
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        world = init_distributed("cpu", 1, 1)
        policy = tiny_policy(cfg)
        parallelize(policy, world, cfg)
        optimizer, scheduler = build_optimizer(policy, cfg)
        group = cfg.sampling.group_size
        # As long as the plan's text (data.max_text_tokens): a shorter prompt's is cropped.
        cond = tiny_conditioning(cfg, [" ".join(["a red ball rolling"] * 4)], group)
        ro = tiny_rollout(cfg, policy, cond, cfg.sampling.rollout_batch_size)
        advantages = torch.randn(group)
        micro_batch = [[MicroBatch(samples=torch.arange(micro_batch_size(cfg)), step=ro.plan.trainable[0])]]
        run_update(policy, optimizer, scheduler, ro, cond, advantages, micro_batch, cfg)
        tracker = FSDPMemTracker(policy.transformer, optimizer)
        with tracker:
            run_update(policy, optimizer, scheduler, ro, cond, advantages, micro_batch, cfg)
        return tracker.get_tracker_snapshot("peak")[torch.device("cpu")]["Total"]
    finally:
        dist.destroy_process_group()


def test_tiny_plan_matches_the_real_model_and_step(tiny_plan, monkeypatch):
    cfg = load_config(TINY)
    real = tiny_policy(cfg).transformer
    assert tiny_plan["parameters"] == sum(p.numel() for p in real.parameters())
    assert tiny_plan["trainable_parameters"] == tiny_plan["parameters"]
    measured = measured_micro_batch_peak(cfg, monkeypatch)
    planned = tiny_plan["micro_batch_peak_gb"] * 2**30
    assert abs(planned - measured) <= 0.15 * measured, (planned, measured)


def test_accumulated_gradient_is_the_fp32_unsharded_gradient(monkeypatch):
    """In bf16, a micro-batch without gradient sync leaves FSDP2 holding each parameter's
    unsharded gradient in the fp32 reduce dtype: what the plan adds while micro-batches accumulate."""
    tiny_plan = plan(TINY, ["parallel.reduce_grads_every_micro_batch=false"], ONE_RANK, knobs=False)
    cfg = load_config(TINY, ["model.dtype=bf16"])
    monkeypatch.setenv("RANK", "0")
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        policy = tiny_policy(cfg)
        parallelize(policy, init_distributed("cpu", 1, 1), cfg)
        set_gradient_sync(policy.transformer, False)
        s = cfg.sampling
        latents = torch.randn(1, *policy.latent_shape(s.num_frames, s.height, s.width))
        policy.predict(latents, 0.5, tiny_conditioning(cfg, ["a red ball"], 1)).square().mean().backward()
        held = [fsdp_param.unsharded_accumulated_grad for module in policy.transformer.modules()
                if isinstance(module, FSDPModule) and module._get_fsdp_state()._fsdp_param_group is not None
                for fsdp_param in module._get_fsdp_state()._fsdp_param_group.fsdp_params]
    finally:
        dist.destroy_process_group()
    assert {g.dtype for g in held} == {torch.float32}
    held_bytes = sum(g.numel() * g.element_size() for g in held)
    assert held_bytes == 4 * tiny_plan["trainable_parameters"]
    assert tiny_plan["memory_by_phase_gb"]["train"]["accumulated_gradient"] == pytest.approx(held_bytes / 2**30,
                                                                                            abs=1e-6)


@pytest.mark.parametrize("config, expected", [
    ("hunyuan_t2v", None),  # diffusers' HunyuanVideoTransformer3DModel() defaults
    ("flux_t2i", 11_901_408_320),  # FLUX.1-dev
    ("sd_t2i", 859_520_964),  # Stable Diffusion 1.5's UNet
])
def test_full_size_architectures(config, expected):
    from diffusers import HunyuanVideoTransformer3DModel

    cfg = load_plan_config(ROOT / f"assets/configs/{config}.yaml")  # model.path and data folders left empty
    policy, source = planned_policy(cfg)
    assert "released" in source
    assert all(p.is_meta for p in policy.transformer.parameters())
    if expected is None:
        with torch.device("meta"):
            expected = sum(p.numel() for p in HunyuanVideoTransformer3DModel().parameters())
        s = cfg.sampling
        assert policy.latent_shape(s.num_frames, s.height, s.width) == (16, 14, 60, 60)
    assert sum(p.numel() for p in policy.transformer.parameters()) == expected


def test_json_keys_and_knobs_when_it_does_not_fit(tiny_plan):
    assert set(tiny_plan) == KEYS
    assert tiny_plan["fits"] and not tiny_plan["knobs"] and tiny_plan["peak_gb"] > 0
    assert set(tiny_plan["flops"]) == {"rollout", "train", "decode", "total"}
    assert all(tiny_plan["flops"][k] > 0 for k in ("rollout", "train", "decode"))
    # The trainer's count: tiny_t2v's row (16 x 2 x 4 x 4 latent, 16 text tokens) is 5,578,752
    # FLOPs (FlopCounterMode's too, tests/test_flops.py); training is 3 forwards a pair.
    assert tiny_plan["flops"]["rollout"] == tiny_plan["forwards"]["rollout"] * 5578752
    assert tiny_plan["flops"]["train"] == tiny_plan["forwards"]["train"] * 3 * 5578752
    # Below the peak, and above what decoding one video at a time needs (tiny_t2v decodes 8).
    decode = tiny_plan["memory_by_phase_gb"]["decode"]
    memory = tiny_plan["peak_gb"] - decode["vae_decode"] / 2
    result = subprocess.run(
        [sys.executable, "-m", "fastvideo_grpo.plan", "--config", str(TINY), "--nodes", "1", "--gpus-per-node", "1",
         "--gpu-memory-gb", f"{memory:.6f}", "--reserve-gb", "0", "--json"],
        capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout)
    assert set(out) == KEYS
    assert out["fits"] is False and out["headroom_gb"] < 0
    assert out["knobs"], out["knobs_checked"]
    assert all(k["fits"] and k["peak_gb"] <= memory for k in out["knobs"])
    assert "sampling.decode_batch_size=1" in [k["override"] for k in out["knobs"]]


# DiffusionNFT on the tiny config: 2 prompts x G=8 samples, 8 deterministic steps, each sample
# trained at int(8 x 0.6) = 4 levels with the old policy's forward beside each.
NFT = ["train.algorithm=nft", "sampling.shared_noise=false", "train.prompts_per_iteration=2"]
TINY_ROW_FLOPS = 5578752  # one row's forward of tiny_t2v (test_json_keys_and_knobs_when_it_does_not_fit)


@pytest.fixture(scope="module")
def nft_plan():
    return plan(TINY, NFT, ONE_RANK, knobs=False)


def test_nft_plan_counts_the_forwards_a_real_nft_iteration_logs(nft_plan, tmp_path):
    from helpers import read_jsonl

    from fastvideo_grpo.training.trainer import train

    cfg = load_config(TINY, [*NFT, f"train.output_dir={tmp_path}", "train.progress_bar=false", "reward.mode=inline",
                             "train.sample_every=0", f"data.prompts_file={ROOT / 'assets/prompts/tiny.txt'}",
                             "train.iterations=1", "checkpoint.every=0"])
    row = read_jsonl(train(cfg) / "metrics.jsonl")[0]
    assert nft_plan["forwards"] == {"rollout": row["transformer_forwards_rollout"],
                                    "train": row["transformer_forwards_train"]}
    # Independently: every sample runs all 8 steps (no shared prefix); training is 4 levels a
    # sample, each the policy's forward and the old policy's.
    samples, trained_pairs = 2 * 8, 2 * 8 * 4
    assert nft_plan["forwards"] == {"rollout": samples * 8, "train": 2 * trained_pairs}
    assert nft_plan["flops"]["rollout"] == samples * 8 * TINY_ROW_FLOPS
    # A trained pair: forward + backward (3 forwards, fp32 weights, no checkpointing) + the old policy's forward.
    assert nft_plan["flops"]["train"] == trained_pairs * (3 + 1) * TINY_ROW_FLOPS


def measured_nft_micro_batch(cfg, monkeypatch) -> tuple[int, int]:
    """(FSDPMemTracker's peak over one real NFT micro-batch of nft_update on one gloo rank,
    after a first one; the bytes of the one-prompt rollout store it trains from, as the
    trainer keeps it: the scored latents and the conditioning)."""
    from fastvideo_grpo.algorithms.learner import Learner, build_old, fill_frozen
    from fastvideo_grpo.algorithms.nft import nft_update
    from fastvideo_grpo.metrics import IterationStats
    from fastvideo_grpo.parallel.fsdp import reshard
    from fastvideo_grpo.sampling.step_plan import ode_plan

    monkeypatch.setenv("RANK", "0")
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        world = init_distributed("cpu", 1, 1)
        policy = tiny_policy(cfg)
        old = build_old(policy, cfg.model)
        parallelize(policy, world, cfg)
        parallelize(old, world, cfg)
        fill_frozen(old, policy)
        optimizer, scheduler = build_optimizer(policy, cfg)
        group = cfg.sampling.group_size
        # As long as the plan's text (data.max_text_tokens): a shorter prompt's is cropped.
        cond = tiny_conditioning(cfg, [" ".join(["a red ball rolling"] * 4)], group)
        ro = tiny_rollout(cfg, old, cond, cfg.sampling.rollout_batch_size, shared_noise=False,
                          plan=ode_plan(cfg.sampling.num_steps), keep_trajectory=False)
        kept = torch.arange(group) < micro_batch_size(cfg)  # one micro-batch (one level: timestep_fraction)
        learner = Learner(policy=policy, reference=None, optimizer=optimizer, scheduler=scheduler, old=old)

        def update():
            nft_update(learner, old, ro, cond, torch.randn(group), kept, cfg, IterationStats(), (0, 0), 0)
            reshard(old.transformer)  # the old root keeps its weights unsharded after a forward

        update()
        tracker = FSDPMemTracker(policy.transformer, optimizer)
        with tracker:
            update()
        peak = tracker.get_tracker_snapshot("peak")[torch.device("cpu")]["Total"]
    finally:
        dist.destroy_process_group()
    assert ro.latents is None and ro.log_probs is None
    stored = [ro.scored_latents, cond.prompt_embeds, cond.attention_mask, cond.pooled_embeds]
    return peak, sum(t.numel() * t.element_size() for t in stored)


def test_nft_micro_batch_and_store_match_a_real_nft_update(monkeypatch):
    """One level per sample (timestep_fraction 0.15: int(8 x 0.15) = 1), so the update is one micro-batch."""
    overrides = [*NFT, "policy_update.timestep_fraction=0.15"]
    planned = plan(TINY, overrides, ONE_RANK, knobs=False)
    measured, store = measured_nft_micro_batch(load_config(TINY, overrides), monkeypatch)
    peak = planned["micro_batch_peak_gb"] * 2**30
    assert abs(peak - measured) <= 0.15 * measured, (peak, measured)
    # NFT's rollout keeps only the scored latents: its training reads nothing else.
    assert planned["memory_by_phase_gb"]["train"]["trajectory"] == pytest.approx(2 * store / 2**30, abs=1e-6)


def test_nft_old_policy_is_a_full_copy_or_with_lora_an_adapter(nft_plan):
    from fastvideo_grpo.models import model_family
    from fastvideo_grpo.models.lora import apply_lora

    weights = 4 * nft_plan["parameters"]  # one rank: all the fp32 weights are its shard
    train = nft_plan["memory_by_phase_gb"]["train"]
    assert train["old_policy"] == pytest.approx(weights / 2**30, abs=1e-6)
    assert train["reference"] == 0 and "old_policy" in nft_plan["tracked"]

    cfg = load_config(TINY, [*NFT, "model.lora_rank=4"])
    policy = tiny_policy(cfg)
    apply_lora(policy.transformer, 4, 4, model_family(cfg.model).lora_targets)
    adapter = 4 * sum(p.numel() for name, p in policy.transformer.named_parameters() if "lora_" in name)
    network = 4 * sum(p.numel() for p in policy.transformer.parameters())
    lora = plan(TINY, [*NFT, "model.lora_rank=4", "nft.kl_weight=0.1"], ONE_RANK, knobs=False)
    train = lora["memory_by_phase_gb"]["train"]
    assert train["old_policy"] == pytest.approx(adapter / 2**30, abs=1e-6)
    # The old adapter is not counted twice, and the KL reference is a full copy.
    assert train["sharded_parameters"] == pytest.approx(network / 2**30, abs=1e-6)
    assert train["reference"] == pytest.approx(network / 2**30, abs=1e-6)
    # With the reference, 3 rows a trained pair; LoRA's backward is one forward, so a pair
    # is forward + backward (2) + the old policy's and the reference's forwards.
    trained_pairs = 2 * 8 * 4
    assert lora["forwards"]["train"] == 3 * trained_pairs
    assert lora["flops"]["train"] == trained_pairs * (2 + 2) * TINY_ROW_FLOPS


def test_sequence_parallel_ranks_plan_a_share_of_the_decode_each(tiny_plan):
    """tiny_t2v's 4 prompts x G=8 videos: decoded once per sp group, half of them per rank at sp 2."""
    sp2 = plan(TINY, ["parallel.sp_size=2"], Cluster(nodes=1, gpus_per_node=2, gpu_memory_gb=80, reserve_gb=0),
               knobs=False)
    per_video = tiny_plan["flops"]["decode"] / 32
    assert sp2["flops"]["decode"] == 16 * per_video
