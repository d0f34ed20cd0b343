"""The contract every model family passes, as diffusers' ModelTesterMixin is for models: a
table of cases (a tiny config and what the family's diffusers classes are), and one test per
scenario that every case runs: two training iterations; a resumed run equal to the straight
one; NFT training; export into the family's network and pipeline classes; a LoRA run's merged
and adapter exports; FSDP over 2 ranks against 1; the full path from a tiny diffusers folder
through offline embeddings. What only one family has (FLUX packing, DDIM, I2V conditioning,
one-frame decode, CFG's branches) is tested in that family's file."""

from __future__ import annotations

import functools
import json
import math
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import diffusers
import numpy as np
import pytest
import torch
from diffusers import (FluxPipeline, FluxTransformer2DModel, HunyuanVideo15Pipeline, HunyuanVideo15Transformer3DModel,
                       HunyuanVideoImageToVideoPipeline, HunyuanVideoPipeline, HunyuanVideoTransformer3DModel,
                       StableDiffusionPipeline, UNet2DConditionModel, WanPipeline, WanTransformer3DModel)
from safetensors.torch import load_file

from conftest import ROOT
from fastvideo_grpo.algorithms.nft import return_decay
from fastvideo_grpo.checkpoint import latest_checkpoint, load_checkpoint
from fastvideo_grpo.config import Config, load_config
from fastvideo_grpo.cli.export import export, load_trained_transformer
from fastvideo_grpo.models import model_family
from fastvideo_grpo.parallel import World
from fastvideo_grpo.rewards import REGISTRY
from fastvideo_grpo.training.trainer import Components, setup, train
from fastvideo_grpo.video_io import read_video
from helpers import (COMMON, DIST, TIMING, assert_same_training, curve_pixels, read_jsonl, read_png, run, smooth_image,
                     tiny_policy, write_image_latents)

sys.path.insert(0, str(ROOT / "data_preprocess"))
CONFIGS = ROOT / "assets/configs"
PROMPTS = ROOT / "assets/prompts/tiny.txt"
# Groups of 4 samples in rollout batches of 4: the T2V, SD and I2V configs' own G = 8 costs more.
SMALL = ("sampling.group_size=4", "sampling.rollout_batch_size=4", "sampling.decode_batch_size=4")


def text_to_video_inputs(cfg: Config, c: Components, folder: Path) -> dict:
    s = cfg.sampling
    # No prompt_template: the tiny Llama tokenizer takes the default template's crop_start.
    return dict(prompt="a red ball", height=s.height, width=s.width, num_frames=s.num_frames)


def image_to_video_inputs(cfg: Config, c: Components, folder: Path) -> dict:
    import PIL.Image

    # Precomputed embeddings: the folder has no text encoders (no tiny Llava exists).
    s, cond = cfg.sampling, c.source.conditioning([0])
    return dict(image=PIL.Image.fromarray(smooth_image(np.random.default_rng(1))), prompt_embeds=cond.prompt_embeds,
                pooled_prompt_embeds=cond.pooled_embeds, prompt_attention_mask=cond.attention_mask, height=s.height,
                width=s.width, num_frames=s.num_frames)


def flux_inputs(cfg: Config, c: Components, folder: Path) -> dict:
    return dict(prompt="a red ball", height=cfg.sampling.height, width=cfg.sampling.width)


def stable_diffusion_inputs(cfg: Config, c: Components, folder: Path) -> dict:
    return dict(prompt="a red ball", height=cfg.sampling.height, width=cfg.sampling.width, guidance_scale=5.0,
                eta=1.0)


def wan_inputs(cfg: Config, c: Components, folder: Path) -> dict:
    s = cfg.sampling
    return dict(prompt="a red ball", height=s.height, width=s.width, num_frames=s.num_frames,
                guidance_scale=cfg.model.cfg_scale)


@dataclass(frozen=True)
class FamilyCase:
    name: str
    config: Path  # the tiny config
    overrides: tuple[str, ...]  # on top of it in every single-process run of the case
    network: type  # the diffusers class the exported network loads as
    component: str  # its pipeline component: the folder export writes it to
    pipeline: type  # the family's diffusers pipeline
    t: float  # the noise level predictions are compared at: a sigma, or a DDPM timestep
    optimizer_steps: int  # per iteration of a run with `overrides`
    # (config, trained components, the pipeline's folder) -> the inputs of a 2-step pipeline
    # call, besides steps, generator and output type; and the shape the call returns.
    pipeline_inputs: Callable[[Config, Components, Path], dict]
    output_shape: tuple[int, ...]
    lora_targets: tuple[str, ...]  # parts of the names of parameters LoRA must adapt
    # The family writes a tiny diffusers folder (models/<family>/tiny.py), and data_preprocess/ has an
    # embeddings CLI for it: the full path runs.
    tiny_folder: bool
    embeddings_cli: str | None = None
    embeddings_args: tuple[str, ...] = ()
    # Overrides of the 2-rank FSDP comparison (tests/dist/train_run.py with COMMON); None:
    # no 2-rank run (each comparison costs ~30 s).
    two_ranks: tuple[str, ...] | None = None
    image_latents: bool = False  # needs data.image_latents_dir (image-to-video)


# A dual-stream block's text projections and text MLP, a single-stream block's MLP.
TWO_STREAM_LORA = ("transformer_blocks.0.attn.add_q_proj", "ff_context.net", "single_transformer_blocks.0.proj_mlp")
CASES = [
    FamilyCase("hunyuan_video", CONFIGS / "tiny_t2v.yaml", (*SMALL, "train.prompts_per_iteration=1"),
               HunyuanVideoTransformer3DModel, "transformer", HunyuanVideoPipeline, t=0.7, optimizer_steps=1,
               pipeline_inputs=text_to_video_inputs, output_shape=(1, 5, 32, 32, 3),
               lora_targets=TWO_STREAM_LORA, tiny_folder=True, embeddings_cli="preprocess_hunyuan_embeddings",
               embeddings_args=("--max-tokens", "16"), two_ranks=()),
    FamilyCase("hunyuan_t2i", CONFIGS / "tiny_hunyuan_t2i.yaml", (),
               HunyuanVideoTransformer3DModel, "transformer", HunyuanVideoPipeline, t=0.7, optimizer_steps=2,
               pipeline_inputs=text_to_video_inputs, output_shape=(1, 1, 64, 64, 3),
               lora_targets=TWO_STREAM_LORA, tiny_folder=True, embeddings_cli="preprocess_hunyuan_embeddings",
               embeddings_args=("--max-tokens", "16")),
    FamilyCase("hunyuan_video_i2v", CONFIGS / "tiny_i2v.yaml", (*SMALL, "train.prompts_per_iteration=2"),
               HunyuanVideoTransformer3DModel, "transformer", HunyuanVideoImageToVideoPipeline, t=0.7,
               optimizer_steps=1, pipeline_inputs=image_to_video_inputs, output_shape=(1, 5, 32, 32, 3),
               lora_targets=TWO_STREAM_LORA, tiny_folder=False, image_latents=True),
    FamilyCase("flux", CONFIGS / "tiny_flux_t2i.yaml", (),
               FluxTransformer2DModel, "transformer", FluxPipeline, t=0.7, optimizer_steps=2,
               pipeline_inputs=flux_inputs, output_shape=(1, 64, 64, 3),
               lora_targets=TWO_STREAM_LORA, tiny_folder=True, embeddings_cli="preprocess_flux_embeddings",
               embeddings_args=("--max-tokens", "16"), two_ranks=()),
    FamilyCase("wan", CONFIGS / "tiny_wan_t2v.yaml", (*SMALL, "train.prompts_per_iteration=1"),
               WanTransformer3DModel, "transformer", WanPipeline, t=0.7, optimizer_steps=1,
               pipeline_inputs=wan_inputs, output_shape=(1, 5, 32, 32, 3),
               lora_targets=("blocks.0.attn1.to_q", "blocks.0.attn2.to_k", "blocks.0.ffn.net"), tiny_folder=True,
               embeddings_cli="preprocess_wan_embeddings", embeddings_args=("--max-tokens", "16"), two_ranks=()),
    FamilyCase("wan_ti2v", CONFIGS / "tiny_wan_ti2v.yaml", (*SMALL, "train.prompts_per_iteration=1"),
               WanTransformer3DModel, "transformer", WanPipeline, t=0.7, optimizer_steps=1,
               pipeline_inputs=wan_inputs, output_shape=(1, 5, 64, 64, 3),
               lora_targets=("blocks.0.attn1.to_q", "blocks.0.attn2.to_k", "blocks.0.ffn.net"), tiny_folder=True,
               embeddings_cli="preprocess_wan_ti2v_embeddings", embeddings_args=("--max-tokens", "16"), two_ranks=()),
    FamilyCase("hunyuan_video_15", CONFIGS / "tiny_hunyuan_video_15_t2v.yaml",
               (*SMALL, "train.prompts_per_iteration=1"), HunyuanVideo15Transformer3DModel, "transformer", HunyuanVideo15Pipeline, t=0.7, optimizer_steps=1,
               pipeline_inputs=text_to_video_inputs, output_shape=(1, 5, 32, 32, 3),
               lora_targets=("transformer_blocks.0.attn.add_q_proj", "transformer_blocks.0.ff_context.net"),
               tiny_folder=True, embeddings_cli="preprocess_hunyuan_video_15_embeddings",
               embeddings_args=("--max-tokens", "16"), two_ranks=()),
    FamilyCase("stable_diffusion", CONFIGS / "tiny_sd_t2i.yaml", (*SMALL, "train.prompts_per_iteration=2"),
               UNet2DConditionModel, "unet", StableDiffusionPipeline, t=501.0, optimizer_steps=1,
               pipeline_inputs=stable_diffusion_inputs, output_shape=(1, 64, 64, 3),
               lora_targets=("attn2", "ff.net"), tiny_folder=True, embeddings_cli="preprocess_sd_embeddings",
               two_ranks=("train.iterations=2",)),
]


def cases(applies: Callable[[FamilyCase], bool] = lambda case: True):
    return pytest.mark.parametrize("case", [case for case in CASES if applies(case)], ids=lambda case: case.name)


# One worker runs the module under xdist: its runs are made once and shared by the tests.
pytestmark = pytest.mark.xdist_group("families")


@pytest.fixture(scope="module")
def configure(tmp_path_factory):
    """(case, output folder, *overrides) -> the case's config for a run there."""
    image_latents = functools.cache(lambda: write_image_latents(tmp_path_factory.mktemp("image_latents")))

    def make(case: FamilyCase, out: Path, *overrides: str) -> Config:
        data = [f"data.image_latents_dir={image_latents()}"] if case.image_latents else []
        return load_config(case.config, [f"train.output_dir={out}", "train.progress_bar=false", "train.sample_every=0",
                                         f"data.prompts_file={PROMPTS}", *data, *case.overrides, *overrides])

    return make


def write_vae_scheduler_folder(folder: Path, case: FamilyCase, cfg: Config) -> Path:
    """For a family with no tiny folder: a pipeline folder of the seeded tiny network, its
    VAE and a flow-matching scheduler; the pipeline loads with its other components None."""
    policy = tiny_policy(cfg)
    policy.transformer.save_pretrained(folder / case.component)
    policy.vae.save_pretrained(folder / "vae")
    diffusers.FlowMatchEulerDiscreteScheduler(shift=7.0).save_pretrained(folder / "scheduler")
    (folder / "model_index.json").write_text(json.dumps({
        "_class_name": case.pipeline.__name__, "_diffusers_version": diffusers.__version__,
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
        case.component: ["diffusers", type(policy.transformer).__name__],
        "vae": ["diffusers", type(policy.vae).__name__]}))
    return folder


@pytest.fixture(scope="module")
def base_folder(tmp_path_factory, configure):
    """case -> the diffusers folder of its seeded tiny model (the family's tiny folder, else
    write_vae_scheduler_folder): what exports take the other components from."""
    @functools.cache
    def get(case: FamilyCase) -> Path:
        folder = tmp_path_factory.mktemp(f"base_{case.name}")
        cfg = configure(case, folder / "unused")
        if case.tiny_folder:
            return model_family(cfg.model).write_tiny_folder(folder / "model", cfg.model.init_seed)
        return write_vae_scheduler_folder(folder / "model", case, cfg)

    return get


@dataclass
class TrainedRun:
    cfg: Config
    c: Components  # set up from the config, the last checkpoint loaded (weights and EMA)
    checkpoint: Path
    scored_shapes: list[tuple[int, ...]]  # the videos' shapes of each call of the reward


@pytest.fixture(scope="module")
def trained(tmp_path_factory, configure):
    """case -> its two training iterations (with an EMA; samples saved at iteration 0), made
    once for all tests."""
    @functools.cache
    def get(case: FamilyCase) -> TrainedRun:
        out = tmp_path_factory.mktemp(f"run_{case.name}")
        cfg = configure(case, out, "train.iterations=2", "train.ema_decay=0.5", "train.sample_every=2")
        (reward,) = cfg.reward.weights
        scored = []

        def recording_build(reward_cfg, section):
            score = original.build(reward_cfg, section)

            def recording(videos, prompts):
                scored.append(tuple(videos.shape))
                return score(videos, prompts)

            return recording

        original = REGISTRY[reward]
        with pytest.MonkeyPatch.context() as patch:
            patch.setitem(REGISTRY, reward, replace(original, build=recording_build))
            train(cfg)
        c = setup(cfg)
        checkpoint = latest_checkpoint(out)
        load_checkpoint(checkpoint, c.policy.transformer, c.optimizer, World(0, 1, torch.device("cpu"), None), c.ema)
        return TrainedRun(cfg, c, checkpoint, scored)

    return get


def untimed(row: dict) -> dict:
    return {k: v for k, v in row.items() if not k.startswith(TIMING)}


def sample_inputs(c: Components, batch: int = 2):
    x = torch.randn(batch, *c.latent_shape, generator=torch.Generator().manual_seed(3))
    return x, c.source.conditioning(list(range(batch)))


def predict_with(policy, network, x, t, cond) -> torch.Tensor:
    """The policy's prediction with `network` in place of its own."""
    own, policy.transformer = policy.transformer, network
    try:
        with torch.no_grad():
            return policy.predict(x, t, cond)
    finally:
        policy.transformer = own


def load_pipeline(case: FamilyCase, folder: Path):
    """The case's pipeline from `folder`; the components it expects that the folder does
    not list are None."""
    listed = json.loads((folder / "model_index.json").read_text())
    expected, _ = case.pipeline._get_signature_keys(case.pipeline)
    pipe = case.pipeline.from_pretrained(folder, **{name: None for name in expected if name not in listed})
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generate(case: FamilyCase, pipe, cfg: Config, c: Components, folder: Path) -> np.ndarray:
    """Two steps of the pipeline, seeded: images [1, H, W, 3] or frames [1, T, H, W, 3] in [0, 1]."""
    return pipe(**case.pipeline_inputs(cfg, c, folder), num_inference_steps=2, output_type="np",
                generator=torch.Generator().manual_seed(0), return_dict=False)[0]


def same_files(a: Path, b: Path) -> bool:
    """Folders (or files) `a` and `b` hold the same names with the same bytes."""
    if a.is_file():
        return b.is_file() and a.read_bytes() == b.read_bytes()
    return (sorted(p.name for p in a.iterdir()) == sorted(p.name for p in b.iterdir())
            and all(same_files(p, b / p.name) for p in a.iterdir()))


def plain_config(network) -> dict:
    """A network's diffusers config as its config.json holds it (lists, no private keys)."""
    return json.loads(json.dumps({k: v for k, v in network.config.items() if not k.startswith("_")}))


REQUIRED = ["iteration", "reward_mean", "loss", "ratio_mean", "clip_frac", "grad_norm", "zero_std_frac",
            "time_rollout", "time_reward", "time_train", "ratio_dev_first_update", "optimizer_steps"]
NFT_REQUIRED = ["iteration", "reward_mean", "loss", "grad_norm", "zero_std_frac", "time_rollout", "time_reward",
                "time_train", "optimizer_steps", "old_decay", "old_deviation", "transformer_forwards_rollout",
                "transformer_forwards_train"]


@cases()
def test_two_iterations_train_with_ratio_one_at_the_first_update(case, trained):
    run_ = trained(case)
    cfg, s = run_.cfg, run_.cfg.sampling
    out = Path(cfg.train.output_dir)
    (reward,) = cfg.reward.weights
    rows = read_jsonl(out / "metrics.jsonl")
    assert [r["iteration"] for r in rows] == [0, 1]
    for row in rows:
        assert all(key in row for key in [*REQUIRED, f"reward/{reward}"]), set(REQUIRED) - set(row)
        assert row["ratio_dev_first_update"] == 0.0  # lp recomputed == rollout lp, bit for bit
        assert row["optimizer_steps"] == case.optimizer_steps
        assert math.isfinite(row["loss"]) and math.isfinite(row["grad_norm"]) and row["grad_norm"] > 0
        assert -1.0 <= row[f"reward/{reward}"] <= 1.0
    assert run_.checkpoint.name == "step_2"
    # Each rollout batch is scored as decoded uint8 videos [B, T, H, W, 3], one frame for images.
    batches = 2 * cfg.train.prompts_per_iteration * s.group_size // s.rollout_batch_size
    assert run_.scored_shapes == [(s.rollout_batch_size, s.num_frames, s.height, s.width, 3)] * batches
    # train.sample_every=2: the first iteration's samples only.
    samples = sorted(p.name for p in (out / "samples").glob("*.mp4"))
    assert samples == ["iter_000000_0.mp4", "iter_000000_1.mp4"]
    assert all(read_video(out / "samples" / name).shape == (s.num_frames, s.height, s.width, 3) for name in samples)
    # The run's reward curve: one run, so one curve, in the cycle's first colour.
    curve = read_png(out / "reward_curve.png")
    assert curve.shape == (400, 600, 3)
    assert len(curve_pixels(curve, 0)[0]) > 50 and len(curve_pixels(curve, 1)[0]) == 0
    assert load_config(out / "config.yaml").train.iterations == 2


@cases()
def test_a_resumed_run_is_bit_exact(case, trained, tmp_path):
    """The trained run's config stopped after its first iteration, then resumed from that
    checkpoint to the second: the straight run's metrics, weights and EMA, bit for bit."""
    straight = trained(case)
    for iterations in (1, 2):
        train(replace(straight.cfg, train=replace(straight.cfg.train, output_dir=str(tmp_path),
                                                  iterations=iterations)))
    resumed = read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["iteration"] for r in resumed] == [0, 1]
    assert [untimed(r) for r in resumed] == [untimed(r) for r in read_jsonl(Path(straight.cfg.train.output_dir) /
                                                                             "metrics.jsonl")]
    checkpoint = latest_checkpoint(tmp_path)
    assert checkpoint.name == "step_2"
    for ema in (False, True):
        a, b = (load_trained_transformer(path, ema=ema).state_dict() for path in (straight.checkpoint, checkpoint))
        assert a.keys() == b.keys() and all(torch.equal(w, b[name]) for name, w in a.items()), f"ema={ema}"


@cases()
def test_nft_trains_without_guidance(case, configure, tmp_path, monkeypatch):
    """train.algorithm=nft (CFG-free: model.cfg_scale=1) for two iterations: the rollout keeps
    only the scored latents; each sample and step sends one row through the network in the
    rollout, and the counted training rows are the network's other calls; the old policy
    predicts as the policy until the first optimizer step, then follows it by nft.decay_type's
    schedule."""
    import fastvideo_grpo.training.trainer as trainer

    rows_through, rollouts = [], []
    forward, rollout_ = case.network.forward, trainer.rollout

    def counting(self, *args, **kwargs):
        x = args[0] if args else kwargs["hidden_states"]
        if x.device.type != "meta":  # a FLOP count's forward (stable_diffusion/flops.py) is no row
            rows_through.append(x.shape[0])
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(case.network, "forward", counting)
    monkeypatch.setattr(trainer, "rollout", lambda *a, **k: rollouts.append(rollout_(*a, **k)) or rollouts[-1])
    cfg = configure(case, tmp_path, "train.iterations=2", "train.algorithm=nft", "sampling.shared_noise=false",
                    "model.cfg_scale=1")
    rows = read_jsonl(train(cfg) / "metrics.jsonl")
    s, (reward,) = cfg.sampling, cfg.reward.weights
    assert [r["iteration"] for r in rows] == [0, 1]
    for row in rows:
        assert all(key in row for key in [*NFT_REQUIRED, f"reward/{reward}"]), set(NFT_REQUIRED) - set(row)
        assert math.isfinite(row["loss"]) and math.isfinite(row["grad_norm"]) and row["grad_norm"] > 0
        assert row["optimizer_steps"] >= 1
        assert row["transformer_forwards_rollout"] == cfg.train.prompts_per_iteration * s.group_size * s.num_steps
    # The old policy is the policy until the first optimizer step, and lags it after.
    assert (rows[0]["old_deviation"] == 0.0) == (rows[0]["optimizer_steps"] == 1)
    assert rows[1]["old_deviation"] > 0
    steps = np.cumsum([r["optimizer_steps"] for r in rows])
    assert [r["old_decay"] for r in rows] == [return_decay(int(n), cfg.nft.decay_type) for n in steps]
    assert sum(rows_through) == sum(r["transformer_forwards_rollout"] + r["transformer_forwards_train"] for r in rows)
    assert len(rollouts) == 2
    assert all(ro.latents is None and ro.log_probs is None and torch.isfinite(ro.scored_latents).all()
               for ro in rollouts)


@cases()
def test_export_loads_into_the_network_and_pipeline_classes(case, trained, base_folder, tmp_path):
    run_, base = trained(case), base_folder(case)
    cfg, c = run_.cfg, run_.c
    trained_weights = load_trained_transformer(run_.checkpoint).state_dict()
    size = sum(w.numel() * w.element_size() for w in trained_weights.values())
    out = export(run_.checkpoint, tmp_path / "export", base_model=base, max_shard_size=f"{size // 2000}KB")
    other = {"transformer": "unet", "unet": "transformer"}[case.component]
    assert not (out / other).exists()
    index = json.loads((out / case.component / "diffusion_pytorch_model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1  # sharded over the threshold

    network = case.network.from_pretrained(out, subfolder=case.component)
    weights = network.state_dict()
    assert weights.keys() == trained_weights.keys()
    assert all(torch.equal(w, trained_weights[name]) for name, w in weights.items())
    initial = case.network.from_pretrained(base, subfolder=case.component)  # the seeded tiny model
    assert plain_config(network) == plain_config(initial)
    initial_weights = initial.state_dict()
    assert any(not torch.equal(w, initial_weights[name]) for name, w in weights.items())  # training moved them
    x, cond = sample_inputs(c)
    expected = predict_with(c.policy, c.policy.transformer, x, case.t, cond)
    torch.testing.assert_close(predict_with(c.policy, network, x, case.t, cond), expected, rtol=1e-6, atol=1e-6)

    # The base's other components are copied as they are; the base's network is replaced.
    assert all(same_files(entry, out / entry.name) for entry in base.iterdir() if entry.name != case.component)
    listed = json.loads((out / "model_index.json").read_text())
    assert listed["_class_name"] == case.pipeline.__name__ == model_family(cfg.model).pipeline
    pipe = load_pipeline(case, out)
    assert isinstance(getattr(pipe, case.component), case.network)
    assert all(getattr(pipe, name) is None for name, entry in listed.items() if entry == [None, None])
    output = generate(case, pipe, cfg, c, out)
    assert output.shape == case.output_shape
    assert np.isfinite(output).all() and (output >= 0).all() and (output <= 1).all()


@cases()
def test_ema_export_holds_the_ema_weights_in_bf16(case, trained, tmp_path):
    run_ = trained(case)
    c = run_.c
    out = export(run_.checkpoint, tmp_path / "ema", ema=True, dtype="bf16")
    weights = load_file(out / case.component / "diffusion_pytorch_model.safetensors")
    assert all(w.dtype == torch.bfloat16 for w in weights.values())
    trained_weights = dict(c.policy.transformer.named_parameters())
    assert c.ema.keys() == trained_weights.keys()
    moved = 0
    for name, value in c.ema.items():
        assert torch.equal(weights[name], value.to(torch.bfloat16)), name
        moved += not torch.equal(value, trained_weights[name].detach())
    assert moved > 0  # the EMA lags the trained weights


@cases()
def test_lora_trains_only_adapters_and_exports_merged_weights_and_a_pipeline_adapter(case, configure, base_folder,
                                                                                     tmp_path):
    cfg = configure(case, tmp_path / "run", "train.iterations=1", "model.lora_rank=4", "train.lr=1e-2")
    c = setup(cfg)
    trainable = [n for n, p in c.policy.transformer.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert all(any(target in n for n in trainable) for target in case.lora_targets)
    train(cfg)
    checkpoint = latest_checkpoint(tmp_path / "run")

    # Only the adapters changed: the base weights equal the seeded tiny model's.
    lora = load_trained_transformer(checkpoint)
    initial = tiny_policy(cfg).transformer
    initial_weights = dict(initial.named_parameters())
    for name, p in lora.named_parameters():
        if "lora_" not in name:
            assert torch.equal(p, initial_weights[name.replace(".base_layer", "")]), name
    assert any(p.abs().sum() > 0 for n, p in lora.named_parameters() if "lora_B" in n)

    x, cond = sample_inputs(c)
    with_adapter = predict_with(c.policy, lora, x, case.t, cond)
    assert not torch.allclose(predict_with(c.policy, initial, x, case.t, cond), with_adapter, atol=1e-6)
    base = base_folder(case)
    merged = export(checkpoint, tmp_path / "merged", base_model=base)
    network = case.network.from_pretrained(merged, subfolder=case.component)
    torch.testing.assert_close(predict_with(c.policy, network, x, case.t, cond), with_adapter, rtol=1e-5, atol=1e-5)

    if not hasattr(case.pipeline, "save_lora_weights"):  # no LoRA loader in this diffusers pipeline
        with pytest.raises(ValueError, match=f"--adapter-only: diffusers' {case.pipeline.__name__} has no LoRA"):
            export(checkpoint, tmp_path / "adapter", adapter_only=True)
        return
    adapter = export(checkpoint, tmp_path / "adapter", adapter_only=True)
    assert (adapter / "pytorch_lora_weights.safetensors").is_file()
    with_lora = load_pipeline(case, base)
    with_lora.load_lora_weights(adapter)
    adapted = getattr(with_lora, case.component)
    torch.testing.assert_close(predict_with(c.policy, adapted, x, case.t, cond), with_adapter, rtol=1e-5, atol=1e-5)
    # The two pipelines generate the same.
    torch.testing.assert_close(generate(case, load_pipeline(case, merged), cfg, c, merged),
                               generate(case, with_lora, cfg, c, base), rtol=1e-4, atol=1e-4)


@cases(lambda case: case.two_ranks is not None)
def test_fsdp_two_ranks_match_one_rank(case, one_rank_run, tmp_path):
    """FSDP2 over the network's blocks, with activation checkpointing: 2 ranks x 1 prompt
    reproduce 1 rank x 2 prompts."""
    args = [*COMMON, *case.two_ranks]
    one = one_rank_run(case.config, *args, "train.prompts_per_iteration=2")
    run([DIST / "train_run.py", "--config", case.config, *args, "train.prompts_per_iteration=1",
         f"train.output_dir={tmp_path}"], nproc=2)
    assert_same_training(one, tmp_path)


@cases(lambda case: case.tiny_folder)
def test_full_path_from_a_tiny_folder_with_offline_embeddings(case, configure, base_folder, tmp_path):
    """Tiny diffusers folder -> the family's embeddings CLI (with the empty prompt's) ->
    training with model.size=full from model.path."""
    import importlib

    folder = base_folder(case)
    importlib.import_module(case.embeddings_cli).run([
        "--model-path", str(folder), "--prompts", str(PROMPTS), "--output", str(tmp_path / "emb"),
        *case.embeddings_args, "--dtype", "fp32", "--device", "cpu"])
    cfg = configure(case, tmp_path / "run", "train.iterations=1", "model.size=full", f"model.path={folder}",
                    f"data.embeddings_dir={tmp_path / 'emb'}")
    # The folder's network is the seeded in-process tiny model of the tiny config.
    in_process = tiny_policy(configure(case, tmp_path / "unused")).transformer
    from_folder = setup(cfg).policy.transformer
    assert all(torch.equal(a, b) for a, b in zip(in_process.parameters(), from_folder.parameters(), strict=True))
    (row,) = read_jsonl(train(cfg) / "metrics.jsonl")
    assert row["ratio_dev_first_update"] == 0.0 and row["grad_norm"] > 0
    assert row["optimizer_steps"] == case.optimizer_steps
