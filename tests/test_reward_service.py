import threading
import time

import pytest
import torch

from conftest import REWARD_PLUGINS, ROOT
from fastvideo_grpo.config import RewardConfig, load_config
from fastvideo_grpo.rewards import RewardError
from fastvideo_grpo.rewards.client import RewardClient
from fastvideo_grpo.rewards.process import start_reward_process
from fastvideo_grpo.rewards.scorers import ServiceScorer


def videos_with_means(values):
    """uint8 videos [len, 2, 4, 4, 3] whose pixels all equal the given values."""
    return torch.tensor(values, dtype=torch.uint8).view(-1, 1, 1, 1, 1).expand(-1, 2, 4, 4, 3).contiguous()


@pytest.fixture
def echo_server():
    cfg = RewardConfig(weights={"test_echo": 1.0}, plugins=[REWARD_PLUGINS], max_batch=4, max_latency_ms=5,
                       timeout_s=30)
    process, address = start_reward_process(cfg)
    yield cfg, process, address
    process.kill()
    process.join()


def test_two_ranks_get_every_score_back_for_the_right_sample(echo_server):
    cfg, _, address = echo_server
    results, errors = {}, []

    def rank(r):
        try:
            client = RewardClient(address, timeout_s=30)
            handles = []
            for batch in range(4):  # several requests in flight, random server-side delays
                values = [r * 100 + batch * 10 + i for i in range(3)]
                handles.append((values, client.submit(videos_with_means(values), [f"rank {r}"] * 3)))
                time.sleep(0.005 * batch)
            results[r] = [(values, client.result(ids)["test_echo"].tolist()) for values, ids in handles]
            client.close()
        except Exception as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=rank, args=(r,)) for r in range(2)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert not errors, errors
    for r in range(2):
        for values, scores in results[r]:
            assert scores == [float(v) for v in values]


def test_killed_reward_process_is_a_clear_error_within_the_timeout(monkeypatch):
    monkeypatch.setenv("FVGRPO_TEST_SLEEP", "5")
    cfg = RewardConfig(weights={"test_sleep": 1.0}, plugins=[REWARD_PLUGINS], timeout_s=20, max_restarts=0)
    process, address = start_reward_process(cfg)
    scorer = ServiceScorer(cfg, address, process)
    ids = scorer.submit(videos_with_means([1, 2]), ["a", "b"])
    time.sleep(0.5)
    process.kill()
    start = time.monotonic()
    with pytest.raises(RewardError, match=rf"connection to the reward server .* lost: .* \(the reward process \(pid "
                                          rf"{process.pid}\) was killed by SIGKILL\); requests \[0, 1\] are lost"):
        scorer.result(ids)
    assert time.monotonic() - start < cfg.timeout_s
    scorer.close()


def test_a_restart_resends_the_pending_requests(monkeypatch):
    monkeypatch.setenv("FVGRPO_TEST_SLEEP", "0.5")
    cfg = RewardConfig(weights={"test_sleep": 1.0}, plugins=[REWARD_PLUGINS], timeout_s=60, max_restarts=1)
    process, address = start_reward_process(cfg)
    scorer = ServiceScorer(cfg, address, process)
    ids = scorer.submit(videos_with_means([7, 9]), ["a", "b"])
    process.kill()
    assert scorer.result(ids)["test_sleep"].tolist() == [7.0, 9.0]
    assert scorer.client.restarts == 1
    scorer.close()


def test_timeout_names_the_requests(monkeypatch):
    monkeypatch.setenv("FVGRPO_TEST_SLEEP", "3")
    cfg = RewardConfig(weights={"test_sleep": 1.0}, plugins=[REWARD_PLUGINS], timeout_s=0.5)
    process, address = start_reward_process(RewardConfig(weights={"test_sleep": 1.0}, plugins=[REWARD_PLUGINS],
                                                         timeout_s=60))
    scorer = ServiceScorer(cfg, address, process)
    with pytest.raises(RewardError, match=r"requests \[0\] got no reply within reward.timeout_s=0.5s"):
        scorer.result(scorer.submit(videos_with_means([1]), ["a"]))
    scorer.close()


def test_a_failing_reward_is_named():
    cfg = RewardConfig(weights={"test_echo": 1.0, "test_fail": 1.0}, plugins=[REWARD_PLUGINS], timeout_s=30)
    process, address = start_reward_process(cfg)
    scorer = ServiceScorer(cfg, address, process)
    with pytest.raises(RewardError, match=r"request 0: reward 'test_fail' failed on requests \[0\].*always fails"):
        scorer.result(scorer.submit(videos_with_means([1]), ["a"]))
    scorer.close()


def first_iteration_per_mode(overrides: list[str]) -> dict[str, dict]:
    """Iteration 0's metrics of the tiny config with these overrides, scored in-line and by a reward process."""
    from fastvideo_grpo.training.trainer import setup, train_iteration

    rows = {}
    for mode in ("inline", "process"):
        cfg = load_config(ROOT / "assets/configs/tiny_t2v.yaml", [*overrides, f"reward.mode={mode}"])
        c = setup(cfg)
        rows[mode] = train_iteration(0, c, cfg)
        c.scorer.close()
    return rows


def test_process_mode_scores_equal_inline_and_overlap_with_rollout(tmp_path, monkeypatch):
    from fastvideo_grpo.training.trainer import setup, train_iteration

    base = ["sampling.group_size=2", "sampling.rollout_batch_size=2", "train.sample_every=0",
            "train.progress_bar=false", "train.prompts_per_iteration=4", f"train.output_dir={tmp_path}"]
    rows = first_iteration_per_mode(base)
    assert rows["process"]["reward/color"] == rows["inline"]["reward/color"]

    # A slow reward: one call per rollout batch of 2. Inline, rollout and reward add up;
    # with the reward process, all but the last batch's scoring hide behind the rollout.
    timings = {}
    for mode in ("inline", "process"):
        cfg = load_config(ROOT / "assets/configs/tiny_t2v.yaml",
                          base + [f"reward.mode={mode}", "reward.weights={test_sleep: 1.0}", "reward.max_batch=2",
                                  f"reward.plugins=[{REWARD_PLUGINS}]"])
        c = setup(cfg)
        train_iteration(0, c, cfg)  # warm-up
        rollout_only = train_iteration(1, c, cfg)["time_rollout"]
        monkeypatch.setenv("FVGRPO_TEST_SLEEP", str(rollout_only / 4))
        if mode == "process":  # the reward process read the variable when it started
            c.scorer.close()
            c = setup(cfg)
        metrics = train_iteration(2, c, cfg)
        timings[mode] = metrics["time_rollout"] + metrics["time_decode"] + metrics["time_reward"]
        c.scorer.close()
    assert timings["process"] < 0.85 * timings["inline"], timings


def test_reward_process_gets_each_decode_batch_as_decoded(tmp_path, monkeypatch):
    """With a reward process each decode batch is sent as soon as it is decoded; in-line,
    each rollout batch is scored in one call. The iteration's numbers are the same."""
    from fastvideo_grpo.rewards.scorers import InlineScorer

    sizes = {}
    for cls in (InlineScorer, ServiceScorer):
        def record(self, videos, prompts, submit=cls.submit, name=cls.__name__):
            sizes.setdefault(name, []).append(len(videos))
            return submit(self, videos, prompts)
        monkeypatch.setattr(cls, "submit", record)
    base = ["sampling.group_size=2", "sampling.rollout_batch_size=4", "sampling.decode_batch_size=1",
            "train.sample_every=0", "train.progress_bar=false", "train.prompts_per_iteration=4",
            f"train.output_dir={tmp_path}"]
    rows = first_iteration_per_mode(base)
    assert sizes == {"InlineScorer": [4, 4], "ServiceScorer": [1] * 8}
    timing = ("time_", "samples_per_s", "tflops_per_gpu", "mfu", "memory")  # wall-clock rates
    # repr: bit for bit, and a NaN statistic (no late ratio yet) equals itself.
    inline, process = ({k: repr(v) for k, v in row.items() if not k.startswith(timing)} for row in rows.values())
    assert "reward/color" in inline and "loss" in inline
    assert process == inline
