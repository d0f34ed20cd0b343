"""FLUX.1 T2I: the adapter against diffusers' FluxPipeline, training, export."""

import json
import sys

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

from conftest import ROOT
from fastvideo_grpo.checkpoint import latest_checkpoint
from fastvideo_grpo.config import ConfigError, load_config
from fastvideo_grpo.export import export, load_trained_transformer
from fastvideo_grpo.models import build_policy, check_model_config
from fastvideo_grpo.models.flux import image_ids, pack_latents, unpack_latents
from fastvideo_grpo.models.tiny.flux import tiny_model_config, write_folder as write_tiny_flux_folder
from fastvideo_grpo.models.tiny.hashing_text_encoder import TinyTextEncoder
from fastvideo_grpo.rollout import rollout
from fastvideo_grpo.trainer import train
from helpers import read_jsonl
from test_distributed import COMMON, DIST, assert_same_training, run

sys.path.insert(0, str(ROOT / "data_preprocess"))
import preprocess_flux_embeddings  # noqa: E402

TINY = ROOT / "assets/configs/tiny_flux_t2i.yaml"


@pytest.fixture(scope="module")
def flux_folder(tmp_path_factory):
    return write_tiny_flux_folder(tmp_path_factory.mktemp("flux"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Two iterations of the tiny FLUX config: 2 prompts x G=4, 8 steps, 4 trained steps."""
    out = tmp_path_factory.mktemp("run")
    cfg = load_config(TINY, [f"train.output_dir={out}", "train.iterations=2", "train.progress_bar=false",
                             "train.sample_every=1", f"data.prompts_file={ROOT / 'assets/prompts/tiny.txt'}"])
    return train(cfg)


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
    ours = rollout(policy, cond, 1, shape, num_steps, shift, 0.0, "dance", 1, (0, 0), torch.device("cpu"))

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
    ro = rollout(policy, cond, 4, policy.latent_shape(1, 64, 64), s.num_steps, s.shift, s.eta, s.sde_type,
                 batch_size, (0, 0), torch.device("cpu"))
    for batch in ro.batches:
        for k in range(s.num_steps):
            x = ro.latents[batch, k]
            step = policy.step(policy.predict(x, float(ro.schedule[k]), cond.select(batch)), x, ro.schedule, k,
                               s.eta, s.sde_type, prev_sample=ro.latents[batch, k + 1])
            assert torch.equal(step.log_prob, ro.log_probs[batch, k])


def test_two_iterations_train_with_ratio_one_at_the_first_update(trained):
    out = trained
    rows = read_jsonl(out / "metrics.jsonl")
    assert [r["iteration"] for r in rows] == [0, 1]
    for row in rows:
        assert row["ratio_dev_first_update"] == 0.0  # lp recomputed == rollout lp, bit for bit
        assert row["optimizer_steps"] == 2  # 2 rollout batches x 4 trained steps / accumulation 4
        assert -1.0 <= row["reward/color"] <= 1.0
        assert row["grad_norm"] > 0
    assert latest_checkpoint(out).name == "step_2"


def test_exported_flux_loads_in_flux_pipeline_and_generates(trained, flux_folder, tmp_path):
    out = trained
    checkpoint = latest_checkpoint(out)
    exported = export(checkpoint, tmp_path / "export", base_model=flux_folder)
    transformer = FluxTransformer2DModel.from_pretrained(exported, subfolder="transformer")
    trained_weights = load_trained_transformer(checkpoint).state_dict()
    assert all(torch.equal(p, trained_weights[name]) for name, p in transformer.state_dict().items())
    # The tiny config and the folder share the architecture and seed: training moved the weights.
    initial = FluxTransformer2DModel.from_pretrained(flux_folder, subfolder="transformer").state_dict()
    assert any(not torch.equal(p, initial[name]) for name, p in transformer.state_dict().items())

    pipe = FluxPipeline.from_pretrained(exported)
    pipe.set_progress_bar_config(disable=True)
    assert isinstance(pipe.transformer, FluxTransformer2DModel)
    images = pipe("a red ball", height=64, width=64, num_inference_steps=2, output_type="np",
                  generator=torch.Generator().manual_seed(0)).images
    assert images.shape == (1, 64, 64, 3)
    assert bool((images >= 0).all() and (images <= 1).all())


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


def test_paper_config_loads_with_its_paths():
    cfg = load_config(ROOT / "assets/configs/flux_t2i.yaml", [
        "model.path=/models/flux", "data.embeddings_dir=/data/emb", "reward.models.hps.path=/hps.pt",
        "reward.models.clip.path=/clip"])
    s = cfg.sampling
    assert (s.height, s.width, s.num_frames, s.num_steps) == (720, 720, 1, 16)
    assert (s.eta, s.shift, s.group_size) == (0.3, 3.0, 12)
    assert cfg.grpo.timestep_fraction == 0.6 and cfg.train.lr == 1e-5 and cfg.train.grad_clip == 1.0
    assert cfg.reward.weights == {"hps": 1.0, "clip": 1.0} and cfg.model.guidance_scale == 3.5


def test_fsdp_two_ranks_match_one_rank(tmp_path):
    """FSDP2 over the dual and single blocks, with activation checkpointing."""
    one, two = tmp_path / "one", tmp_path / "two"
    run([DIST / "train_run.py", "--config", TINY, *COMMON, "train.prompts_per_iteration=2", f"train.output_dir={one}"])
    run([DIST / "train_run.py", "--config", TINY, *COMMON, "train.prompts_per_iteration=1", f"train.output_dir={two}"], nproc=2)
    assert_same_training(one, two)


def test_lora_run_exports_merged_weights_and_an_adapter_for_flux_pipeline(flux_folder, tmp_path):
    cfg = load_config(TINY, [f"train.output_dir={tmp_path / 'run'}", "train.iterations=1", "train.progress_bar=false",
                             "train.sample_every=0", "model.lora_rank=4",
                             f"data.prompts_file={ROOT / 'assets/prompts/tiny.txt'}"])
    checkpoint = latest_checkpoint(train(cfg))
    merged = FluxPipeline.from_pretrained(export(checkpoint, tmp_path / "merged", base_model=flux_folder))
    with_adapter = FluxPipeline.from_pretrained(flux_folder)
    with_adapter.load_lora_weights(export(checkpoint, tmp_path / "adapter", adapter_only=True))
    images = []
    for pipe in (merged, with_adapter):
        pipe.set_progress_bar_config(disable=True)
        images.append(pipe("a red ball", height=64, width=64, num_inference_steps=2, output_type="pt",
                           generator=torch.Generator().manual_seed(0)).images)
    torch.testing.assert_close(images[0], images[1], rtol=1e-4, atol=1e-4)


def test_full_folder_with_offline_embeddings_trains(flux_folder, tmp_path):
    """model.size=full from the tiny FLUX folder, conditioned on preprocess_flux_embeddings' output."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red ball bouncing on the floor\na blue kite over a green hill\n")
    preprocess_flux_embeddings.run(["--model-path", str(flux_folder), "--prompts", str(prompts), "--output",
                                    str(tmp_path / "emb"), "--max-tokens", "16", "--dtype", "fp32", "--device", "cpu"])
    cfg = load_config(TINY, ["model.size=full", f"model.path={flux_folder}", f"data.embeddings_dir={tmp_path / 'emb'}",
                             f"train.output_dir={tmp_path / 'run'}", "train.iterations=1", "train.progress_bar=false",
                             "train.sample_every=0"])
    out = train(cfg)
    row = json.loads((out / "metrics.jsonl").read_text())
    assert row["ratio_dev_first_update"] == 0.0 and row["grad_norm"] > 0
