"""HunyuanVideo as a text-to-image model: one latent frame, decoded as a one-frame video."""


import torch

from conftest import ROOT
from fastvideo_grpo.config import load_config
from fastvideo_grpo.models import build_policy
from fastvideo_grpo.rewards import REGISTRY, rule_reward
from fastvideo_grpo.rewards.rules import color_reward
from fastvideo_grpo.trainer import train
from helpers import read_jsonl

TINY = ROOT / "assets/configs/tiny_hunyuan_t2i.yaml"


def test_one_frame_latents_decode_to_one_frame_images():
    cfg = load_config(TINY)
    policy = build_policy(cfg.model, torch.device("cpu"), 32, 32)
    shape = policy.latent_shape(1, 64, 64)
    assert shape == (16, 1, 8, 8)
    images = policy.decode(torch.randn(2, *shape))
    assert images.dtype == torch.uint8 and images.shape == (2, 1, 64, 64, 3)


def test_two_iterations_train_and_rewards_see_one_frame(tmp_path, monkeypatch):
    seen = []

    def recording(videos, prompts):
        seen.append(tuple(videos.shape))
        return color_reward(videos, prompts)

    monkeypatch.setitem(REGISTRY, "color", rule_reward("color", recording))
    cfg = load_config(TINY, [f"train.output_dir={tmp_path / 'run'}", "train.iterations=2", "train.progress_bar=false",
                             "train.sample_every=0", f"data.prompts_file={ROOT / 'assets/prompts/tiny.txt'}"])
    out = train(cfg)
    # 2 iterations x 2 rollout batches, each 4 images [1, H, W, 3].
    assert seen == [(4, 1, 64, 64, 3)] * 4
    rows = read_jsonl(out / "metrics.jsonl")
    assert [r["iteration"] for r in rows] == [0, 1]
    assert all(r["ratio_dev_first_update"] == 0.0 and r["grad_norm"] > 0 for r in rows)


def test_paper_config_loads_with_its_paths():
    cfg = load_config(ROOT / "assets/configs/hunyuan_t2i.yaml", [
        "model.path=/models/hunyuan", "data.embeddings_dir=/data/emb", "reward.models.hps.path=/hps.pt"])
    assert cfg.model.family == "hunyuan_video" and cfg.sampling.num_frames == 1
    assert cfg.reward.weights == {"hps": 1.0}
