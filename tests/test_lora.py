import torch
from diffusers import FlowMatchEulerDiscreteScheduler, HunyuanVideoPipeline, HunyuanVideoTransformer3DModel

from conftest import ROOT
from fastvideo_grpo.checkpoint import latest_checkpoint
from fastvideo_grpo.config import load_config
from fastvideo_grpo.export import export, load_trained_transformer
from fastvideo_grpo.trainer import setup, train
from helpers import tiny_policy

SMALL = ["sampling.group_size=4", "sampling.rollout_batch_size=4", "sampling.decode_batch_size=4",
         "train.sample_every=0", "train.progress_bar=false", "train.prompts_per_iteration=1",
         "train.iterations=2", "model.lora_rank=4", "train.lr=1e-2"]


def test_lora_trains_only_adapters_and_exports_merged_and_adapter_files(tmp_path):
    cfg = load_config(ROOT / "assets/configs/tiny_t2v.yaml", SMALL + [f"train.output_dir={tmp_path / 'run'}"])
    c = setup(cfg)
    trainable = [n for n, p in c.policy.transformer.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    train(cfg)
    checkpoint = latest_checkpoint(tmp_path / "run")

    # Only the adapters changed: the base weights equal the seeded tiny model's.
    trained = load_trained_transformer(checkpoint)
    base = tiny_policy(cfg).transformer
    base_weights = dict(base.named_parameters())
    for name, p in trained.named_parameters():
        if "lora_" not in name:
            assert torch.equal(p, base_weights[name.replace(".base_layer", "")]), name
    assert any(p.abs().sum() > 0 for n, p in trained.named_parameters() if "lora_B" in n)

    x = torch.randn(2, *c.latent_shape, generator=torch.Generator().manual_seed(0))
    cond = c.source.conditioning([0, 1])
    c.policy.transformer = trained
    with torch.no_grad():
        with_adapter = c.policy.predict(x, 0.6, cond)
        c.policy.transformer = base
        assert not torch.allclose(c.policy.predict(x, 0.6, cond), with_adapter, atol=1e-6)

        merged = export(checkpoint, tmp_path / "merged")
        c.policy.transformer = HunyuanVideoTransformer3DModel.from_pretrained(merged, subfolder="transformer")
        torch.testing.assert_close(c.policy.predict(x, 0.6, cond), with_adapter, rtol=1e-5, atol=1e-5)

        adapter = export(checkpoint, tmp_path / "adapter", adapter_only=True)
        assert (adapter / "pytorch_lora_weights.safetensors").is_file()
        pipe = HunyuanVideoPipeline(text_encoder=None, tokenizer=None, transformer=tiny_policy(cfg).transformer,
                                    vae=None, scheduler=FlowMatchEulerDiscreteScheduler(), text_encoder_2=None,
                                    tokenizer_2=None)
        pipe.load_lora_weights(adapter)
        c.policy.transformer = pipe.transformer
        torch.testing.assert_close(c.policy.predict(x, 0.6, cond), with_adapter, rtol=1e-5, atol=1e-5)
