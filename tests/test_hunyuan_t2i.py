"""HunyuanVideo as a text-to-image model: one latent frame, decoded as a one-frame video.
Training (the reward sees one-frame videos), export and LoRA: test_families.py."""

import torch

from conftest import ROOT
from fastvideo_grpo.config import load_config
from fastvideo_grpo.models import build_policy

TINY = ROOT / "assets/configs/tiny_hunyuan_t2i.yaml"


def test_one_frame_latents_decode_to_one_frame_images():
    cfg = load_config(TINY)
    policy = build_policy(cfg.model, torch.device("cpu"), 32, 32)
    shape = policy.latent_shape(1, 64, 64)
    assert shape == (16, 1, 8, 8)
    images = policy.decode(torch.randn(2, *shape))
    assert images.dtype == torch.uint8 and images.shape == (2, 1, 64, 64, 3)


def test_paper_config_loads_with_its_paths():
    cfg = load_config(ROOT / "assets/configs/hunyuan_t2i.yaml", [
        "model.path=/models/hunyuan", "data.embeddings_dir=/data/emb", "reward.models.hps.path=/hps.pt"])
    assert cfg.model.family == "hunyuan_video" and cfg.sampling.num_frames == 1
    assert cfg.reward.weights == {"hps": 1.0}
