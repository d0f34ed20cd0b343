"""Wan2.2 T2V-A14B: two experts (transformer for high noise, transformer_2 for low) switched at
the folder's boundary_ratio, as diffusers' WanPipeline does; model.train_experts; the tiny
folder and config; training, resume, export and sequence parallelism; the released A14B
architecture and its plan."""

from __future__ import annotations

import dataclasses
import functools
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline, WanTransformer3DModel

from conftest import ROOT
from fastvideo_grpo.checkpoint import latest_checkpoint, saved_keys
from fastvideo_grpo.cli.evaluate import load_transformer
from fastvideo_grpo.cli.export import export, load_trained_transformer
from fastvideo_grpo.config import ConfigError, load_config
from fastvideo_grpo.models import build_policy, model_family
from fastvideo_grpo.models.wan.experts import WanExperts
from fastvideo_grpo.models.wan.tiny import BOUNDARY_RATIO, TEXT_DIM, tiny_model_config, write_moe_folder
from fastvideo_grpo.sampling.rollout import rollout
from fastvideo_grpo.training.trainer import train
from helpers import COMMON, DIST, TIMING, assert_same_training, read_jsonl, run, tiny_policy
from test_wan import pipeline_conditioning

TINY = ROOT / "assets/configs/tiny_wan_moe_t2v.yaml"
PROMPTS = ROOT / "assets/prompts/tiny.txt"
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def moe_folder(tmp_path_factory):
    return write_moe_folder(tmp_path_factory.mktemp("wan_moe") / "model")


def folder_policy(folder, **overrides):
    model_cfg = dataclasses.replace(tiny_model_config(), size="full", path=str(folder), dtype="fp32", **overrides)
    return build_policy(model_cfg, CPU, TEXT_DIM, 0)


def test_the_tiny_writer_writes_both_experts_and_the_boundary(moe_folder):
    index = json.loads((moe_folder / "model_index.json").read_text())
    assert index["boundary_ratio"] == BOUNDARY_RATIO == 0.875
    assert index["transformer"] == index["transformer_2"] == ["diffusers", "WanTransformer3DModel"]
    pipe = WanPipeline.from_pretrained(moe_folder)
    high, low = pipe.transformer.state_dict(), pipe.transformer_2.state_dict()
    assert high.keys() == low.keys() and any(not torch.equal(w, low[n]) for n, w in high.items())
    # The seeded in-process tiny model of model.tiny_boundary_ratio is the folder's.
    policy = build_policy(tiny_model_config(boundary_ratio=BOUNDARY_RATIO), CPU, TEXT_DIM, 0)
    assert isinstance(policy.transformer, WanExperts)
    for name, expert in (("transformer", pipe.transformer), ("transformer_2", pipe.transformer_2)):
        weights = getattr(policy.transformer, name).state_dict()
        assert all(torch.equal(w, weights[n]) for n, w in expert.state_dict().items())


def test_the_tiny_cli_writes_the_moe_folder(tmp_path):
    subprocess.run([sys.executable, "-m", "fastvideo_grpo.models.tiny", "wan_moe", str(tmp_path / "moe")], check=True,
                   cwd=ROOT, capture_output=True)
    assert json.loads((tmp_path / "moe/model_index.json").read_text())["boundary_ratio"] == 0.875
    assert (tmp_path / "moe/transformer_2/config.json").is_file()


@pytest.mark.parametrize("guidance, guidance_2", [(1.0, 1.0), (5.0, 3.0)])
def test_ode_rollout_equals_wan_pipeline_with_both_experts(moe_folder, guidance, guidance_2):
    """eta = 0 with the Euler solver == WanPipeline's latents: timesteps 1000, 900 (>= 875, the
    high-noise expert with guidance_scale), then 750 and 500 (transformer_2 with
    guidance_scale_2)."""
    num_steps, shift = 4, 3.0
    policy = folder_policy(moe_folder, cfg_scale=guidance, cfg_scale_2=guidance_2)
    experts = policy.transformer
    pipe = WanPipeline.from_pretrained(moe_folder, transformer=experts.transformer,
                                       transformer_2=experts.transformer_2,
                                       scheduler=FlowMatchEulerDiscreteScheduler(shift=shift))
    pipe.set_progress_bar_config(disable=True)
    cond = pipeline_conditioning(pipe, "a red ball on the floor", 16)
    s = dataclasses.replace(load_config(TINY).sampling, num_steps=num_steps, shift=shift, eta=0.0, sde_type="dance",
                            ode_solver="euler", group_size=1, rollout_batch_size=1)
    ours = rollout(policy, cond, s, policy.latent_shape(5, 32, 32), (0, 0), CPU)
    assert [policy.high_noise(float(t)) for t in ours.schedule[:-1]] == [True, True, False, False]

    levels = torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float64)[:-1].tolist()
    pipe.scheduler.set_timesteps = functools.partial(pipe.scheduler.set_timesteps, sigmas=levels)
    theirs = pipe(prompt_embeds=cond.prompt_embeds, negative_prompt_embeds=cond.negative.prompt_embeds,
                  latents=ours.latents[:, 0], num_inference_steps=num_steps, guidance_scale=guidance,
                  guidance_scale_2=guidance_2, height=32, width=32, num_frames=5, output_type="latent").frames
    torch.testing.assert_close(pipe.scheduler.timesteps, torch.tensor([1000.0, 900.0, 750.0, 500.0]))
    torch.testing.assert_close(ours.final_latents, theirs, rtol=1e-5, atol=1e-5)
    # One expert alone gives other latents: both took part.
    pipe.register_to_config(boundary_ratio=None)
    alone = pipe(prompt_embeds=cond.prompt_embeds, negative_prompt_embeds=cond.negative.prompt_embeds,
                 latents=ours.latents[:, 0], num_inference_steps=num_steps, guidance_scale=guidance, height=32,
                 width=32, num_frames=5, output_type="latent").frames
    assert (alone - theirs).abs().max() > 1e-3


SMALL = ("sampling.group_size=4", "sampling.rollout_batch_size=4", "sampling.decode_batch_size=4",
         "train.prompts_per_iteration=1", "train.iterations=3", "train.sample_every=0", "train.progress_bar=false")
NFT = ("train.algorithm=nft", "sampling.shared_noise=false", "model.cfg_scale=1.0")
# The tiny config's 8 transitions start at timesteps 1000, 955, 900 (>= 875: transformer),
# 833, 750, 643, 500, 300 (transformer_2); GRPO trains 0..6, NFT draws from all 8.
HIGH_STEPS, LOW_STEPS = (0, 1, 2), (3, 4, 5, 6, 7)


def moe_config(out, *overrides):
    return load_config(TINY, [f"train.output_dir={out}", f"data.prompts_file={PROMPTS}", *SMALL, *overrides])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """(train_experts, *overrides) -> (the run folder, the noise levels each update trained
    at), made once per module."""
    from fastvideo_grpo.algorithms import grpo, nft

    made = {}

    def get(experts: str, *overrides: str):
        key = (experts, overrides)
        if key not in made:
            out = tmp_path_factory.mktemp(f"run_{experts}")
            trained_at = []

            def recording(original, level_of):
                def loss(*args, **kwargs):
                    trained_at.append(level_of(*args))
                    return original(*args, **kwargs)
                return loss

            with pytest.MonkeyPatch.context() as patch:
                patch.setattr(grpo, "micro_batch_loss", recording(
                    grpo.micro_batch_loss, lambda policy, reference, sampler, schedule, k, *rest: float(schedule[k])))
                patch.setattr(nft, "micro_batch_loss", recording(
                    nft.micro_batch_loss, lambda policy, old, reference, sampler, levels, j, *rest: float(levels[j])))
                train(moe_config(out, f"model.train_experts={experts}", *overrides))
            made[key] = out, trained_at
        return made[key]

    return get


def trained_levels_of(experts: str, algorithm: str) -> set[float]:
    cfg = load_config(TINY, [f"model.train_experts={experts}"])
    levels = tiny_policy(cfg).sampler(cfg.sampling).levels
    steps = {"high": HIGH_STEPS, "low": LOW_STEPS, "both": HIGH_STEPS + LOW_STEPS}[experts]
    return {float(levels[j]) for j in steps if algorithm == "nft" or j < 7}


@pytest.mark.parametrize("algorithm", ["grpo", "nft"])
@pytest.mark.parametrize("experts", ["high", "low", "both"])
def test_three_iterations_train_only_the_trained_experts_steps(runs, experts, algorithm):
    out, trained_at = runs(experts, *(NFT if algorithm == "nft" else ()))
    rows = read_jsonl(out / "metrics.jsonl")
    assert [r["iteration"] for r in rows] == [0, 1, 2]
    assert all(np.isfinite(r["loss"]) and r["optimizer_steps"] >= 1 and r["grad_norm"] > 0 for r in rows)
    allowed = trained_levels_of(experts, algorithm)
    assert trained_at and set(trained_at) <= allowed
    if experts == "both":  # both experts' steps are drawn
        assert {t >= 0.875 for t in trained_at} == {True, False}


@pytest.mark.parametrize("experts, trained", [("high", ["transformer"]), ("low", ["transformer_2"]),
                                              ("both", ["transformer", "transformer_2"])])
def test_a_frozen_expert_has_no_gradients_optimizer_state_or_checkpoint_entries(runs, experts, trained):
    out, _ = runs(experts)
    checkpoint = latest_checkpoint(out)
    keys = saved_keys(checkpoint)
    for expert in ("transformer", "transformer_2"):
        holds = any(k.startswith(f"model.{expert}.") for k in keys)
        assert holds == (expert in trained)
        assert any(k.startswith(f"optimizer.state.{expert}.") for k in keys) == (expert in trained)
    # The frozen expert keeps the seeded weights; the trained ones moved.
    cfg = load_config(TINY, [f"model.train_experts={experts}"])
    initial = tiny_policy(cfg).transformer
    assert all(p.requires_grad == (n.split(".")[0] in trained) for n, p in initial.named_parameters())
    weights = load_trained_transformer(checkpoint).state_dict()
    for expert in ("transformer", "transformer_2"):
        start = getattr(initial, expert).state_dict()
        same = all(torch.equal(w, weights[f"{expert}.{n}"]) for n, w in start.items())
        assert same == (expert not in trained)


def test_the_optimizer_holds_only_the_trained_experts_weights():
    from fastvideo_grpo.algorithms.learner import build_optimizer

    cfg = load_config(TINY, ["model.train_experts=low"])
    policy = tiny_policy(cfg)
    optimizer, _ = build_optimizer(policy, cfg)
    expected = {id(p) for p in policy.transformer.transformer_2.parameters()}
    assert {id(p) for group in optimizer.param_groups for p in group["params"]} == expected


def test_train_experts_is_refused_for_one_expert_and_names_the_key():
    for key, value in (("train_experts", "high"), ("cfg_scale_2", "3.0")):
        cfg = load_config(ROOT / "assets/configs/tiny_wan_t2v.yaml", [f"model.{key}={value}"])
        with pytest.raises(ConfigError, match=rf"model.{key}: .* is invalid for the tiny model "
                                              r"\(model.tiny_boundary_ratio: 0\): it has one transformer"):
            tiny_policy(cfg)
    with pytest.raises(ConfigError, match=r"model.train_experts"):
        load_config(TINY, ["model.train_experts=middle"])
    from fastvideo_grpo.models import check_model_config

    with pytest.raises(ConfigError, match=r"model.cfg_scale_2: 3.0 is invalid with model.cfg_scale=1.0"):
        check_model_config(load_config(TINY, ["model.cfg_scale=1.0", "model.cfg_scale_2=3.0"]))
    # A family with one network refuses every expert key, before anything is built.
    for key, value in (("train_experts", "low"), ("cfg_scale_2", "3.0"), ("tiny_boundary_ratio", "0.5")):
        with pytest.raises(ConfigError, match=rf"model.{key}: .* is invalid; expected it unset: model.family "
                                              "'hunyuan_video' has one network"):
            check_model_config(load_config(ROOT / "assets/configs/tiny_t2v.yaml", [f"model.{key}={value}"]))


def test_a_folders_train_experts_is_refused_when_it_has_one_transformer(tmp_path):
    from fastvideo_grpo.models.wan.tiny import write_folder

    folder = write_folder(tmp_path / "wan21")
    with pytest.raises(ConfigError, match=rf"model.train_experts: 'low' is invalid for model.path={folder}: it has "
                                          "one transformer"):
        folder_policy(folder, train_experts="low")


@pytest.mark.parametrize("experts, algorithm", [("high", "grpo"), ("low", "nft")])
def test_a_resumed_run_is_bit_exact(runs, tmp_path, experts, algorithm):
    """Two iterations, then the third from the checkpoint: the straight run's metrics and weights."""
    overrides = (f"model.train_experts={experts}", *(NFT if algorithm == "nft" else ()))
    straight, _ = runs(experts, *overrides[1:])
    for iterations in (2, 3):
        train(moe_config(tmp_path, *overrides, f"train.iterations={iterations}"))
    a, b = read_jsonl(straight / "metrics.jsonl"), read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["iteration"] for r in b] == [0, 1, 2]
    for x, y in zip(a, b, strict=True):
        assert {k: v for k, v in x.items() if not k.startswith(TIMING)} == {
            k: v for k, v in y.items() if not k.startswith(TIMING)}
    weights = [load_trained_transformer(latest_checkpoint(run)).state_dict() for run in (straight, tmp_path)]
    assert all(torch.equal(w, weights[1][name]) for name, w in weights[0].items())


def test_export_writes_both_experts_that_wan_pipeline_loads_and_samples_from(runs, moe_folder, tmp_path):
    out, _ = runs("low")
    exported = export(latest_checkpoint(out), tmp_path / "export", base_model=moe_folder)
    pipe = WanPipeline.from_pretrained(exported)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.config.boundary_ratio == 0.875
    trained = load_trained_transformer(latest_checkpoint(out))
    base = WanPipeline.from_pretrained(moe_folder, text_encoder=None, tokenizer=None, vae=None)
    for name, moved in (("transformer", False), ("transformer_2", True)):
        weights = getattr(trained, name).state_dict()
        assert all(torch.equal(w, weights[n]) for n, w in getattr(pipe, name).state_dict().items())
        initial = getattr(base, name).state_dict()
        assert any(not torch.equal(w, initial[n]) for n, w in weights.items()) == moved
    frames = pipe(prompt="a red ball", height=32, width=32, num_frames=5, num_inference_steps=2, guidance_scale=5.0,
                  guidance_scale_2=4.0, output_type="np", generator=torch.Generator().manual_seed(0)).frames
    assert frames.shape == (1, 5, 32, 32, 3) and np.isfinite(frames).all()
    # `evaluate --diffusers` on the export reads both experts, each step run by its own.
    evaluated = load_transformer(None, str(exported), False, model_family(load_config(out / "config.yaml").model))
    assert isinstance(evaluated, WanExperts) and evaluated.config.boundary_ratio == 0.875
    weights = trained.state_dict()
    assert evaluated.state_dict().keys() == weights.keys()
    assert all(torch.equal(w, weights[n]) for n, w in evaluated.state_dict().items())


def test_lora_adapts_only_the_trained_expert_and_exports_merged_and_per_expert_adapters(moe_folder, tmp_path):
    cfg = moe_config(tmp_path / "run", "model.train_experts=high", "model.lora_rank=4", "train.iterations=1",
                     "train.lr=1e-2")
    policy = tiny_policy(cfg)
    from fastvideo_grpo.models.lora import apply_lora
    from fastvideo_grpo.models import FAMILIES

    apply_lora(policy.transformer, 4, 0.0, FAMILIES["wan"].lora_targets)
    trainable = [n for n, p in policy.transformer.named_parameters() if p.requires_grad]
    assert trainable and all(n.startswith("transformer.blocks.") and ".lora_" in n for n in trainable)
    assert not any(".lora_" in n for n, _ in policy.transformer.transformer_2.named_parameters())
    train(cfg)
    checkpoint = latest_checkpoint(tmp_path / "run")
    lora = load_trained_transformer(checkpoint)
    merged = export(checkpoint, tmp_path / "merged", base_model=moe_folder)
    pipe = WanPipeline.from_pretrained(merged)
    x = torch.randn(1, 16, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    text = torch.randn(1, 16, TEXT_DIM, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = lora(x, torch.tensor([950.0]), text, high_noise=True)[0]
        torch.testing.assert_close(pipe.transformer(x, torch.tensor([950.0]), text, return_dict=False)[0], expected,
                                   rtol=1e-5, atol=1e-5)
    base = WanPipeline.from_pretrained(moe_folder)
    assert all(torch.equal(w, base.transformer_2.state_dict()[n]) for n, w in pipe.transformer_2.state_dict().items())
    adapter = export(checkpoint, tmp_path / "adapter", adapter_only=True)
    assert (adapter / "transformer/pytorch_lora_weights.safetensors").is_file()
    assert not (adapter / "transformer_2").exists()  # the frozen expert has no adapter
    base.load_lora_weights(adapter / "transformer")
    with torch.no_grad():
        torch.testing.assert_close(base.transformer(x, torch.tensor([950.0]), text, return_dict=False)[0], expected,
                                   rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_sequence_parallel_two_ranks_train_what_one_does(one_rank_run, tmp_path):
    """Ulysses over both experts' self-attention: the two sp ranks share 2 prompts and train
    what one rank trains alone. Two iterations: the sharded forward's rounding (~5e-7 in the
    latents) grows through two Adam steps to a third iteration's rewards 4e-6 and gradient
    norms 3e-4 apart, past the comparison's tolerance."""
    args = [*COMMON, "train.prompts_per_iteration=2", "train.iterations=2"]
    one = one_rank_run(TINY, *args)
    run([DIST / "train_run.py", "--config", TINY, *args, "parallel.sp_size=2", f"train.output_dir={tmp_path}"],
        nproc=2)
    assert_same_training(one, tmp_path)


def test_the_released_a14b_is_two_14b_experts_and_counts_one_experts_flops():
    """Wan2.2-T2V-A14B built on the meta device from the published config: twice diffusers'
    WanTransformer3DModel of the expert config (the model card's 27B), each step's FLOPs one
    expert's."""
    from fastvideo_grpo.models import FAMILIES
    from fastvideo_grpo.models.wan.published import WAN21_T2V_14B, WAN22_T2V_A14B

    family = FAMILIES["wan"]
    released = family.released("Wan2.2-T2V-A14B")
    assert released.network_config is WAN22_T2V_A14B and WAN22_T2V_A14B["boundary_ratio"] == 0.875
    with torch.device("meta"):
        experts = family.network_class(WAN22_T2V_A14B).from_config(WAN22_T2V_A14B)
        expert = WanTransformer3DModel(**WAN21_T2V_14B)
    assert isinstance(experts, WanExperts)
    one = sum(p.numel() for p in expert.parameters())
    assert sum(p.numel() for p in experts.parameters()) == pytest.approx(2 * one, rel=0.01)
    assert 2 * one == pytest.approx(2.86e10, rel=0.01)
    latent = (16, 21, 60, 104)
    assert family.forward_flops(experts, latent, 512) == family.forward_flops(expert, latent, 512)
    assert [p.name for p in family.published] == ["Wan2.1-T2V-1.3B", "Wan2.1-T2V-14B", "Wan2.2-T2V-A14B"]
    assert family.released("").name == "Wan2.1-T2V-1.3B"
    with pytest.raises(ConfigError, match=r"model.published: 'Wan9' is invalid; expected one of \['Wan2.1-T2V-1.3B', "
                                          r"'Wan2.1-T2V-14B', 'Wan2.2-T2V-A14B'\]"):
        family.released("Wan9")


@pytest.mark.parametrize("experts, trained", [("high", 1), ("both", 2)])
def test_the_planner_plans_both_experts_and_trains_only_the_trained(moe_folder, experts, trained):
    """A two-expert folder planned at full size: both experts' weights, the trained ones'
    parameters (the frozen one has no optimizer state)."""
    from fastvideo_grpo.planning.policy import load_plan_config, planned_policy

    cfg = load_plan_config(TINY, ["model.size=full", f"model.path={moe_folder}", "data.embeddings_dir=/unread",
                                  f"model.train_experts={experts}"])
    policy, source = planned_policy(cfg)
    assert isinstance(policy.transformer, WanExperts) and source.endswith("transformer/config.json")
    total = sum(p.numel() for p in policy.transformer.parameters())
    one = sum(p.numel() for p in policy.transformer.transformer.parameters())
    assert total == 2 * one
    assert sum(p.numel() for p in policy.transformer.parameters() if p.requires_grad) == trained * one


@pytest.mark.parametrize("algorithm", [(), NFT])
def test_the_planned_step_of_one_trained_expert_holds_half_the_optimizer_state(algorithm):
    """The traced micro-batch runs one expert's blocks; the other's are never gathered (the
    memory tracker must not trip over them), and a frozen expert has no optimizer state."""
    from fastvideo_grpo.planning.cluster import Cluster
    from fastvideo_grpo.planning.memory import GB
    from fastvideo_grpo.planning.plan import plan

    cluster = Cluster(nodes=1, gpus_per_node=2, gpu_memory_gb=80, reserve_gb=0)
    both, high = (plan(TINY, [*algorithm, f"model.train_experts={e}"], cluster, knobs=False) for e in ("both", "high"))
    assert both["parameters"] == high["parameters"] == 2 * high["trainable_parameters"]
    assert both["trainable_parameters"] == 2 * high["trainable_parameters"]
    # Both trained: the other expert's optimizer state, as much as the traced expert's, and its
    # fp32 gradient shard (from the step's other micro-batches) beside the traced step's.
    train = [p["memory_by_phase_gb"]["train"] for p in (both, high)]
    assert train[0]["optimizer_state"] == pytest.approx(2 * train[1]["optimizer_state"], rel=0.05)
    expert_shard = high["trainable_parameters"] * 4 / 2 / GB
    assert train[0]["gradients"] - train[1]["gradients"] == pytest.approx(expert_shard, rel=0.05)
    if not algorithm:  # GRPO trains 0..6 (7 steps, 4 at fraction 0.6); high only 0..2 (1)
        assert both["forwards"]["train"] == 4 * high["forwards"]["train"]


def test_the_flagship_config_plans_the_released_a14b_on_paper():
    """wan22_t2v_a14b.yaml with no model.path: both 14B experts on the meta device, 81 frames
    at 480x832, the first 11 of its 16 steps (shift 12) the high-noise expert's, each guided
    with its own scale."""
    from fastvideo_grpo.algorithms.learner import trained_plan
    from fastvideo_grpo.models.wan.published import WAN21_T2V_14B
    from fastvideo_grpo.planning.policy import load_plan_config, planned_policy
    from fastvideo_grpo.sampling.step_plan import iteration_plan

    cfg = load_plan_config(ROOT / "assets/configs/wan22_t2v_a14b.yaml", [])
    policy, source = planned_policy(cfg)
    assert source == "released Wan2.2-T2V-A14B config (model.path is empty)"
    with torch.device("meta"):
        expert = sum(p.numel() for p in WanTransformer3DModel(**WAN21_T2V_14B).parameters())
    assert sum(p.numel() for p in policy.transformer.parameters()) == pytest.approx(2 * expert, rel=0.01)
    assert all(p.requires_grad for p in policy.transformer.parameters())
    s = cfg.sampling
    assert policy.latent_shape(s.num_frames, s.height, s.width) == (16, 21, 60, 104)
    assert (policy.cfg_scale, policy.cfg_scale_2) == (4.0, 3.0)
    levels = policy.sampler(s).levels[:-1]
    assert [policy.high_noise(float(t)) for t in levels] == [True] * 11 + [False] * 5
    assert trained_plan(iteration_plan(cfg, 0), policy, s).trainable == tuple(range(15))
    low = dataclasses.replace(cfg.model, train_experts="low")
    assert trained_plan(iteration_plan(cfg, 0), planned_policy(dataclasses.replace(cfg, model=low))[0],
                        s).trainable == tuple(range(11, 15))


def test_preprocessing_a_two_expert_folder_loads_no_expert_and_writes_encode_prompt(moe_folder, tmp_path,
                                                                                    monkeypatch):
    sys.path.insert(0, str(ROOT / "data_preprocess"))
    import preprocess_wan_embeddings as cli
    from fastvideo_grpo.data.embeddings import EmbeddingDataset

    prompts = ["a red ball bouncing on the floor", "a blue ocean wave"]
    (tmp_path / "prompts.txt").write_text("\n".join(prompts) + "\n")
    with monkeypatch.context() as patch:  # neither expert is read
        patch.setattr(WanTransformer3DModel, "from_pretrained", classmethod(lambda *a, **k: 1 / 0))
        assert cli.run(["--model-path", str(moe_folder), "--prompts", str(tmp_path / "prompts.txt"), "--output",
                        str(tmp_path / "emb"), "--max-tokens", "16", "--dtype", "fp32", "--device", "cpu"]) == 0
    pipe = WanPipeline.from_pretrained(moe_folder, transformer=None, transformer_2=None, vae=None)
    with torch.no_grad():
        embeds, negative = pipe.encode_prompt(prompts, negative_prompt="", max_sequence_length=16, device="cpu")
    cond = EmbeddingDataset(tmp_path / "emb").conditioning([0, 1])
    assert torch.equal(cond.prompt_embeds, embeds)
    assert torch.equal(cond.negative.prompt_embeds, negative.expand(2, -1, -1))


def test_nft_with_lora_puts_the_old_adapter_on_the_trained_expert_only(tmp_path):
    """NFT's old policy under LoRA is a second adapter beside the trained one: on the trained
    expert's layers alone (a frozen expert has neither)."""
    cfg = moe_config(tmp_path, *NFT, "model.train_experts=low", "model.lora_rank=4", "train.iterations=1")
    out = train(cfg)
    assert [r["iteration"] for r in read_jsonl(out / "metrics.jsonl")] == [0]
    keys = saved_keys(latest_checkpoint(out))
    adapters = {k for k in keys if ".lora_" in k and k.split(".")[0] in ("model", "old")}
    assert adapters and all(k.split(".")[1] == "transformer_2" for k in adapters)
    assert {k.split(".")[0] for k in adapters} == {"model", "old"}


def test_a_checkpoint_without_its_run_config_loads_both_experts_or_names_the_missing_base(runs, tmp_path):
    """Away from its run, a checkpoint is rebuilt from its own transformer_config.json (the
    WanExperts class it names); one whose run froze an expert holds only the other, and says
    that the base model is needed."""
    import shutil

    for experts in ("both", "high"):
        original = latest_checkpoint(runs(experts)[0])
        moved = tmp_path / experts / "elsewhere" / original.name
        shutil.copytree(original, moved)
        if experts == "both":
            loaded = load_trained_transformer(moved)
            assert isinstance(loaded, WanExperts) and loaded.config.boundary_ratio == 0.875
            expected = load_trained_transformer(original).state_dict()
            assert all(torch.equal(w, expected[n]) for n, w in loaded.state_dict().items())
        else:
            with pytest.raises(ValueError, match=rf"{moved} holds part of the network \(its run froze the rest, "
                                                 r"model.train_experts\), and no run config.yaml"):
                load_trained_transformer(moved)


@pytest.mark.slow
def test_fsdp_two_ranks_with_a_frozen_expert_train_what_one_does(one_rank_run, tmp_path):
    """FSDP2 over both experts' blocks, the high-noise expert frozen (sharded, no gradients):
    2 ranks x 1 prompt train what 1 rank trains with 2, and the frozen expert stays as built."""
    shared = [*COMMON, "train.iterations=2", "model.train_experts=low"]
    one = one_rank_run(TINY, *shared, "train.prompts_per_iteration=2")
    run([DIST / "train_run.py", "--config", TINY, *shared, "train.prompts_per_iteration=1",
         f"train.output_dir={tmp_path}"], nproc=2)
    assert_same_training(one, tmp_path)
    final = torch.load(tmp_path / "final_params.pt")
    initial = tiny_policy(load_config(TINY, ["model.train_experts=low"])).transformer.state_dict()
    assert all(torch.equal(final[n], w) for n, w in initial.items() if n.startswith("transformer."))
    assert any(not torch.equal(final[n], w) for n, w in initial.items() if n.startswith("transformer_2."))


def test_a_full_size_run_from_the_folder_trains_one_expert_and_exports_both(moe_folder, tmp_path):
    """model.path = the two-expert folder with offline embeddings, the low-noise expert frozen:
    the export takes it from the folder (the run's base) and WanPipeline loads and samples."""
    sys.path.insert(0, str(ROOT / "data_preprocess"))
    import preprocess_wan_embeddings as cli

    (tmp_path / "prompts.txt").write_text("a red ball\na blue ocean wave\n")
    assert cli.run(["--model-path", str(moe_folder), "--prompts", str(tmp_path / "prompts.txt"), "--output",
                    str(tmp_path / "emb"), "--max-tokens", "16", "--dtype", "fp32", "--device", "cpu"]) == 0
    # model.tiny_text_dim as a full-size config leaves it (16): the folder's width is the embeddings'.
    out = train(moe_config(tmp_path / "run", "model.size=full", f"model.path={moe_folder}", "model.dtype=fp32",
                           f"data.embeddings_dir={tmp_path / 'emb'}", "model.train_experts=high", "train.iterations=1",
                           "model.tiny_text_dim=16"))
    exported = export(latest_checkpoint(out), tmp_path / "export", base_model=moe_folder)
    pipe, base = WanPipeline.from_pretrained(exported), WanPipeline.from_pretrained(moe_folder)
    for name, moved in (("transformer", True), ("transformer_2", False)):
        initial = getattr(base, name).state_dict()
        assert any(not torch.equal(w, initial[n]) for n, w in getattr(pipe, name).state_dict().items()) == moved
    pipe.set_progress_bar_config(disable=True)
    frames = pipe(prompt="a red ball", height=32, width=32, num_frames=5, num_inference_steps=2, output_type="np",
                  generator=torch.Generator().manual_seed(0)).frames
    assert frames.shape == (1, 5, 32, 32, 3) and np.isfinite(frames).all()
