"""Multi-process tests: torchrun --nproc_per_node=2 with gloo, compared to one process."""

import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import ROOT
from helpers import read_jsonl

DIST = ROOT / "tests" / "dist"
# adam_eps: weights whose true gradient is 0 (a key bias under softmax) get rounding-level
# gradients that Adam with eps=1e-8 turns into lr-sized steps of arbitrary sign.
COMMON = ["train.adam_eps=1e-4", "parallel.activation_checkpointing=true", "train.iterations=3", "train.sample_every=0", "train.progress_bar=false",
          "train.gradient_accumulation_steps=1000", "sampling.group_size=4", "sampling.rollout_batch_size=4",
          "sampling.decode_batch_size=4"]


def run(args, nproc=None, timeout=300):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launcher = [sys.executable]
    if nproc:
        launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    result = subprocess.run(launcher + [str(a) for a in args], capture_output=True, text=True, env=env,
                            cwd=ROOT, timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result


def metrics(out):
    return read_jsonl(out / "metrics.jsonl")


@pytest.fixture(scope="module")
def single_rank_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("one_rank")
    run([DIST / "train_run.py", *COMMON, "train.prompts_per_iteration=2", f"train.output_dir={out}"])
    return out


def assert_same_training(one, many):
    a, b = torch.load(one / "final_params.pt"), torch.load(many / "final_params.pt")
    assert a.keys() == b.keys()
    diff = sum(((a[k] - b[k]) ** 2).sum() for k in a).sqrt()
    norm = sum((a[k] ** 2).sum() for k in a).sqrt()
    assert diff / norm < 1e-5
    # Per tensor, reduction order differences of ~1e-7 pass through three Adam steps; the
    # sharded forward differs from the unsharded one by ~5e-7 in the latents, which can flip
    # a decoded pixel's rounding and so move a reward by ~1e-6.
    for k in a:
        assert (a[k] - b[k]).abs().max() <= 2e-4 * a[k].abs().max() + 1e-7, k
    for r1, r2 in zip(metrics(one), metrics(many), strict=True):
        for key in ("reward_mean", "grad_norm", "ratio_mean"):
            assert r2[key] == pytest.approx(r1[key], rel=1e-5), key
        assert abs(r2["loss"] - r1["loss"]) < 1e-6
        assert r2["ratio_dev_first_update"] == 0.0


def test_fsdp_two_ranks_match_one_rank(single_rank_run, tmp_path):
    run([DIST / "train_run.py", *COMMON, "train.prompts_per_iteration=1", f"train.output_dir={tmp_path}"], nproc=2)
    assert_same_training(single_rank_run, tmp_path)


def test_two_ranks_scoring_in_one_reward_process_match_one_rank(single_rank_run, tmp_path):
    """Local rank 0 starts the node's reward process; both ranks send it their videos."""
    run([DIST / "train_run.py", *COMMON, "train.prompts_per_iteration=1", "reward.mode=process",
         f"train.output_dir={tmp_path}"], nproc=2)
    assert_same_training(single_rank_run, tmp_path)


def test_hsdp_two_replicas_match_one_rank(single_rank_run, tmp_path):
    run([DIST / "train_run.py", *COMMON, "train.prompts_per_iteration=1", "parallel.dp_replicate=2",
         f"train.output_dir={tmp_path}"], nproc=2)
    assert_same_training(single_rank_run, tmp_path)


def test_sequence_parallel_training_matches_one_rank(single_rank_run, tmp_path):
    run([DIST / "train_run.py", *COMMON, "train.prompts_per_iteration=2", "parallel.sp_size=2",
         f"train.output_dir={tmp_path}"], nproc=2)
    assert_same_training(single_rank_run, tmp_path)


def test_sequence_parallel_forward_gradients_and_rollout(tmp_path):
    report_path = tmp_path / "sp.json"
    run([DIST / "sp_equivalence.py", report_path], nproc=2)
    report = json.loads(report_path.read_text())
    assert report["forward_rel"] <= 1e-5
    assert report["grad_rel"] <= 1e-5 and report["grad_rel_global"] <= 1e-5
    assert report["rollout_latents_rel"] <= 1e-5 and report["rollout_log_probs_abs"] <= 1e-5
    assert report["sp_ranks_identical"]


def test_data_parallel_ranks_draw_different_prompts_and_noise(tmp_path):
    path = tmp_path / "layout.pt"
    run([DIST / "data_layout.py", path, *COMMON, "train.prompts_per_iteration=2",
         f"train.output_dir={tmp_path / 'run'}"], nproc=2)
    layout = torch.load(path)
    for iteration in range(2):
        rank0, rank1 = layout["prompts"][0][iteration], layout["prompts"][1][iteration]
        assert len(rank0) == 2 and not set(rank0) & set(rank1)
        for rank in range(2):
            noise = layout["noise"][rank][iteration]  # [B, *latent], groups of 4
            for g in range(2):
                group = noise[4 * g:4 * g + 4]
                assert all(torch.equal(group[0], m) for m in group[1:])
            assert not torch.equal(noise[0], noise[4])
        assert not torch.equal(layout["noise"][0][iteration][0], layout["noise"][1][iteration][0])


def test_heads_not_divisible_by_sp_is_a_config_error(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(DIST / "train_run.py"), *COMMON, "model.tiny_heads=3", "parallel.sp_size=2",
         f"train.output_dir={tmp_path}"], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert result.returncode != 0
    # A config error, before any model is built.
    assert "parallel.sp_size: 2 is invalid; expected a divisor of the model's 3 attention heads" in result.stderr


@pytest.mark.parametrize("nproc", [None, 2])
def test_optimizer_steps_per_iteration_do_not_depend_on_the_rank_count(tmp_path, nproc):
    """Fixed per-rank batch (1 prompt x G=4), 3 samples per optimizer step: ceil(4 / 3) steps
    on one rank and on two. Batch-mode advantages use the statistics of all ranks' samples."""
    import math

    import numpy as np

    path = tmp_path / "plan.pt"
    run([DIST / "update_plan.py", path, *COMMON, "train.prompts_per_iteration=1",
         "train.gradient_accumulation_steps=3", f"train.output_dir={tmp_path / 'run'}"], nproc=nproc)
    report = torch.load(path)
    assert report["optimizer_steps"] == math.ceil(4 / 3)
    ranks = nproc or 1
    rewards = np.concatenate([np.arange(4) * (rank + 1) ** 2 for rank in range(ranks)]).astype(np.float64)
    expected = np.clip((rewards - rewards.mean()) / (rewards.std(ddof=1) + 1e-8), -5, 5)
    got = torch.cat(report["advantages"]).double().numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-6)
