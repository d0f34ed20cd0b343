import pytest
import torch

from fastvideo_grpo.config import ConfigError, RewardConfig
from fastvideo_grpo.rewards import REGISTRY, RewardError, RewardModel, build_scorer, check_reward_config
from fastvideo_grpo.rewards.pairwise import (PairwiseConfig, draw_pairs, groups_of, pairwise_score,
                                             take_whole_groups, win_rates)


def test_win_rates_by_hand():
    # 3 samples: 0 beats 1, 1 and 2 tie, 2 beats 0.
    # 0: 1 + 0 over 2 = 0.5; 1: 0 + 0.5 over 2 = 0.25; 2: 0.5 + 1 over 2 = 0.75.
    rates = win_rates(3, [(0, 1), (1, 2), (0, 2)], torch.tensor([1.0, 0.5, 0.0]))
    assert rates.tolist() == [0.5, 0.25, 0.75]
    # Only (0, 1) and (0, 2) judged, 0 winning one and tying one: 0: 1.5 / 2; 1: 0 / 1; 2: 0.5 / 1.
    assert win_rates(3, [(0, 1), (0, 2)], torch.tensor([1.0, 0.5])).tolist() == [0.75, 0.0, 0.5]
    with pytest.raises(ValueError, match=r"samples \[2\] of 3 are in no pair"):
        win_rates(3, [(0, 1)], torch.tensor([1.0]))


def test_draw_pairs_all_or_a_seeded_cover():
    assert draw_pairs(4, 0) == [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]
    for count, k in ((5, 3), (5, 4), (6, 3), (6, 15), (7, 10)):
        pairs = draw_pairs(count, k, torch.Generator().manual_seed(count * k))
        assert len(pairs) == len(set(pairs)) == k
        assert all(i < j for i, j in pairs)
        assert {i for pair in pairs for i in pair} == set(range(count))  # every sample is judged
    # The same seed draws the same pairs; another seed (almost surely) others.
    draws = {tuple(draw_pairs(8, 6, torch.Generator().manual_seed(seed))) for seed in (1, 1, 2, 3)}
    assert len(draws) == 3


def test_groups_are_the_samples_of_a_prompt_and_must_be_whole():
    assert groups_of(["a", "b", "a", "b"], 2) == [[0, 2], [1, 3]]
    assert groups_of(["a", "b", "a", "a", "b", "a"], 2) == [[0, 2], [3, 5], [1, 4]]  # a prompt's groups in order
    with pytest.raises(ValueError, match=r"prompt 'b' has 1 samples in this call, not a multiple of "
                                         r"reward.group_size=2"):
        groups_of(["a", "a", "b"], 2)


def test_take_whole_groups_holds_back_the_rest():
    # (client, prompt, n) in arrival order, groups of 2 per (client, prompt).
    items = [(0, "a", 0), (1, "a", 0), (0, "a", 1), (0, "b", 0), (1, "a", 1), (0, "a", 2)]
    ready, held = take_whole_groups(items, lambda item: item[:2], 2)
    assert ready == [(0, "a", 0), (1, "a", 0), (0, "a", 1), (1, "a", 1)]
    assert held == [(0, "b", 0), (0, "a", 2)]


def test_pairwise_score_is_the_win_rate_in_each_group():
    # The "judge" prefers the brighter video; groups of 3 interleaved with another prompt.
    videos = torch.tensor([10, 200, 30, 100, 20, 50], dtype=torch.uint8).view(6, 1, 1, 1, 1).expand(6, 2, 4, 4, 3)
    prompts = ["a", "b", "a", "b", "a", "b"]
    seen = []

    def brighter(videos, prompts, pairs):
        seen.append(pairs)
        mean = videos.float().mean(dim=(1, 2, 3, 4))
        return torch.tensor([1.0 if mean[i] > mean[j] else 0.0 if mean[i] < mean[j] else 0.5 for i, j in pairs])

    rates = pairwise_score("p", brighter, 3, 0)(videos, prompts)["p"]
    # a: 10, 30, 20 -> 0, 1, 0.5; b: 200, 100, 50 -> 1, 0.5, 0.
    assert rates.tolist() == [0.0, 1.0, 1.0, 0.5, 0.5, 0.0]
    assert seen == [[(0, 2), (0, 4), (2, 4), (1, 3), (1, 5), (3, 5)]]  # one call for the batch

    # Random pairs: seeded by the prompt and the videos, so a rescoring draws the same ones.
    score = pairwise_score("p", brighter, 3, 2)
    first = score(videos, prompts)["p"]
    torch.testing.assert_close(score(videos, prompts)["p"], first)
    assert seen[1] == seen[2] and len(seen[1]) == 4


def test_a_pairwise_reward_needs_group_size_and_whole_groups(monkeypatch):
    from dataclasses import dataclass

    @dataclass(kw_only=True)
    class BrightConfig(PairwiseConfig):
        offset: float = 0.0

    def build(cfg, section):
        return pairwise_score("bright_wins", lambda v, p, pairs: torch.ones(len(pairs)), cfg.group_size,
                              section.pairs_per_group)

    monkeypatch.setitem(REGISTRY, "bright_wins", RewardModel("bright_wins", ("bright_wins",), build, BrightConfig))
    with pytest.raises(ConfigError, match=r"^reward.group_size: 0 is invalid; expected the samples per group "
                                          r"\(sampling.group_size\), >= 2: reward.models.bright_wins compares"):
        check_reward_config(RewardConfig(weights={"bright_wins": 1.0}))
    with pytest.raises(ConfigError, match=r"^reward.models.bright_wins.pairs_per_group: 1 is invalid; expected 0 "
                                          r"\(all 6 pairs\) or a count in \[2, 6\] for groups of 4"):
        check_reward_config(RewardConfig(weights={"bright_wins": 1.0}, group_size=4,
                                         models={"bright_wins": {"pairs_per_group": 1}}))
    scorer = build_scorer(RewardConfig(weights={"bright_wins": 1.0, "color": 1.0}, group_size=2))
    assert scorer.group_size == 2
    assert build_scorer(RewardConfig(weights={"color": 1.0}, group_size=2)).group_size == 0
    videos = torch.zeros(3, 1, 4, 4, 3, dtype=torch.uint8)
    # First of each pair always wins: 0 beats 1.
    assert scorer(videos[:2], ["a red car"] * 2)["bright_wins"].tolist() == [1.0, 0.0]
    with pytest.raises(RewardError, match=r"reward 'bright_wins' failed on a batch: ValueError: prompt 'a blue car' "
                                          r"has 1 samples in this call"):
        scorer(videos, ["a red car", "a red car", "a blue car"])


@pytest.mark.parametrize("override,key", [
    ("sampling.rollout_batch_size=3", "sampling.rollout_batch_size"),  # inline: a call must hold whole groups
    ("eval.every=5", "eval.every"),
])
def test_a_pairwise_reward_refuses_calls_without_whole_groups(override, key):
    from conftest import ROOT
    from fastvideo_grpo.config import ConfigError, load_config
    from fastvideo_grpo.rewards import check_pairwise_use

    cfg = load_config(ROOT / "assets/configs/tiny_t2v.yaml", [
        "reward.mode=inline", "reward.weights={vlm_pairwise: 1.0}",
        "reward.models.vlm_pairwise={url: 'http://127.0.0.1:9/v1', model: judge}", override])
    with pytest.raises(ConfigError, match=key):
        check_pairwise_use(cfg)
    check_pairwise_use(load_config(ROOT / "assets/configs/tiny_t2v.yaml"))  # no pairwise reward: nothing to check
