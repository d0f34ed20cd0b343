"""DiffusionNFT: the loss against an independent computation, the old policy's decay and
update (a full copy, or with LoRA a second adapter on the same network), the config rule,
bit-exact resume of a run, and export of a LoRA run. That every family trains with it:
test_families.py."""

import dataclasses

import numpy as np
import pytest
import torch

from conftest import ROOT
from fastvideo_grpo.algorithms.learner import build_old, build_reference
from fastvideo_grpo.algorithms.nft import nft_loss, return_decay, update_old
from fastvideo_grpo.config import ConfigError, load_config
from fastvideo_grpo.models import model_family
from fastvideo_grpo.models.lora import OLD, apply_lora
from fastvideo_grpo.training.trainer import train
from helpers import read_jsonl, tiny_conditioning, tiny_policy


def reference_loss(v, v_old, x_t, x0, a, sigma, beta, clip):
    """The reference's per-sample loss in float64 numpy, written from its formulas."""
    v, v_old, x_t, x0 = (np.asarray(t, dtype=np.float64) for t in (v, v_old, x_t, x0))
    pos = x_t - sigma * (beta * v + (1 - beta) * v_old)
    neg = x_t - sigma * ((1 + beta) * v_old - beta * v)
    out = []
    for i in range(len(x0)):
        w_pos = max(np.abs(pos[i] - x0[i]).mean(), 1e-5)
        w_neg = max(np.abs(neg[i] - x0[i]).mean(), 1e-5)
        r = min(max(min(max(a[i], -clip), clip) / clip / 2 + 0.5, 0.0), 1.0)
        out.append(clip * (r * ((pos[i] - x0[i]) ** 2 / w_pos).mean()
                           + (1 - r) * ((neg[i] - x0[i]) ** 2 / w_neg).mean()) / beta)
    return np.array(out)


@pytest.mark.parametrize("beta", [1.0, 0.1])
def test_the_loss_equals_the_reference_formulas(beta):
    gen = torch.Generator().manual_seed(0)
    v, v_old, x0, eps = (torch.randn(4, 3, 5, generator=gen, dtype=torch.float64) for _ in range(4))
    sigma = 0.7
    x_t = (1 - sigma) * x0 + sigma * eps
    a = torch.tensor([-9.0, -1.0, 0.5, 3.0], dtype=torch.float64)  # the first beyond adv_clip_max
    got = nft_loss(v, v_old, x_t, x0, a, lambda out: x_t - sigma * out, beta, adv_clip_max=5.0)
    np.testing.assert_allclose(got.numpy(), reference_loss(v, v_old, x_t, x0, a.numpy(), sigma, beta, 5.0), rtol=1e-12)


def test_the_loss_pulls_toward_good_samples_and_away_from_bad():
    """With r = 1 the gradient moves v+ toward x0; with r = 0 the negative toward x0, which
    moves v the other way (v- = 2 v_old - v at beta 1)."""
    x0, x_t, v_old = torch.zeros(1, 4), torch.ones(1, 4), torch.zeros(1, 4)
    for advantage, sign in ((5.0, 1), (-5.0, -1)):
        v = torch.zeros(1, 4, requires_grad=True)
        nft_loss(v, v_old, x_t, x0, torch.tensor([advantage]), lambda out: x_t - out, 1.0, 5.0).sum().backward()
        assert (torch.sign(-v.grad) == sign).all()  # descent direction: v grows toward x_t - x0 = 1, or away


def test_decay_schedules_are_the_references():
    assert [return_decay(s, 0) for s in (0, 10, 1000)] == [0.0, 0.0, 0.0]
    assert [return_decay(s, 1) for s in (0, 100, 499, 2000)] == [0.0, 0.1, pytest.approx(0.499), 0.5]
    assert [return_decay(s, 2) for s in (0, 74, 75, 175, 10_000)] == [0.0, 0.0, 0.0, pytest.approx(0.75), 0.999]


def test_the_old_policy_moves_toward_the_policy_by_one_minus_decay(tiny_cfg):
    policy = tiny_policy(tiny_cfg)
    old = build_reference(policy)
    before = {n: p.detach().clone() for n, p in old.transformer.named_parameters()}
    with torch.no_grad():
        for p in policy.transformer.parameters():
            p.add_(1.0)
    decay = update_old(old, policy, optimizer_steps=300, decay_type=1)
    assert decay == pytest.approx(0.3)
    current = dict(policy.transformer.named_parameters())
    for name, p in old.transformer.named_parameters():
        torch.testing.assert_close(p, 0.3 * before[name] + 0.7 * current[name])


def lora_policy(cfg, rank=4):
    """The tiny policy with its LoRA adapter, and the model config that asks for it."""
    model = dataclasses.replace(cfg.model, lora_rank=rank, lora_alpha=rank)
    policy = tiny_policy(cfg)
    apply_lora(policy.transformer, rank, rank, model_family(cfg.model).lora_targets)
    return policy, model


def stored_elements(*networks) -> int:
    """Elements of the distinct parameter storages of `networks` together."""
    storages = {p.untyped_storage().data_ptr(): p.numel() for n in networks for p in n.parameters()}
    return sum(storages.values())


def test_with_lora_the_old_policy_is_a_second_adapter_not_a_copy_of_the_base(tiny_cfg):
    policy, model = lora_policy(tiny_cfg)
    alone = stored_elements(policy.transformer)
    adapter = sum(p.numel() for p in policy.transformer.parameters() if p.requires_grad)
    trained = [n for n, p in policy.transformer.named_parameters() if p.requires_grad]
    old = build_old(policy, model)
    assert old.transformer is policy.transformer
    # One base, two adapters: the old policy costs one adapter (a few % here), a copy the whole network.
    assert stored_elements(policy.transformer, old.transformer) == alone + adapter
    assert stored_elements(policy.transformer, build_reference(policy).transformer) == 2 * (alone + adapter)
    assert adapter < 0.1 * alone
    # Only the trained adapter trains, and it stays the active one.
    assert [n for n, p in policy.transformer.named_parameters() if p.requires_grad] == trained
    assert all(f".{OLD}." not in n for n in trained)


def test_the_old_adapter_predicts_with_its_own_weights_and_follows_the_policy(tiny_cfg):
    policy, model = lora_policy(tiny_cfg)
    old = build_old(policy, model)
    s = tiny_cfg.sampling
    x = torch.randn(2, *policy.latent_shape(s.num_frames, s.height, s.width), generator=torch.Generator().manual_seed(0))
    cond = tiny_conditioning(tiny_cfg, ["a red ball", "a blue cube"], 1)
    initial = policy.predict(x, 0.5, cond)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # the zero-initialised B matrices take values: the policy moves, the old one not
        for name, p in policy.transformer.named_parameters():
            if p.requires_grad:
                p.add_(0.3 * torch.randn(p.shape, generator=gen))
    flags = {n: p.requires_grad for n, p in policy.transformer.named_parameters()}
    moved = policy.predict(x, 0.5, cond)
    assert (moved - initial).abs().max() > 1e-3
    assert torch.equal(old.predict(x, 0.5, cond), initial)
    assert torch.equal(policy.predict(x, 0.5, cond), moved)  # the trained adapter is active again
    assert {n: p.requires_grad for n, p in policy.transformer.named_parameters()} == flags

    before = {n: p.detach().clone() for n, p in policy.transformer.named_parameters() if f".{OLD}." in n}
    assert update_old(old, policy, optimizer_steps=300, decay_type=1) == pytest.approx(0.3)
    params = dict(policy.transformer.named_parameters())
    for name, value in before.items():
        torch.testing.assert_close(params[name], 0.3 * value + 0.7 * params[name.replace(f".{OLD}.", ".default.")])
    update_old(old, policy, optimizer_steps=0, decay_type=0)  # decay 0: the old policy is the policy
    torch.testing.assert_close(old.predict(x, 0.5, cond), moved, rtol=0, atol=1e-6)


def test_nft_needs_independent_initial_noise():
    with pytest.raises(ConfigError, match="sampling.shared_noise"):
        load_config(ROOT / "assets/configs/tiny_t2v.yaml", ["train.algorithm=nft"])


def nft_cfg(out, *overrides):
    return load_config(ROOT / "assets/configs/tiny_t2v.yaml", [
        f"train.output_dir={out}", "train.progress_bar=false", "reward.mode=inline", "train.sample_every=0",
        f"data.prompts_file={ROOT / 'assets/prompts/tiny.txt'}", "train.algorithm=nft", "sampling.shared_noise=false",
        "train.prompts_per_iteration=2", "nft.decay_type=1", "checkpoint.every=2", *overrides])


@pytest.mark.parametrize("lora", [(), ("model.lora_rank=4", "train.lr=1e-2")], ids=["full", "lora"])
def test_a_resumed_nft_run_is_bit_exact(tmp_path, lora):
    """With LoRA the old policy is the second adapter, checkpointed as adapter weights only."""
    straight = read_jsonl(train(nft_cfg(tmp_path / "a", "train.iterations=4", *lora)) / "metrics.jsonl")
    train(nft_cfg(tmp_path / "b", "train.iterations=2", *lora))
    resumed = read_jsonl(train(nft_cfg(tmp_path / "b", "train.iterations=4", *lora)) / "metrics.jsonl")
    assert [r["iteration"] for r in resumed] == [0, 1, 2, 3]
    for a, b in zip(straight, resumed):
        timing = ("time", "samples_per_s", "tflops_per_gpu")
        assert {k: v for k, v in a.items() if not k.startswith(timing)} == \
               {k: v for k, v in b.items() if not k.startswith(timing)}
    assert straight[-1]["transformer_forwards_rollout"] == 2 * 8 * 8  # prompts x G x N, no SDE replay
    if lora:
        assert_exports_the_trained_adapter(tmp_path / "a", tmp_path / "export")


def assert_exports_the_trained_adapter(run, out):
    """The checkpoint holds the adapters only (the trained one as the model, the old one as
    `old`, under the trained one's names); export writes the trained one."""
    from safetensors.torch import load_file

    from fastvideo_grpo.checkpoint import latest_checkpoint, load_shards, saved_keys
    from fastvideo_grpo.cli.export import export, load_trained_transformer

    checkpoint = latest_checkpoint(run)
    keys = saved_keys(checkpoint)
    model_keys = [k for k in keys if k.startswith("model.")]
    assert model_keys and all("lora_" in k and f".{OLD}." not in k for k in model_keys)
    assert sorted(k for k in keys if k.startswith("old.")) == sorted("old." + k[len("model."):] for k in model_keys)
    trained = {n: p.detach() for n, p in load_trained_transformer(checkpoint).named_parameters() if "lora_" in n}
    old = {"old": {n: torch.empty_like(p) for n, p in trained.items()}}
    load_shards(old, checkpoint)
    exported = load_file(export(checkpoint, out, adapter_only=True) / "pytorch_lora_weights.safetensors")
    assert len(exported) == len(trained) and not any(f".{OLD}." in k for k in exported)
    differ = 0
    for key, value in exported.items():
        name = key.removeprefix("transformer.").replace(".weight", ".default.weight")
        assert torch.equal(value, trained[name]), key
        differ += not torch.equal(value, old["old"][name])
    assert differ > 0  # the old adapter lags: what was exported is not it


NFT_2RANK = ("train.algorithm=nft", "sampling.shared_noise=false", "nft.decay_type=1")


def test_two_ranks_train_what_one_does_with_nft(one_rank_run, tmp_path):
    """The old policy is sharded like the policy and moves shard by shard; each rank's
    fresh training noise is drawn by sample index, so 2 data-parallel ranks equal 1; and a
    2-rank run resumes bit-exactly."""
    from helpers import COMMON, DIST, TIMING, rewound_copy, run

    one = one_rank_run(ROOT / "assets/configs/tiny_t2v.yaml", *COMMON, "train.prompts_per_iteration=2", *NFT_2RANK)
    args = [DIST / "train_run.py", *COMMON, "train.prompts_per_iteration=1", *NFT_2RANK, "checkpoint.every=2"]
    straight_run = tmp_path / "straight"
    run([*args, f"train.output_dir={straight_run}"], nproc=2)
    a, b = torch.load(one / "final_params.pt"), torch.load(straight_run / "final_params.pt")
    assert a.keys() == b.keys()
    for k in a:
        assert (a[k] - b[k]).abs().max() <= 2e-4 * a[k].abs().max() + 1e-7, k
    straight = read_jsonl(straight_run / "metrics.jsonl")
    for r1, r2 in zip(read_jsonl(one / "metrics.jsonl"), straight, strict=True):
        assert r2["reward_mean"] == pytest.approx(r1["reward_mean"], rel=1e-5)
        assert r2["loss"] == pytest.approx(r1["loss"], rel=1e-4, abs=1e-7)
        assert r2["old_decay"] == r1["old_decay"]

    # Each rank's shards of the old policy are checkpointed and loaded with the policy's: 2
    # ranks resumed after iteration 2 train exactly what 2 ranks straight through did.
    resumed = rewound_copy(straight_run, tmp_path / "resumed", 2)
    run([*args, f"train.output_dir={resumed}"], nproc=2)
    again = read_jsonl(resumed / "metrics.jsonl")
    assert [r["iteration"] for r in again] == [0, 1, 2]
    for ra, rb in zip(straight, again, strict=True):
        assert {k: v for k, v in ra.items() if not k.startswith(TIMING)} == \
               {k: v for k, v in rb.items() if not k.startswith(TIMING)}
    c = torch.load(resumed / "final_params.pt")
    assert c.keys() == b.keys() and all(torch.equal(b[k], c[k]) for k in b)

