"""Run health: the diagnostics against hand computations, the warnings on constructed
streams and on real runs that have the fault, silence on a healthy run, resume."""

import json
import math
import statistics

import pytest
import torch

from conftest import REWARD_PLUGINS, ROOT
from fastvideo_grpo.config import HealthConfig, load_config
from fastvideo_grpo.algorithms.ratio_stats import record_ratio, timestep_bucket
from fastvideo_grpo.training.health import HealthMonitor, group_diversity, record_rewards
from fastvideo_grpo.metrics import IterationStats, finish_iteration_stats
from fastvideo_grpo.parallel import World
from fastvideo_grpo.training.trainer import train
from helpers import read_jsonl

ONE = World(0, 1, torch.device("cpu"), None)


def test_group_diversity_is_the_mean_pairwise_rms_distance():
    latents = torch.tensor([[0.0, 0.0], [3.0, 4.0], [1.0, 1.0], [1.0, 1.0]])  # groups of 2
    # Group 0: |(3, 4)| / sqrt(2) = 5 / sqrt(2); group 1: identical samples, 0.
    assert math.isclose(group_diversity(latents, 2).item(), (5 / math.sqrt(2) + 0) / 2, rel_tol=1e-6)
    three = torch.tensor([[0.0], [1.0], [3.0]])
    assert math.isclose(group_diversity(three, 3).item(), (1 + 3 + 2) / 3, rel_tol=1e-6)


def test_reward_spread_and_correlation():
    a = torch.tensor([1.0, 2.0, 3.0, 5.0])
    b = torch.tensor([2.0, 4.0, 6.0, 0.0])
    stats = IterationStats()
    record_rewards(stats, {"a": a, "b": b}, {"a": 1.0, "b": 0.5}, group_size=2)
    got = stats.reduce(ONE)
    total = (a + 0.5 * b).tolist()
    expected_std = (statistics.stdev(total[:2]) + statistics.stdev(total[2:])) / 2
    assert math.isclose(got["reward_group_std"], expected_std, rel_tol=1e-6)
    assert math.isclose(got["reward_corr/a__b"], statistics.correlation(a.tolist(), b.tolist()), rel_tol=1e-6)


def test_ratio_statistics_per_third_of_the_schedule():
    assert [timestep_bucket(j, 9) for j in range(9)] == ["early"] * 3 + ["middle"] * 3 + ["late"] * 3
    stats = IterationStats()
    from fastvideo_grpo.algorithms.ratio_stats import declare_ratio_stats

    declare_ratio_stats(stats)
    record_ratio(stats, torch.tensor([1.0, 1.5]), 0, 9, clip_range=0.2)
    record_ratio(stats, torch.tensor([0.9, 1.1, 0.5]), 1, 9, clip_range=0.2)
    m = {**stats.reduce(ONE), "dropped_groups": 0}
    finish_iteration_stats(m, ONE)
    values = [1.0, 1.5, 0.9, 1.1, 0.5]
    assert math.isclose(m["ratio/early_mean"], statistics.mean(values), rel_tol=1e-9)
    assert math.isclose(m["ratio/early_std"], statistics.pstdev(values), rel_tol=1e-6)
    assert m["ratio/early_min"] == 0.5 and m["ratio/early_max"] == 1.5
    assert m["ratio/early_clip_frac"] == 2 / 5  # 1.5 and 0.5 lie outside 1 +- 0.2
    assert math.isnan(m["ratio/late_mean"]) and math.isnan(m["ratio/late_max"])  # nothing trained there


def healthy_row(i, **changes):
    row = {"iteration": i, "ratio_dev_first_update": 0.0, "zero_std_frac": 0.0, "grad_norm": 1.0, "clip_frac": 0.01,
           "nonfinite_steps": 0, "group_diversity": 1.0, "reward_mean": 0.0}
    row.update(changes)
    return row


@pytest.mark.parametrize("fault,rows,fires_at", [
    ("flat_groups", [healthy_row(i, zero_std_frac=0.8) for i in range(5)], 2),
    ("exploding_update", [healthy_row(i, grad_norm=1.0 if i < 5 else 50.0) for i in range(7)], 5),
    ("clip_saturated", [healthy_row(i, clip_frac=0.9 if i == 3 else 0.0) for i in range(5)], 3),
    ("ratio_first_update", [healthy_row(i, ratio_dev_first_update=0.01 if i >= 1 else 0.0) for i in range(3)], 1),
    ("nonfinite_steps", [healthy_row(i, nonfinite_steps=1 if i == 2 else 0) for i in range(4)], 2),
    ("reward_hacking", [healthy_row(i, group_diversity=1.0 if i < 5 else 0.1, reward_mean=i / 10) for i in range(10)],
     9),
])
def test_each_warning_fires_once_when_its_condition_starts(tmp_path, caplog, fault, rows, fires_at):
    monitor = HealthMonitor(HealthConfig(), tmp_path)
    with caplog.at_level("WARNING", logger="fastvideo_grpo.training.health"):
        started = {r["iteration"]: monitor.observe(r["iteration"], r) for r in rows}
    assert [i for i, names in started.items() if fault in names] == [fires_at]  # once per episode
    assert all(set(names) <= {fault} for names in started.values())  # nothing else fires
    assert sum(fault.split("_")[0] in m or "health" in m for m in caplog.messages) >= 1
    fired = json.loads((tmp_path / "health.json").read_text())["fired"]
    assert list(fired) == [fault] and fired[fault]["first_iteration"] == fires_at


def test_a_warning_fires_again_only_after_it_cleared(tmp_path):
    monitor = HealthMonitor(HealthConfig(), tmp_path)
    clips = [0.9, 0.9, 0.0, 0.9]
    started = [monitor.observe(i, healthy_row(i, clip_frac=c)) for i, c in enumerate(clips)]
    assert started == [["clip_saturated"], [], [], ["clip_saturated"]]
    assert monitor.fired["clip_saturated"]["episodes"] == 2 and monitor.fired["clip_saturated"]["iterations"] == 3


def test_resume_replays_the_earlier_iterations_silently(tmp_path, caplog):
    rows = [healthy_row(i, zero_std_frac=0.8 if i >= 2 else 0.0) for i in range(6)]
    with (tmp_path / "metrics.jsonl").open("w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows[:4])
    whole = HealthMonitor(HealthConfig(), tmp_path / "whole")
    (tmp_path / "whole").mkdir()
    for r in rows:
        whole.observe(r["iteration"], r)
    caplog.clear()
    with caplog.at_level("WARNING", logger="fastvideo_grpo.training.health"):
        resumed = HealthMonitor(HealthConfig(), tmp_path, start=4)
    assert not caplog.messages  # the replay logs nothing
    for r in rows[4:]:
        resumed.observe(r["iteration"], r)
    assert resumed.fired == whole.fired and resumed.fired["flat_groups"]["first_iteration"] == 4


def run_cfg(tmp_path, *overrides):
    return load_config(ROOT / "assets/configs/tiny_t2v.yaml", [
        f"train.output_dir={tmp_path / 'run'}", "train.progress_bar=false", "reward.mode=inline",
        f"data.prompts_file={ROOT / 'assets/prompts/tiny.txt'}", "train.sample_every=0", "checkpoint.every=0",
        *overrides])


@pytest.mark.parametrize("fault,overrides,knob", [
    # A reward that is the same for every sample.
    ("flat_groups", ["train.iterations=4", "reward.weights={test_constant: 1.0}", f"reward.plugins=[{REWARD_PLUGINS}]"],
     "sampling.eta"),
    # An update that grows tenfold every iteration (a learning rate large enough to explode
    # does so differently on every CPU: NaN on some, a saturated clip on others).
    ("exploding_update", ["train.iterations=5", "health.window=2"], "train.lr"),
    # The reward rises while the samples of a group converge (diversity shrinks by half an iteration).
    ("reward_hacking", ["train.iterations=5", "health.window=2", "reward.weights={test_rising: 1.0}",
                        f"reward.plugins=[{REWARD_PLUGINS}]"], "grpo.kl_weight"),
])
def test_the_right_warning_fires_within_five_iterations_of_a_faulty_run(tmp_path, monkeypatch, fault, overrides,
                                                                         knob):
    if fault == "reward_hacking":
        import fastvideo_grpo.training.trainer as trainer

        calls = []

        def converging(latents, group_size):
            calls.append(1)
            return group_diversity(latents, group_size) * 0.5 ** len(calls)

        monkeypatch.setattr(trainer, "group_diversity", converging)
    if fault == "exploding_update":
        import fastvideo_grpo.training.trainer as trainer
        from fastvideo_grpo.algorithms import grpo

        current, real_iteration, real_loss = [0], trainer.train_iteration, grpo.clipped_loss

        def tracked(iteration, *args):
            current[0] = iteration
            return real_iteration(iteration, *args)

        def growing(*args):
            loss, ratio = real_loss(*args)
            return loss * 10.0 ** current[0], ratio

        monkeypatch.setattr(trainer, "train_iteration", tracked)
        monkeypatch.setattr(grpo, "clipped_loss", growing)
    out = train(run_cfg(tmp_path, *overrides))
    fired = json.loads((out / "health.json").read_text())["fired"]
    assert fault in fired and fired[fault]["first_iteration"] < 5
    assert knob in fired[fault]["message"]


def test_a_zero_median_gradient_norm_is_no_scale_for_an_explosion(tmp_path):
    monitor = HealthMonitor(HealthConfig(window=2), tmp_path)
    fired = [monitor.observe(i, healthy_row(i, grad_norm=0.0 if i < 3 else 1.0)) for i in range(4)]
    assert fired == [[], [], [], []]


def test_a_healthy_run_fires_nothing(tmp_path):
    out = train(run_cfg(tmp_path, "train.iterations=6"))
    health = json.loads((out / "health.json").read_text())
    assert health["fired"] == {} and health["iterations"] == 6
    row = read_jsonl(out / "metrics.jsonl")[-1]
    for key in ("group_diversity", "reward_group_std", "grad_clipped_frac", "logprob_drift_first_update",
                "ratio/early_mean", "ratio/late_std", "ratio/middle_clip_frac"):
        assert key in row and math.isfinite(row[key])
