"""The planner beyond the steady state: the setup peak, a node's host memory while it loads,
the reward model's GPU, the itemised reserve and the rollout's gathered network."""

import json
import subprocess
import sys

import pytest

from conftest import ROOT
from fastvideo_grpo.config import load_config
from fastvideo_grpo.planning import memory as planned_memory
from fastvideo_grpo.planning import plan as planner
from fastvideo_grpo.planning.cluster import Cluster
from fastvideo_grpo.planning.plan import plan
from fastvideo_grpo.planning.report import render
from helpers import tiny_policy

TINY = ROOT / "assets/configs/tiny_t2v.yaml"
GB = 2**30


def tiny_parameters() -> int:
    return sum(p.numel() for p in tiny_policy(load_config(TINY)).transformer.parameters())


@pytest.fixture(scope="module")
def eight_ranks():
    return plan(TINY, [], Cluster(1, 8, 80, reserve_gb=0), knobs=False)


def test_a_setup_peak_over_the_memory_does_not_fit_although_training_does(eight_ranks, monkeypatch):
    """A network FSDP shards as one unit (a family declaring no blocks) is moved whole, in
    fp32, to the device: setup then needs more than the steady state."""
    whole = 4 * eight_ranks["parameters"]
    steady = max(sum(eight_ranks["memory_by_phase_gb"][phase].values()) for phase in ("train", "decode"))
    monkeypatch.setattr(planner, "largest_unit_bytes", lambda policy: 40 * whole)
    result = plan(TINY, [], Cluster(1, 8, steady + 20 * whole / GB, reserve_gb=0), knobs=False)
    assert result["memory_by_phase_gb"]["setup"]["loading"] == pytest.approx(40 * whole / GB, abs=1e-6)
    assert result["setup_peak_gb"] > result["gpu_memory_gb"] > steady
    assert result["peak_phase"] == "setup" and not result["fits"] and result["fits_by"]["gpu"] is False
    assert "does NOT fit (GPU memory)" in render(result)
    assert any("it does not fit: the run would not start" in note for note in result["notes"])


def test_setup_holds_the_shards_and_the_largest_unit_whole(eight_ranks):
    """1 node x 8 ranks: the policy's fp32 shards (1/8 each) and the largest FSDP unit (a
    block, or the root's own weights) whole in fp32, not the whole network."""
    from fastvideo_grpo.planning.memory import largest_unit_bytes

    policy = tiny_policy(load_config(TINY))
    blocks = [sum(p.numel() for p in b.parameters()) for b in policy.blocks]
    root = eight_ranks["parameters"] - sum(blocks)
    assert largest_unit_bytes(policy) == 4 * max(root, *blocks)
    setup = eight_ranks["memory_by_phase_gb"]["setup"]
    assert setup["loading"] == pytest.approx(4 * max(root, *blocks) / GB, abs=1e-6)
    assert setup["sharded_parameters"] == pytest.approx(eight_ranks["memory_by_phase_gb"]["train"]["sharded_parameters"])
    assert setup["loading"] < 4 * eight_ranks["parameters"] / GB
    assert eight_ranks["setup_peak_gb"] == pytest.approx(sum(setup.values()), abs=1e-5)


def test_every_rank_loading_at_once_overflows_the_hosts_memory():
    """parallel.loaders_per_node=0: each of a node's 8 ranks holds the fp32 network at once;
    1: one at a time. The host limit sits between the two."""
    network = 4 * tiny_parameters()
    cluster = Cluster(1, 8, 80, reserve_gb=0, host_memory_gb=4 * network / GB)
    turns = plan(TINY, ["parallel.loaders_per_node=1"], cluster, knobs=False)
    at_once = plan(TINY, ["parallel.loaders_per_node=0"], cluster, knobs=False)
    assert turns["host_per_node_gb"]["loading"] == pytest.approx(network / GB, abs=1e-6)
    assert at_once["host_per_node_gb"]["loading"] == pytest.approx(8 * network / GB, abs=1e-6)
    assert turns["fits"] and not at_once["fits"]
    assert at_once["fits_by"] == {"gpu": True, "host": False, "reward_gpu": True}
    assert "does NOT fit (host memory)" in render(at_once)


def test_a_reward_model_on_a_training_ranks_gpu_is_flagged_and_counted():
    videoalign = ["reward.weights={videoalign_vq: 1.0}", "reward.mode=process", "reward.device=cuda:1"]
    shared = plan(TINY, videoalign, Cluster(1, 2, 80, reserve_gb=0), knobs=False)
    own = plan(TINY, videoalign, Cluster(1, 2, 80, reserve_gb=0, ranks_per_node=1), knobs=False)
    gb = planned_memory.REWARD_GPU_GB["videoalign"]
    assert shared["reward"]["shared_with_training_rank"] and shared["reward"]["gpu_gb"] == gb
    for phase in ("setup", "train", "decode"):
        assert shared["memory_by_phase_gb"][phase]["reward_model"] == gb
        assert "reward_model" not in own["memory_by_phase_gb"][phase]
    assert any("is local rank 1's GPU" in note and "straggler" in note for note in shared["notes"])
    assert own["world"]["ranks_per_node"] == 1 and own["world"]["world_size"] == 1
    assert not own["reward"]["shared_with_training_rank"] and own["fits_by"]["reward_gpu"]
    assert any("GPU 1 of each node to itself" in note for note in own["notes"])
    # A reward GPU of its own that the models do not fit.
    small = plan(TINY, videoalign, Cluster(1, 2, gb / 2, reserve_gb=0, ranks_per_node=1), knobs=False)
    assert small["fits_by"]["reward_gpu"] is False and not small["fits"]
    with pytest.raises(Exception, match="reward.device: 'cuda:1' is not a GPU of a node of 1"):
        plan(TINY, videoalign, Cluster(1, 1, 80), knobs=False)


def test_the_reserve_is_itemised():
    """No --reserve-gb: the CUDA context, 0.5 GB per NCCL communicator (2 ranks with sp 2:
    the default group, FSDP's and the sp group) and 10% of each phase's tensors."""
    result = plan(TINY, ["parallel.sp_size=2"], Cluster(1, 2, 80), knobs=False)
    for phase, memory in result["memory_by_phase_gb"].items():
        tensors = sum(v for name, v in memory.items() if name not in planned_memory.ASSUMED)
        assert memory["cuda_context"] == 0.75 and memory["nccl_buffers"] == 1.5, phase
        assert memory["fragmentation"] == pytest.approx(0.1 * tensors, abs=1e-5), phase
    assert result["reserve_items_gb"] == {k: result["memory_gb"][k]
                                          for k in ("cuda_context", "nccl_buffers", "fragmentation")}
    assert result["reserve_gb"] == pytest.approx(sum(result["reserve_items_gb"].values()), abs=1e-5)


def test_the_plan_says_whether_the_rollout_holds_the_network_gathered():
    """auto: gathered when it takes at most half the memory free at the rollout's start, and
    then counted in the rollout/decode phase (the tiny network in fp32)."""
    network = 4 * tiny_parameters()
    roomy = plan(TINY, [], Cluster(1, 2, 80, reserve_gb=0), knobs=False)
    assert roomy["rollout_reshard"] == {"setting": "auto", "keeps_gathered": True,
                                        "gathered_gb": pytest.approx(network / GB, abs=1e-6)}
    assert roomy["memory_by_phase_gb"]["decode"]["rollout_gathered"] == pytest.approx(network / GB, abs=1e-6)
    resting = sum(v for k, v in roomy["memory_by_phase_gb"]["decode"].items()
                  if k not in ("vae_decode", "rollout_gathered"))
    tight = plan(TINY, [], Cluster(1, 2, resting + 1.5 * network / GB, reserve_gb=0), knobs=False)
    assert tight["rollout_reshard"]["keeps_gathered"] is False
    assert "rollout_gathered" not in tight["memory_by_phase_gb"]["decode"]
    always = plan(TINY, ["parallel.rollout_reshard=always"], Cluster(1, 2, 80, reserve_gb=0), knobs=False)
    assert always["rollout_reshard"]["keeps_gathered"] is False


def test_the_cli_reports_the_setup_and_host_peaks():
    result = subprocess.run(
        [sys.executable, "-m", "fastvideo_grpo.plan", "--config", str(TINY), "--gpus-per-node", "2",
         "--ranks-per-node", "1", "--host-memory-gb", "512", "--json"],
        capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout)
    assert out["world"]["world_size"] == 1 and out["host_memory_gb"] == 512
    assert out["setup_peak_gb"] == pytest.approx(sum(out["memory_by_phase_gb"]["setup"].values()), abs=1e-5)
    assert out["host_peak_per_node_gb"] == max(out["host_per_node_gb"].values())
