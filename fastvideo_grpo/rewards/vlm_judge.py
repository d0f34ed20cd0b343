"""VLM judges: a vision-language model behind an OpenAI-compatible chat-completions endpoint
(`vllm serve`, SGLang, a hosted API) rates videos against their captions.

`vlm_judge` (pointwise) sends each video's `frames` frames (evenly spaced from first to
last, longest side `image_size`) as base64 image parts, then the template's text with the
caption, and parses one number from the answer, divided by `scale`. `vlm_pairwise` sends
two videos of a group (the first's frames, then the second's) and parses which is better;
its score is each sample's win rate in its group (fastvideo_grpo.rewards.pairwise).

A template is a YAML file, built in (assets/reward_templates/<name>.yaml, each with how to
serve its model) or given by path: `prompt` (the text, {prompt} standing for the caption),
`mode` (pointwise or pairwise) and how its answer reads, `score_regex` or `json_field`
(and, pointwise, `scale` and `score_range`, the [lowest, highest] score its answers may
give). The section's own score_regex / json_field / scale / score_range override the
template's. The answer is read after its last </think>, if it has one: a regex's last
match counts (pointwise: the mean of the numbers its groups captured; pairwise: group 1 is
1 or 2, the better video, and a match without group 1 is a tie), a JSON field is read from
the last JSON object in the answer that has it (pairwise: 1, 2, or 0 / "tie"). A number
outside score_range is an error, not a score.

Requests run on up to max_concurrency threads. A try without the whole reply within
timeout_s (a server that stalls, or trickles its reply byte by byte), a connection error,
HTTP 429 or 5xx is retried `retries` times, waiting backoff_s, then twice as long each
time; a malformed answer, another HTTP error or the last failed try raise JudgeError
naming the sample(s) and prompt and showing the answer. There is no default score.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from fastvideo_grpo.config import ConfigError, RewardConfig
from fastvideo_grpo.rewards.judge_client import JudgeClient, encode_frames
from fastvideo_grpo.rewards.judge_templates import AnswerFormat, JudgeConfig, check_range, load_template
from fastvideo_grpo.rewards.pairwise import Pair, PairwiseConfig, pairwise_score
from fastvideo_grpo.rewards.registry import RewardModel, ScoreFn, register_reward


@dataclass(kw_only=True)
class VLMJudgeConfig(JudgeConfig):
    """reward.models.vlm_judge"""

    KEY = "reward.models.vlm_judge"
    # The parsed number is divided by this (10 for a 1-10 score); 0 takes the template's
    # (1 if it has none).
    scale: float = 0.0
    # [lowest, highest] score an answer may give (each number a score_regex captures; one
    # outside is an error), overriding the template's; [] takes the template's (none: any).
    score_range: list[float] = dataclasses.field(default_factory=list)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.scale < 0:
            raise ConfigError(f"{self.KEY}.scale: {self.scale!r} is invalid; expected > 0, or 0 for the template's")
        if self.score_range:
            check_range(self.score_range, f"{self.KEY}.score_range")


@dataclass(kw_only=True)
class VLMPairwiseConfig(JudgeConfig, PairwiseConfig):
    """reward.models.vlm_pairwise"""

    KEY = "reward.models.vlm_pairwise"
    prompt_template: str = "unifiedreward_video_pairwise"


class _Judge:
    """A template, its answer format and a client, from a section."""

    def __init__(self, section: JudgeConfig, mode: str, name: str):
        key = section.KEY
        self.template = load_template(section.prompt_template, f"{key}.prompt_template")
        if self.template.mode != mode:
            raise ConfigError(f"{key}.prompt_template: {section.prompt_template!r} is a {self.template.mode} "
                              f"template; {name} needs a {mode} one")
        self.format = AnswerFormat.of(section, self.template)
        self.section = section
        self.client = JudgeClient(section)

    def text(self, prompt: str) -> str:
        return self.template.prompt.replace("{prompt}", prompt)

    def frames(self, video: torch.Tensor) -> list[str]:
        s = self.section
        return encode_frames(video, s.frames, s.image_size, s.image_format)


class VLMJudge(_Judge):
    """vlm_judge: one request per video; its score / scale."""

    def __init__(self, section: VLMJudgeConfig):
        super().__init__(section, "pointwise", "vlm_judge")
        self.scale = section.scale or self.template.scale or 1.0

    def __call__(self, videos: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        def score(i: int) -> float:
            what = f"vlm_judge request for sample {i} (prompt {prompts[i]!r})"
            return self.format.number(self.client.ask(self.frames(videos[i]), self.text(prompts[i]), what), what)

        return torch.tensor(self.client.map(score, list(range(len(prompts)))), dtype=torch.float64).div(
            self.scale).float()


class VLMPairwise(_Judge):
    """vlm_pairwise's comparison: one request per pair, the first video's frames first."""

    def __init__(self, section: VLMPairwiseConfig):
        super().__init__(section, "pairwise", "vlm_pairwise")

    def __call__(self, videos: torch.Tensor, prompts: list[str], pairs: list[Pair]) -> torch.Tensor:
        used = sorted({i for pair in pairs for i in pair})
        frames = dict(zip(used, self.client.map(lambda i: self.frames(videos[i]), used)))

        def compare(pair: Pair) -> float:
            i, j = pair
            what = f"vlm_pairwise request for samples {i} and {j} (prompt {prompts[i]!r})"
            return self.format.choice(self.client.ask(frames[i] + frames[j], self.text(prompts[i]), what), what)

        return torch.tensor(self.client.map(compare, pairs), dtype=torch.float32)


def build_judge(cfg: RewardConfig, section: VLMJudgeConfig) -> ScoreFn:
    judge = VLMJudge(section)
    return lambda videos, prompts: {"vlm_judge": judge(videos, prompts)}


def build_pairwise(cfg: RewardConfig, section: VLMPairwiseConfig) -> ScoreFn:
    return pairwise_score("vlm_pairwise", VLMPairwise(section), cfg.group_size, section.pairs_per_group)


register_reward(RewardModel("vlm_judge", ("vlm_judge",), build_judge, VLMJudgeConfig))
register_reward(RewardModel("vlm_pairwise", ("vlm_pairwise",), build_pairwise, VLMPairwiseConfig))
