import json
import math

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline, UNet2DConditionModel

from conftest import ROOT
from fastvideo_grpo.config import load_config
from fastvideo_grpo.export import export
from fastvideo_grpo.models.stable_diffusion import StableDiffusionPolicy
from fastvideo_grpo.models.tiny.stable_diffusion import sd_scheduler, write_folder as write_tiny_sd_folder
from fastvideo_grpo.sde import ddim_step, ddim_timesteps, scaled_linear_alphas_cumprod
from fastvideo_grpo.trainer import setup, train
from helpers import read_jsonl, tiny_conditioning, tiny_policy

TINY_SD = ROOT / "assets/configs/tiny_sd_t2i.yaml"
SMALL = ["sampling.group_size=4", "sampling.rollout_batch_size=4", "sampling.decode_batch_size=4",
         "train.sample_every=0", "train.progress_bar=false", "train.prompts_per_iteration=2", "train.iterations=2"]


def sd_config(out, overrides=()):
    return load_config(TINY_SD, [f"train.output_dir={out}", "train.progress_bar=false",
                                 f"data.prompts_file={ROOT / 'assets/prompts/tiny.txt'}", *overrides])


@pytest.fixture
def sd_cfg(tmp_path):
    return sd_config(tmp_path / "run")


def test_ddim_timesteps_are_diffusers_leading_spacing():
    scheduler = sd_scheduler()
    scheduler.set_timesteps(50)
    ours = ddim_timesteps(50)
    assert ours[:-1].long().tolist() == scheduler.timesteps.tolist()
    assert ours[-1] == 1 - 20  # the step from t = 1 goes to the final alpha_bar
    torch.testing.assert_close(scaled_linear_alphas_cumprod().float(), scheduler.alphas_cumprod)


def test_ddim_log_prob_matches_an_independent_computation():
    # DDIM (Song et al. eq. 12): x_prev = sqrt(a_prev) x0 + sqrt(1 - a_prev - s^2) eps + s z with
    # s = eta sqrt((1 - a_prev) / (1 - a)) sqrt(1 - a / a_prev); the transition is N(mean, s^2).
    betas = np.linspace(0.00085**0.5, 0.012**0.5, 1000) ** 2
    alpha_bar = np.cumprod(1 - betas)
    rng = np.random.default_rng(0)
    x, eps, z = rng.normal(size=(3, 2, 4, 3, 3))
    timesteps = ddim_timesteps(10)
    eta = 0.8
    for k, final in [(3, False), (9, True)]:
        t = int(timesteps[k])
        a = alpha_bar[t]
        a_prev = alpha_bar[0] if final else alpha_bar[t - 100]
        s = eta * math.sqrt((1 - a_prev) / (1 - a)) * math.sqrt(1 - a / a_prev)
        x0 = (x - math.sqrt(1 - a) * eps) / math.sqrt(a)
        mean = math.sqrt(a_prev) * x0 + math.sqrt(1 - a_prev - s**2) * eps
        x_prev = mean + s * z
        log_density = -((x_prev - mean) ** 2) / (2 * s**2) - math.log(s) - 0.5 * math.log(2 * math.pi)
        out = ddim_step(torch.tensor(eps), torch.tensor(x), timesteps, k, eta, scaled_linear_alphas_cumprod(),
                        float(alpha_bar[0]), noise=torch.tensor(z))
        np.testing.assert_allclose(out.prev_sample.numpy(), x_prev, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(out.log_prob.numpy(), log_density.mean(axis=(1, 2, 3)), rtol=1e-5)
        replay = ddim_step(torch.tensor(eps), torch.tensor(x), timesteps, k, eta, scaled_linear_alphas_cumprod(),
                           float(alpha_bar[0]), prev_sample=out.prev_sample)
        assert torch.equal(replay.log_prob, out.log_prob)


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_sampling_equals_diffusers_ddim_scheduler(sd_cfg, eta):
    """50 steps of the policy's schedule/step against DDIMScheduler.step on the same UNet
    (eta = 0: deterministic DDIM; eta = 1: the same variance noise)."""
    sd_cfg.model.cfg_scale = 1.0
    policy = tiny_policy(sd_cfg)
    cond = tiny_conditioning(sd_cfg, ["a red ball", "a blue sky"], 1)
    scheduler = sd_scheduler()
    scheduler.set_timesteps(50)
    schedule = policy.schedule(50, sd_cfg.sampling.shift)
    generator = torch.Generator().manual_seed(0)
    ours = theirs = torch.randn(2, *policy.latent_shape(1, 64, 64), generator=generator)
    with torch.no_grad():
        for k, t in enumerate(scheduler.timesteps):
            noise = torch.randn(ours.shape, generator=generator)
            ours = policy.step(policy.predict(ours, float(schedule[k]), cond), ours, schedule, k, eta, "dance",
                               noise=noise).prev_sample
            eps = policy.predict(theirs, float(t), cond)
            theirs = scheduler.step(eps, t, theirs, eta=eta, variance_noise=noise, return_dict=False)[0]
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


def test_two_iterations_train_with_cfg_one_step_each(tmp_path):
    out = train(sd_config(tmp_path / "run", SMALL))
    rows = read_jsonl(out / "metrics.jsonl")
    assert [r["iteration"] for r in rows] == [0, 1]
    for row in rows:
        assert row["ratio_dev_first_update"] == 0.0
        assert row["optimizer_steps"] == 1
        assert math.isfinite(row["loss"]) and math.isfinite(row["grad_norm"])


def test_full_path_from_a_diffusers_folder(tmp_path):
    """Folder -> offline embeddings (with the negative) -> training from model.path."""
    import sys

    sys.path.insert(0, str(ROOT / "data_preprocess"))
    import preprocess_sd_embeddings

    folder = write_tiny_sd_folder(tmp_path / "sd")
    preprocess_sd_embeddings.run(["--model-path", str(folder), "--prompts", str(ROOT / "assets/prompts/tiny.txt"),
                                  "--output", str(tmp_path / "emb"), "--dtype", "fp32", "--device", "cpu"])
    cfg = sd_config(tmp_path / "run", [*SMALL, "train.iterations=1", "model.size=full", f"model.path={folder}",
                                       f"data.embeddings_dir={tmp_path / 'emb'}"])
    # The folder's UNet is the seeded in-process tiny model of the tiny config.
    in_process = setup(sd_config(tmp_path / "other")).policy.transformer
    from_folder = setup(cfg).policy.transformer
    assert all(torch.equal(a, b) for a, b in zip(in_process.parameters(), from_folder.parameters()))
    row = json.loads((train(cfg) / "metrics.jsonl").read_text())
    assert row["ratio_dev_first_update"] == 0.0 and row["optimizer_steps"] == 1


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("sd_run")
    cfg = sd_config(out, SMALL)
    train(cfg)
    c = setup(cfg)
    from fastvideo_grpo.checkpoint import latest_checkpoint, load_checkpoint
    from fastvideo_grpo.parallel import World

    load_checkpoint(latest_checkpoint(out), c.policy.transformer, c.optimizer, World(0, 1, torch.device("cpu"), None))
    return cfg, c, latest_checkpoint(out)


def test_export_loads_as_unet_and_in_the_sd_pipeline(trained, tmp_path):
    cfg, c, checkpoint = trained
    base = write_tiny_sd_folder(tmp_path / "base")
    out = export(checkpoint, tmp_path / "export", base_model=base)
    assert not (out / "transformer").exists()
    unet = UNet2DConditionModel.from_pretrained(out, subfolder="unet")
    x = torch.randn(2, *c.latent_shape, generator=torch.Generator().manual_seed(3))
    cond = c.source.conditioning([0, 1])
    expected = c.policy.predict(x, 501.0, cond)
    exported = StableDiffusionPolicy(unet, c.policy.vae, cfg.model, torch.device("cpu"))
    torch.testing.assert_close(exported.predict(x, 501.0, cond), expected, rtol=1e-6, atol=1e-6)
    initial = UNet2DConditionModel.from_pretrained(base, subfolder="unet")
    assert any(not torch.equal(a, b) for a, b in zip(unet.parameters(), initial.parameters()))

    pipe = StableDiffusionPipeline.from_pretrained(out)
    assert pipe.safety_checker is None
    images = pipe("a red ball", height=64, width=64, num_inference_steps=2, guidance_scale=5.0, eta=1.0,
                  output_type="np", generator=torch.Generator().manual_seed(0)).images
    assert images.shape == (1, 64, 64, 3) and np.isfinite(images).all()


def test_fsdp_two_ranks_match_one_rank_with_cfg(tmp_path):
    """FSDP2 over the UNet's blocks, activation checkpointing and one optimizer step per
    iteration: 2 ranks x 1 prompt reproduce 1 rank x 2 prompts."""
    from test_distributed import COMMON, DIST, assert_same_training, run

    args = [DIST / "train_run.py", "--config", TINY_SD, *COMMON, "train.iterations=2"]
    run(args + ["train.prompts_per_iteration=2", f"train.output_dir={tmp_path / 'one'}"])
    run(args + ["train.prompts_per_iteration=1", f"train.output_dir={tmp_path / 'two'}"], nproc=2)
    assert_same_training(tmp_path / "one", tmp_path / "two")


def test_lora_on_the_unet_exports_merged_and_as_a_pipeline_adapter(tmp_path):
    cfg = sd_config(tmp_path / "run", [*SMALL, "model.lora_rank=4", "train.lr=1e-2"])
    c = setup(cfg)
    trainable = [n for n, p in c.policy.transformer.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert any("attn2" in n for n in trainable) and any("ff.net" in n for n in trainable)
    train(cfg)
    checkpoint = tmp_path / "run/checkpoints/step_2"
    from fastvideo_grpo.export import load_trained_transformer

    x = torch.randn(2, *c.latent_shape, generator=torch.Generator().manual_seed(0))
    cond = c.source.conditioning([0, 1])
    with torch.no_grad():
        c.policy.transformer = load_trained_transformer(checkpoint)
        with_adapter = c.policy.predict(x, 501.0, cond)
        c.policy.transformer = tiny_policy(cfg).transformer
        assert not torch.allclose(c.policy.predict(x, 501.0, cond), with_adapter, atol=1e-6)
        c.policy.transformer = UNet2DConditionModel.from_pretrained(export(checkpoint, tmp_path / "merged"),
                                                                    subfolder="unet")
        torch.testing.assert_close(c.policy.predict(x, 501.0, cond), with_adapter, rtol=1e-5, atol=1e-5)

        adapter = export(checkpoint, tmp_path / "adapter", adapter_only=True)
        pipe = StableDiffusionPipeline(vae=c.policy.vae, text_encoder=None, tokenizer=None,
                                       unet=tiny_policy(cfg).transformer, scheduler=sd_scheduler(),
                                       safety_checker=None, feature_extractor=None, requires_safety_checker=False)
        pipe.load_lora_weights(adapter)
        c.policy.transformer = pipe.unet
        torch.testing.assert_close(c.policy.predict(x, 501.0, cond), with_adapter, rtol=1e-5, atol=1e-5)
