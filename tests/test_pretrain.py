"""Pretraining the shapes model (fastvideo_grpo/pretrain.py): its batches, its loss and its
determinism, at a tiny width."""

import json

import numpy as np
import torch
from diffusers import HunyuanVideoTransformer3DModel

from fastvideo_grpo.pretrain import PretrainConfig, batch, loss_at, main, text_encoder
from fastvideo_grpo.shapes.world import HELD_OUT, parse_caption

TINY = ["--heads", "2", "--head-dim", "8", "--layers", "1", "--single-layers", "1", "--batch-size", "2",
        "--steps", "3", "--save-every", "2", "--warmup-steps", "2"]


def test_batches_are_seeded_hold_out_their_triples_and_drop_the_stated_share_of_captions():
    cfg = PretrainConfig(batch_size=64, caption_dropout=0.25)
    latents, captions = batch(cfg, 5)
    again, same = batch(cfg, 5)
    assert torch.equal(latents, again) and captions == same
    assert captions != batch(cfg, 6)[1]
    assert latents.shape == (64, 3, 3, 32, 32)
    empty = [c for c in captions if c == ""]
    named = [parse_caption(c) for c in captions if c]
    assert not {s.triple for s in named} & HELD_OUT
    dropped = [c == "" for step in range(1, 40) for c in batch(PretrainConfig(batch_size=64, caption_dropout=0.25), step)[1]]
    assert 0.22 < np.mean(dropped) < 0.28 and 0 < len(empty) < 64
    # No dropout: the same scenes, every caption kept.
    kept = batch(PretrainConfig(batch_size=64, caption_dropout=0.0), 5)[1]
    assert all(kept) and [k for k, c in zip(kept, captions) if c] == [c for c in captions if c]


class Echo(torch.nn.Module):
    """A stand-in network whose prediction is its input times 2, and which records its call."""

    def forward(self, hidden_states, timestep, **kwargs):
        self.timestep = timestep
        return (2 * hidden_states,)


def test_the_loss_is_flow_matchings_velocity_error_at_logit_normal_noise_levels():
    latents = torch.randn(3, 3, 2, 4, 4, generator=torch.Generator().manual_seed(1))
    model = Echo()
    loss = loss_at(model, text_encoder(PretrainConfig()), latents, ["a red circle moving up"] * 3,
                   torch.Generator().manual_seed(9))
    draws = torch.Generator().manual_seed(9)
    sigma = 1 / (1 + np.exp(-torch.randn(3, generator=draws).numpy().astype(np.float64)))
    noise = torch.randn(latents.shape, generator=draws).numpy().astype(np.float64)
    x0 = latents.numpy().astype(np.float64)
    noisy = (1 - sigma[:, None, None, None, None]) * x0 + sigma[:, None, None, None, None] * noise
    expected = np.mean((2 * noisy - (noise - x0)) ** 2)
    assert abs(loss.item() - expected) < 1e-5
    assert np.allclose(model.timestep.numpy(), sigma * 1000, rtol=1e-5)


def test_two_runs_with_one_seed_write_the_same_folder_and_it_loads(tmp_path):
    for name in ("a", "b"):
        assert main(["--output", str(tmp_path / name), *TINY]) == 0
    rows = [json.loads(line) for line in (tmp_path / "a" / "loss.jsonl").read_text().splitlines()]
    again = [json.loads(line) for line in (tmp_path / "b" / "loss.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert [(r["loss"], r["grad_norm"]) for r in rows] == [(r["loss"], r["grad_norm"]) for r in again]
    a = HunyuanVideoTransformer3DModel.from_pretrained(tmp_path / "a", subfolder="transformer")
    b = HunyuanVideoTransformer3DModel.from_pretrained(tmp_path / "b", subfolder="transformer")
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    record = json.loads((tmp_path / "a" / "pretrain.json").read_text())
    assert record["step"] == 3 and record["config"]["caption_dropout"] == 0.1
    assert {p.name for p in (tmp_path / "a").iterdir()} >= {"transformer", "vae", "scheduler", "text_encoder.json",
                                                            "loss.jsonl", "loss.png"}
    assert not (tmp_path / "a.tmp").exists()
    other = tmp_path / "c"
    main(["--output", str(other), *TINY, "--seed", "1"])
    c = HunyuanVideoTransformer3DModel.from_pretrained(other, subfolder="transformer")
    assert not all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), c.state_dict().values()))
