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


def eval_rows(scores: dict[str, list[float]]) -> list[dict]:
    """Per-sample evaluation rows (as evaluate_policy returns them), one prompt per sample."""
    count = len(next(iter(scores.values())))
    return [{"prompt_index": i, "seed": 0, "prompt": f"prompt {i}", **{k: v[i] for k, v in scores.items()}}
            for i in range(count)]


BASE = eval_rows({"shape": [0.0] * 50 + [1.0] * 50, "motion": [1.0] * 100})


def motion_falls_on(flips: int) -> list[dict]:
    """The trained `shape` rises on 20 samples; the untrained `motion` falls on `flips`."""
    return eval_rows({"shape": [1.0] * 20 + [0.0] * 30 + [1.0] * 50, "motion": [0.0] * flips + [1.0] * (100 - flips)})


# Paired differences of motion: `flips` of -1, the rest 0. Three: mean -0.03, std 0.1715,
# 95% half-width 1.96 * 0.1715 / 10 = 0.0336, upper bound +0.004 (noise). Four: mean -0.04,
# std 0.1970, half-width 0.0386, bound -0.0014 (a drop). At one-sided 95% the half-width
# shrinks by 1.645 / 1.96: three flips give -0.03 + 0.0282 = -0.002 (a drop).
@pytest.mark.parametrize("flips,confidence,fires", [(3, 0.975, False), (4, 0.975, True), (3, 0.95, True)])
def test_held_out_regression_fires_on_a_significant_paired_drop(tmp_path, flips, confidence, fires):
    monitor = HealthMonitor(HealthConfig(held_out_confidence=confidence), tmp_path, weights={"shape": 1.0})
    assert monitor.observe_eval(0, BASE) == []  # the baseline
    assert monitor.observe_eval(8, motion_falls_on(flips)) == (["held_out_regression"] if fires else [])
    if fires:
        message = json.loads((tmp_path / "health.json").read_text())["fired"]["held_out_regression"]["message"]
        assert f"not trained fell: motion 1.000 -> {1 - flips / 100:.3f} ({-flips / 100:+.3f}" in message
        assert "shape" not in message and "after 0 iterations" in message and "over 100 samples" in message
        assert "trained rewards fell" not in message and "reward hacking" in message


def test_held_out_regression_of_a_trained_reward_says_so(tmp_path):
    monitor = HealthMonitor(HealthConfig(), tmp_path, weights={"shape": 1.0, "motion": 0.5})
    monitor.observe_eval(0, BASE)
    assert monitor.observe_eval(8, motion_falls_on(10)) == ["held_out_regression"]
    message = monitor.fired["held_out_regression"]["message"]
    assert "trained rewards fell on the held-out prompts: motion 1.000 -> 0.900" in message
    assert "not trained fell" not in message


def test_held_out_regression_clears_when_the_reward_recovers_and_replays_on_resume(tmp_path):
    evaluations = {0: BASE, 4: motion_falls_on(10), 8: motion_falls_on(10), 12: motion_falls_on(0)}
    whole = HealthMonitor(HealthConfig(), tmp_path / "whole", weights={"shape": 1.0})
    (tmp_path / "whole").mkdir()
    assert [whole.observe_eval(i, rows) for i, rows in evaluations.items()] == [[], ["held_out_regression"], [], []]
    assert whole.fired["held_out_regression"]["iterations"] == 2
    # A run resumed at 8 has the evaluations up to 8 in eval_scores.jsonl (rows keyed by iteration).
    with (tmp_path / "eval_scores.jsonl").open("w") as f:
        f.writelines(json.dumps({"iteration": i, **row}) + "\n" for i, rows in evaluations.items() if i <= 8
                     for row in rows)
    resumed = HealthMonitor(HealthConfig(), tmp_path, start=8, weights={"shape": 1.0})
    assert resumed.baseline[0] == 0 and resumed.active["held_out_regression"]
    assert resumed.observe_eval(12, evaluations[12]) == []
    assert resumed.fired == whole.fired


def test_eval_at_start_is_the_baseline_and_never_the_best(tmp_path):
    out = train(run_cfg(tmp_path, "train.iterations=2", "eval.every=1", "eval.at_start=true", "eval.num_prompts=2"))
    evals = read_jsonl(out / "eval.jsonl")
    assert [r["iteration"] for r in evals] == [0, 1, 2]
    scores = read_jsonl(out / "eval_scores.jsonl")
    assert [(r["iteration"], r["prompt_index"]) for r in scores] == [(i, p) for i in range(3) for p in range(2)]
    for record in evals:  # each line of eval.jsonl is the mean of its rows
        rows = [r for r in scores if r["iteration"] == record["iteration"]]
        assert record["eval/color_mean"] == pytest.approx(statistics.mean(r["color"] for r in rows), abs=1e-6)
    assert json.loads((out / "health.json").read_text())["best_eval"]["iteration"] in (1, 2)


def test_the_untrained_evaluation_is_no_candidate_for_the_best(tmp_path):
    from fastvideo_grpo.training.early_stop import EarlyStop

    records = [{"iteration": 0, "eval/color_mean": 0.9}, {"iteration": 4, "eval/color_mean": 0.5},
               {"iteration": 8, "eval/color_mean": 0.7}]
    (tmp_path / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    monitor = HealthMonitor(HealthConfig(), tmp_path, weights={"color": 1.0})
    assert monitor.summary()["best_eval"]["iteration"] == 8
    stop = EarlyStop(run_cfg(tmp_path, "eval.every=4", "eval.early_stop_patience=1"))
    assert [stop.observe_eval(r) for r in records] == [False, True, True] and stop.best_iteration == 8
