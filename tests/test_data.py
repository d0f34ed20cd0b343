import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import HunyuanVideoPipeline
from safetensors.torch import load_file, save_file

from conftest import ROOT
from fastvideo_grpo.data.embeddings import EmbeddingDataset
from fastvideo_grpo.data.prompts import PromptSampler
from fastvideo_grpo.models.hunyuan_video.tiny import write_folder as write_tiny_hunyuan_folder
from helpers import read_jsonl

sys.path.insert(0, str(ROOT / "data_preprocess"))
import preprocess_hunyuan_embeddings as cli  # noqa: E402

LONG = " ".join(["a red ball"] * 10)
PROMPTS = ["a red ball bouncing on the floor", "", "a blue ocean wave rolling in", LONG,
           "a red ball bouncing on the floor", "a green frog in the river at night", "a cyan kite"]


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    return write_tiny_hunyuan_folder(tmp_path_factory.mktemp("tiny_hunyuan"))


@pytest.fixture(scope="module")
def prompt_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("prompts") / "prompts.txt"
    path.write_text("\n".join(PROMPTS) + "\n")
    return path


def encode(tiny_folder, prompt_file, out, *extra):
    cli.run(["--model-path", str(tiny_folder), "--prompts", str(prompt_file), "--output", str(out),
             "--shard-size", "4", "--batch-size", "3", "--max-tokens", "12", "--device", "cpu", *extra])
    return EmbeddingDataset(out)


def test_embeddings_equal_the_pipelines_encode_prompt(tiny_folder, prompt_file, tmp_path, caplog):
    with caplog.at_level(logging.INFO):
        data = encode(tiny_folder, prompt_file, tmp_path, "--dtype", "fp32")
    prompts = [p for p in PROMPTS if p]
    assert data.prompts == prompts and len(data) == 6
    pipe = HunyuanVideoPipeline.from_pretrained(tiny_folder, transformer=None, vae=None)
    template = json.loads((tiny_folder / "prompt_template.json").read_text())
    with torch.no_grad():  # as the CLI: autograd takes other kernels
        embeds, pooled, mask = pipe.encode_prompt(prompts, prompt_template=template, device="cpu",
                                                  max_sequence_length=12)
    cond = data.conditioning(list(range(6)))
    assert torch.equal(cond.prompt_embeds, embeds)
    assert torch.equal(cond.pooled_embeds, pooled)
    assert torch.equal(cond.attention_mask, mask.long())
    assert [row["tokens"] for row in data.rows] == mask.sum(1).tolist()
    assert [row["shard"] for row in data.rows] == ["shard_00000.safetensors"] * 4 + ["shard_00001.safetensors"] * 2
    log = caplog.text
    assert "1 prompts exceeded 12 tokens and were truncated" in log
    assert "1 prompts are duplicates" in log and "1 empty lines skipped" in log


def assert_pipeline_needs_no_template(folder: Path) -> None:
    """`HunyuanVideoPipeline.from_pretrained(folder)(prompt=...)` as written, with diffusers'
    default template, gives finite frames, the same as with the folder's prompt_template.json."""
    pipe = HunyuanVideoPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    template = json.loads((folder / "prompt_template.json").read_text())
    frames = [pipe(prompt="a red ball", height=32, width=32, num_frames=5, num_inference_steps=2, output_type="np",
                   generator=torch.Generator().manual_seed(0), **extra).frames
              for extra in ({}, {"prompt_template": template})]
    assert frames[0].shape == (1, 5, 32, 32, 3)
    assert np.isfinite(frames[0]).all()
    np.testing.assert_array_equal(frames[0], frames[1])


def test_the_pipeline_crops_the_default_template_to_the_prompt(tiny_folder):
    """The tiny Llama tokenizer splits the default template before the prompt into BOS and 94
    pieces, as Llama-3 does: the default crop_start of 95 leaves the prompt's words and
    <|eot_id|> (a shorter split crops the prompt away: an all-zero mask and NaN frames)."""
    from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video import DEFAULT_PROMPT_TEMPLATE

    assert json.loads((tiny_folder / "prompt_template.json").read_text()) == DEFAULT_PROMPT_TEMPLATE
    pipe = HunyuanVideoPipeline.from_pretrained(tiny_folder, transformer=None, vae=None)
    prompts = ["a red ball bouncing on the floor", "a blue ocean wave"]
    with torch.no_grad():
        embeds, _, mask = pipe.encode_prompt(prompts, device="cpu", max_sequence_length=12)
    assert mask.sum(1).tolist() == [len(p.split()) + 1 for p in prompts]
    ids = pipe.tokenizer(DEFAULT_PROMPT_TEMPLATE["template"].format(prompts[0])).input_ids
    prompt_ids = ids[DEFAULT_PROMPT_TEMPLATE["crop_start"]:]
    assert pipe.tokenizer.convert_ids_to_tokens(prompt_ids) == ["a", "Ġred", "Ġball", "Ġbouncing", "Ġon", "Ġthe",
                                                                "Ġfloor", "<|eot_id|>"]
    assert_pipeline_needs_no_template(tiny_folder)


def test_a_tokenizer_that_miscounts_the_default_template_is_refused():
    from fastvideo_grpo.models.hunyuan_video.tiny import tiny_prompt_template
    from fastvideo_grpo.models.tiny.text_encoders import word_tokenizer

    special = ["<pad>", "<unk>", "<|begin_of_text|>", "<|eot_id|>"]
    whitespace = word_tokenizer(special, "<|begin_of_text|>", "<|eot_id|>", 1024)  # BOS, 59 pieces, EOS
    with pytest.raises(ValueError, match=r"takes 61 tokens before the prompt .* which crops 95: .* NaN frames"):
        tiny_prompt_template(whitespace)


def test_bf16_by_default_rerun_skips_and_overwrite_redoes(tiny_folder, prompt_file, tmp_path):
    data = encode(tiny_folder, prompt_file, tmp_path)
    assert data.conditioning([0]).prompt_embeds.dtype == torch.bfloat16
    shard = tmp_path / "shard_00000.safetensors"
    before = shard.stat().st_mtime_ns
    encode(tiny_folder, prompt_file, tmp_path)
    assert shard.stat().st_mtime_ns == before
    encode(tiny_folder, prompt_file, tmp_path, "--overwrite")
    assert shard.stat().st_mtime_ns != before


def test_interrupted_run_computes_only_the_missing_shards(tiny_folder, prompt_file, tmp_path, caplog):
    encode(tiny_folder, prompt_file, tmp_path)
    first, second = tmp_path / "shard_00000.safetensors", tmp_path / "shard_00001.safetensors"
    second.unlink()  # as if killed after writing the first shard (shards appear whole or not at all)
    (tmp_path / "manifest.jsonl").unlink()
    before = first.stat().st_mtime_ns
    with caplog.at_level(logging.INFO):
        data = encode(tiny_folder, prompt_file, tmp_path)
    assert "'shards_encoded': 1, 'shards_skipped': 1" in caplog.text
    assert first.stat().st_mtime_ns == before and second.exists() and len(data) == 6


def test_two_ranks_write_the_same_dataset(tiny_folder, prompt_file, tmp_path):
    single = encode(tiny_folder, prompt_file, tmp_path / "one", "--dtype", "fp32")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(ROOT / "data_preprocess/preprocess_hunyuan_embeddings.py"), "--model-path", str(tiny_folder),
         "--prompts", str(prompt_file), "--output", str(tmp_path / "two"), "--shard-size", "4", "--batch-size", "3",
         "--max-tokens", "12", "--device", "cpu", "--dtype", "fp32"], capture_output=True, text=True, env=env,
        cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "rank 0: {'shards_encoded': 1," in result.stderr  # the other shard was rank 1's
    double = EmbeddingDataset(tmp_path / "two")
    assert double.rows == single.rows
    a, b = single.conditioning(list(range(6))), double.conditioning(list(range(6)))
    assert torch.equal(a.prompt_embeds, b.prompt_embeds) and torch.equal(a.pooled_embeds, b.pooled_embeds)


def test_dataset_errors_name_the_file(tiny_folder, prompt_file, tmp_path):
    encode(tiny_folder, prompt_file, tmp_path)
    shard = tmp_path / "shard_00001.safetensors"
    tensors = load_file(shard)
    save_file({k: v[:1] for k, v in tensors.items()}, shard)
    with pytest.raises(ValueError, match=r"shard_00001.safetensors: prompt_embeds has shape \(1, 12, 32\), expected \(2, 12, 32\)"):
        EmbeddingDataset(tmp_path)
    shard.write_bytes(b"\x10\x00\x00")
    with pytest.raises(ValueError, match="shard_00001.safetensors is not a readable safetensors shard"):
        EmbeddingDataset(tmp_path)
    shard.unlink()
    with pytest.raises(FileNotFoundError, match="shard_00001.safetensors is missing"):
        EmbeddingDataset(tmp_path)
    (tmp_path / "manifest.jsonl").unlink()
    with pytest.raises(FileNotFoundError, match="manifest.jsonl does not exist"):
        EmbeddingDataset(tmp_path)


def test_sampler_splits_ranks_reshuffles_epochs_and_restores_state():
    ranks = [PromptSampler(10, per_rank=2, dp_rank=r, dp_size=2, seed=3) for r in range(2)]
    epoch = []
    for _ in range(2):
        a, b = ranks[0].next_indices(), ranks[1].next_indices()
        assert not set(a) & set(b)
        epoch += a + b
    state = ranks[0].state_dict()
    later = [ranks[0].next_indices() for _ in range(4)]
    restored = PromptSampler(10, per_rank=2, dp_rank=0, dp_size=2, seed=3)
    restored.load_state_dict(state)
    assert [restored.next_indices() for _ in range(4)] == later
    # Each epoch visits every prompt once, in a new order.
    one = PromptSampler(10, per_rank=5, dp_rank=0, dp_size=1, seed=3)
    first, second = one.next_indices() + one.next_indices(), one.next_indices() + one.next_indices()
    assert sorted(first) == sorted(second) == list(range(10)) and first != second


def test_training_and_pipeline_export_on_the_tiny_folder(tiny_folder, prompt_file, tmp_path):
    from fastvideo_grpo.config import load_config
    from fastvideo_grpo.cli.export import export
    from fastvideo_grpo.training.trainer import train

    encode(tiny_folder, prompt_file, tmp_path / "emb")
    cfg = load_config(ROOT / "assets/configs/tiny_t2v.yaml", [
        "model.size=full", f"model.path={tiny_folder}", f"data.embeddings_dir={tmp_path / 'emb'}",
        "train.iterations=2", "sampling.group_size=4", "sampling.rollout_batch_size=4", "train.sample_every=0",
        "train.progress_bar=false", "train.prompts_per_iteration=1", f"train.output_dir={tmp_path / 'run'}"])
    from fastvideo_grpo.training.trainer import setup

    # The folder's transformer is the seeded in-process tiny model of the demo config.
    in_process = setup(load_config(ROOT / "assets/configs/tiny_t2v.yaml")).policy.transformer
    from_folder = setup(cfg).policy.transformer
    assert all(torch.equal(a, b) for a, b in zip(in_process.parameters(), from_folder.parameters()))
    out = train(cfg)
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
    exported = export(out / "checkpoints/step_2", tmp_path / "export", base_model=tiny_folder)
    assert_pipeline_needs_no_template(exported)


def test_flux_and_sd_embeddings_equal_their_pipelines(prompt_file, tmp_path):
    from diffusers import FluxPipeline, StableDiffusionPipeline

    import preprocess_flux_embeddings as flux_cli
    import preprocess_sd_embeddings as sd_cli
    from fastvideo_grpo.models.flux.tiny import write_folder as write_tiny_flux_folder
    from fastvideo_grpo.models.stable_diffusion.tiny import write_folder as write_tiny_sd_folder

    prompts = [p for p in PROMPTS if p]
    flux = write_tiny_flux_folder(tmp_path / "flux")
    flux_cli.run(["--model-path", str(flux), "--prompts", str(prompt_file), "--output", str(tmp_path / "fe"),
                  "--max-tokens", "16", "--dtype", "fp32", "--device", "cpu"])
    data = EmbeddingDataset(tmp_path / "fe")
    pipe = FluxPipeline.from_pretrained(flux, transformer=None, vae=None)
    with torch.no_grad():  # autograd takes other kernels: 1e-7 apart
        embeds, pooled, text_ids = pipe.encode_prompt(prompts, prompt_2=None, device="cpu", max_sequence_length=16)
    cond = data.conditioning(list(range(len(prompts))))
    assert torch.equal(cond.prompt_embeds, embeds) and torch.equal(cond.pooled_embeds, pooled)
    assert text_ids.shape == (16, 3) and not text_ids.any()  # FLUX's text ids: zeros, rebuilt from L
    assert data.rows[0]["tokens"] == len("a red ball bouncing on the floor".split()) + 1

    sd = write_tiny_sd_folder(tmp_path / "sd")
    sd_cli.run(["--model-path", str(sd), "--prompts", str(prompt_file), "--output", str(tmp_path / "se"),
                "--dtype", "fp32", "--device", "cpu"])
    data = EmbeddingDataset(tmp_path / "se")
    pipe = StableDiffusionPipeline.from_pretrained(sd, unet=None, vae=None, safety_checker=None,
                                                   feature_extractor=None, requires_safety_checker=False)
    with torch.no_grad():
        embeds, _ = pipe.encode_prompt(prompts, "cpu", 1, do_classifier_free_guidance=False)
    cond = data.conditioning(list(range(len(prompts))))
    assert torch.equal(cond.prompt_embeds, embeds) and cond.pooled_embeds.shape == (len(prompts), 0)


def test_latents_of_images_and_first_frames(tiny_folder, tmp_path):
    import imageio.v3 as iio
    import numpy as np
    from diffusers import AutoencoderKLHunyuanVideo

    import preprocess_latents

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
    iio.imwrite(tmp_path / "a.png", image)
    iio.imwrite(tmp_path / "b.mp4", rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8), fps=4)
    (tmp_path / "inputs.txt").write_text("a.png\nb.mp4\n")
    preprocess_latents.main(["--model-path", str(tiny_folder), "--inputs", str(tmp_path / "inputs.txt"),
                             "--output", str(tmp_path / "lat"), "--height", "32", "--width", "32",
                             "--dtype", "fp32", "--device", "cpu"])
    rows = read_jsonl(tmp_path / "lat/manifest.jsonl")
    assert [Path(r["path"]).name for r in rows] == ["a.png", "b.mp4"]
    latents = load_file(tmp_path / "lat" / rows[0]["shard"])["latents"]
    assert latents.shape == (2, 16, 1, 4, 4)

    # Independent check of the first: cover-resize 40x48 -> 32x38, center crop 32x32.
    vae = AutoencoderKLHunyuanVideo.from_pretrained(tiny_folder, subfolder="vae")
    x = torch.from_numpy(image).permute(2, 0, 1).float()[None] / 127.5 - 1
    x = torch.nn.functional.interpolate(x, size=(32, 38), mode="bilinear", antialias=True, align_corners=False)
    x = x[:, :, :, 3:35].clamp(-1, 1)[:, :, None]
    with torch.no_grad():
        expected = vae.encode(x).latent_dist.mode() * vae.config.scaling_factor
    torch.testing.assert_close(latents[:1], expected, rtol=1e-5, atol=1e-5)


def test_latents_input_list_naming_missing_files(tiny_folder, tmp_path):
    import preprocess_latents

    (tmp_path / "inputs.txt").write_text("nothere.png\n")
    with pytest.raises(FileNotFoundError, match="lists 1 missing files"):
        preprocess_latents.main(["--model-path", str(tiny_folder), "--inputs", str(tmp_path / "inputs.txt"),
                                 "--output", str(tmp_path / "lat"), "--height", "32", "--width", "32"])
