import importlib.util

import pytest
import torch

from fastvideo_grpo.training.trainer import train

SCALARS = ["time/rollout", "time/decode", "time/reward", "time/train", "time/checkpoint", "time/eval",
           "train/samples_per_s", "train/tflops_per_gpu", "train/ratio_mean", "train/ratio_max_dev", "train/clip_frac",
           "train/advantage_mean", "train/advantage_std", "train/advantage_abs_max", "train/zero_std_frac",
           "train/grad_norm", "train/lr", "train/loss", "reward/color", "reward_norm/color",
           "memory/peak_gb_max", "memory/peak_gb_mean", "eval/color_mean", "eval/color_ci95"]


def short_run(cfg):
    cfg.sampling.height = cfg.sampling.width = 16
    cfg.train.iterations = 2
    cfg.train.sample_every = 1
    cfg.checkpoint.every = 1
    cfg.eval.every = 2
    cfg.eval.num_prompts = 1
    return cfg


def test_tensorboard_event_files_hold_the_scalars_and_videos(tiny_cfg):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = train(short_run(tiny_cfg))
    events = EventAccumulator(str(out / "tb"), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    tags = events.Tags()
    missing = set(SCALARS) - set(tags["scalars"])
    assert not missing, missing
    assert [e.step for e in events.Scalars("train/loss")] == [0, 1]
    assert [e.step for e in events.Scalars("eval/color_mean")] == [2]
    assert {"samples", "eval/grid"} <= set(tags["images"])
    assert events.Images("samples")[0].encoded_image_string[:3] == b"GIF"


@pytest.mark.skipif(importlib.util.find_spec("wandb") is None, reason="the optional wandb extra is not installed")
def test_wandb_offline_run_is_written(tiny_cfg, monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = short_run(tiny_cfg)
    cfg.train.iterations = 1
    cfg.logging.wandb = True
    cfg.logging.wandb_mode = "offline"
    out = train(cfg)
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))


def test_iteration_stats_reduce_as_declared_on_one_rank():
    from fastvideo_grpo.metrics import IterationStats
    from fastvideo_grpo.parallel import World

    values = torch.rand(7, dtype=torch.float32)
    stats = IterationStats()
    for v in values:
        stats.mean("loss", v)
        stats.max("dev", v)
        stats.total("count", 1)
    stats.mean("grad_norm", 2.5)
    reduced = stats.reduce(World(0, 1, torch.device("cpu"), None))
    # Python's float sum in order, as the per-micro-batch .item() lists summed.
    expected = 0.0
    for v in values.tolist():
        expected += v
    assert reduced["loss"] == expected / 7
    assert reduced["dev"] == values.max().item()
    assert reduced["count"] == 7.0
    assert reduced["grad_norm"] == 2.5
    assert list(reduced) == ["loss", "grad_norm", "count", "dev"]
    assert stats.count("loss") == 7 and stats.count("missing") == 0
