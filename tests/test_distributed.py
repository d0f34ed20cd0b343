"""Multi-process tests: torchrun --nproc_per_node=2 with gloo, compared to one process."""

import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import ROOT
from helpers import COMMON, DIST, assert_same_training, read_jsonl, run

TINY_T2V = ROOT / "assets/configs/tiny_t2v.yaml"


@pytest.fixture(scope="module")
def single_rank_run(one_rank_run):
    # The same run as test_families' FSDP comparison of hunyuan_video: made once per session.
    return one_rank_run(TINY_T2V, *COMMON, "train.prompts_per_iteration=2")


def test_two_ranks_scoring_in_one_reward_process_match_one_rank(single_rank_run, tmp_path):
    """Local rank 0 starts the node's reward process; both ranks send it their videos."""
    run([DIST / "train_run.py", *COMMON, "train.prompts_per_iteration=1", "reward.mode=process",
         f"train.output_dir={tmp_path}"], nproc=2)
    assert_same_training(single_rank_run, tmp_path)


def test_hsdp_two_replicas_match_one_rank(single_rank_run, tmp_path):
    run([DIST / "train_run.py", *COMMON, "train.prompts_per_iteration=1", "parallel.dp_replicate=2",
         f"train.output_dir={tmp_path}"], nproc=2)
    assert_same_training(single_rank_run, tmp_path)


@pytest.mark.parametrize("mode", ["inline", "process"])
def test_sequence_parallel_training_matches_one_rank(single_rank_run, tmp_path, mode):
    """The two sp ranks hold the same 2 prompts x G=4 samples: each decodes and scores half
    of them and they share the scores, so the run decodes and scores each video once."""
    run([DIST / "train_run.py", *COMMON, "train.prompts_per_iteration=2", "parallel.sp_size=2",
         f"reward.mode={mode}", f"train.output_dir={tmp_path}"], nproc=2)
    assert_same_training(single_rank_run, tmp_path)
    for folder in (single_rank_run, tmp_path):
        for record in read_jsonl(folder / "metrics.jsonl"):
            assert record["videos_decoded"] == record["videos_scored"] == 2 * 4


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


def test_every_process_group_gets_the_configured_timeout(tmp_path):
    """init_device_mesh builds its sub-groups with the backend's default timeout (NCCL's is
    10 minutes) unless told otherwise; each must have parallel.timeout_minutes."""
    path = tmp_path / "timeouts.json"
    run([DIST / "group_timeouts.py", path, 7], nproc=2)
    report = json.loads(path.read_text())
    for mesh in ("sp", "hsdp"):
        assert report[mesh] == {group: 7.0 for group in ("default", "dp_replicate", "dp_shard", "sp", "dp_shard_sp")}
