import json

import pytest
import torch
from diffusers import AutoencoderKLHunyuanVideo, FlowMatchEulerDiscreteScheduler, HunyuanVideoTransformer3DModel
from safetensors.torch import load_file

from conftest import ROOT
from fastvideo_grpo.checkpoint import latest_checkpoint, load_checkpoint
from fastvideo_grpo.config import load_config
from fastvideo_grpo.export import export
from fastvideo_grpo.parallel import World
from fastvideo_grpo.trainer import setup, train

SMALL = ["sampling.group_size=4", "sampling.rollout_batch_size=4", "sampling.decode_batch_size=4",
         "train.sample_every=0", "train.progress_bar=false", "train.prompts_per_iteration=1",
         "train.iterations=2", "train.ema_decay=0.5"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    cfg = load_config(ROOT / "assets/configs/tiny_t2v.yaml", SMALL + [f"train.output_dir={out}"])
    train(cfg)
    c = setup(cfg)
    load_checkpoint(latest_checkpoint(out), c.policy.transformer, c.optimizer,
                    World(0, 1, torch.device("cpu"), None), c.ema)
    return cfg, c, latest_checkpoint(out)


def sample_inputs(c, batch=2):
    x = torch.randn(batch, *c.latent_shape, generator=torch.Generator().manual_seed(3))
    return x, c.source.conditioning(list(range(batch)))


def test_exported_transformer_matches_the_trained_one(trained, tmp_path):
    cfg, c, checkpoint = trained
    out = export(checkpoint, tmp_path / "export", max_shard_size="200KB")
    index = json.loads((out / "transformer/diffusion_pytorch_model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1  # sharded over the threshold
    loaded = HunyuanVideoTransformer3DModel.from_pretrained(out, subfolder="transformer")
    x, cond = sample_inputs(c)
    expected = c.policy.predict(x, 0.7, cond)
    c.policy.transformer = loaded
    torch.testing.assert_close(c.policy.predict(x, 0.7, cond), expected, rtol=1e-6, atol=1e-6)


def test_ema_export_holds_the_ema_weights_in_bf16(trained, tmp_path):
    cfg, c, checkpoint = trained
    out = export(checkpoint, tmp_path / "ema", ema=True, dtype="bf16")
    weights = load_file(out / "transformer/diffusion_pytorch_model.safetensors")
    assert all(w.dtype == torch.bfloat16 for w in weights.values())
    trained_weights = dict(c.policy.transformer.named_parameters())
    moved = 0
    for name, value in c.ema.items():
        assert torch.equal(weights[name], value.to(torch.bfloat16)), name
        moved += not torch.equal(value, trained_weights[name].detach())
    assert moved > 0  # the EMA lags the trained weights


def test_export_with_base_model_copies_the_other_components(trained, tmp_path):
    cfg, c, checkpoint = trained
    base = tmp_path / "base"
    c.policy.vae.save_pretrained(base / "vae")
    FlowMatchEulerDiscreteScheduler(shift=7.0).save_pretrained(base / "scheduler")
    (base / "transformer").mkdir()
    (base / "transformer/config.json").write_text("{}")  # replaced, not copied
    (base / "model_index.json").write_text(json.dumps({"_class_name": "HunyuanVideoPipeline"}))
    out = export(checkpoint, tmp_path / "full", base_model=base)
    assert json.loads((out / "model_index.json").read_text())["_class_name"] == "HunyuanVideoPipeline"
    vae = AutoencoderKLHunyuanVideo.from_pretrained(out, subfolder="vae")
    assert all(torch.equal(a, b) for a, b in zip(vae.parameters(), c.policy.vae.parameters()))
    assert FlowMatchEulerDiscreteScheduler.from_pretrained(out, subfolder="scheduler").config.shift == 7.0
    assert HunyuanVideoTransformer3DModel.from_pretrained(out, subfolder="transformer").config.num_attention_heads == 4


def test_export_of_a_folder_that_is_no_checkpoint_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        export(tmp_path, tmp_path / "out")
