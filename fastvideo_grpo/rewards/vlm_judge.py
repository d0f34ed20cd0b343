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

import base64
import dataclasses
import io
import json
import logging
import math
import os
import re
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal

import torch
import yaml

from fastvideo_grpo.config import ConfigError, RewardConfig
from fastvideo_grpo.rewards.pairwise import Pair, PairwiseConfig, pairwise_score
from fastvideo_grpo.rewards.registry import RewardModel, ScoreFn, register_reward

logger = logging.getLogger(__name__)

TEMPLATES = Path(__file__).resolve().parents[2] / "assets" / "reward_templates"
# What an answer shows at most in an error.
SHOWN_CHARS = 2000


class JudgeError(RuntimeError):
    """A judge request failed or its answer could not be read."""


@dataclass(kw_only=True)
class JudgeConfig:
    """What vlm_judge and vlm_pairwise share; each names its section in KEY (a class
    attribute, not a key), for errors."""

    # The server's OpenAI base URL, e.g. http://localhost:8080/v1 (requests go to
    # {url}/chat/completions).
    url: str
    # The served model's name (vllm serve --served-model-name).
    model: str
    # The environment variable holding an API key, sent as a Bearer token; "" sends none.
    api_key_env: str = ""
    # A built-in template's name (assets/reward_templates/<name>.yaml) or a template file.
    prompt_template: str = "unifiedreward_video"
    # Frames sent per video, evenly spaced from first to last (all of a shorter video).
    frames: int = 8
    # Longest side of a sent frame in pixels, the aspect kept; 0 sends frames as decoded.
    image_size: int = 448
    image_format: Literal["jpeg", "png"] = "jpeg"
    # How the answer reads, overriding the template's: a regex or a JSON field (dotted
    # for a nested one, e.g. scores.overall); at most one of them.
    score_regex: str = ""
    json_field: str = ""
    max_tokens: int = 1024
    temperature: float = 0.0
    # Requests in flight at once.
    max_concurrency: int = 8
    # Seconds a try may take in all: to connect, send, and receive the whole reply (a server
    # that trickles its reply byte by byte trips it too).
    timeout_s: float = 120.0
    # Tries after the first on a connection error, a timeout, HTTP 429 or 5xx; the first
    # waits backoff_s, each next one twice as long.
    retries: int = 3
    backoff_s: float = 1.0

    def __post_init__(self) -> None:
        key = self.KEY

        def require(ok: bool, name: str, expected: str) -> None:
            if not ok:
                raise ConfigError(f"{key}.{name}: {getattr(self, name)!r} is invalid; expected {expected}")

        require(self.frames >= 1, "frames", ">= 1")
        require(self.image_size >= 0, "image_size", ">= 0 (0 keeps the decoded size)")
        require(self.max_tokens >= 1, "max_tokens", ">= 1")
        require(self.temperature >= 0, "temperature", ">= 0")
        require(self.max_concurrency >= 1, "max_concurrency", ">= 1")
        require(self.timeout_s > 0, "timeout_s", "> 0")
        require(self.retries >= 0, "retries", ">= 0")
        require(self.backoff_s >= 0, "backoff_s", ">= 0")
        require(not (self.score_regex and self.json_field), "json_field",
                f"empty when score_regex is set ({self.score_regex!r}): the answer is read one way")
        if self.score_regex:
            _compile(self.score_regex, f"{key}.score_regex")
        if not _is_path(self.prompt_template):
            require((TEMPLATES / f"{self.prompt_template}.yaml").is_file(), "prompt_template",
                    f"a template file's path or a built-in template: {builtin_templates()}")


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
            _check_range(self.score_range, f"{self.KEY}.score_range")


@dataclass(kw_only=True)
class VLMPairwiseConfig(JudgeConfig, PairwiseConfig):
    """reward.models.vlm_pairwise"""

    KEY = "reward.models.vlm_pairwise"
    prompt_template: str = "unifiedreward_video_pairwise"


@dataclass(frozen=True)
class Template:
    prompt: str  # the text, "{prompt}" standing for the caption
    mode: Literal["pointwise", "pairwise"]
    score_regex: str = ""
    json_field: str = ""
    scale: float = 0.0
    score_range: list[float] | None = None  # [lowest, highest] a pointwise answer's scores may be


def _check_range(value: Any, key: str) -> None:
    numbers = isinstance(value, (list, tuple)) and len(value) == 2 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)
    if not (numbers and value[0] < value[1]):
        raise ConfigError(f"{key}: {value!r} is invalid; expected [lowest, highest], two finite numbers, lowest first")


def builtin_templates() -> list[str]:
    return sorted(path.stem for path in TEMPLATES.glob("*.yaml"))


def _is_path(template: str) -> bool:
    return "/" in template or template.endswith((".yaml", ".yml"))


def _compile(pattern: str, key: str) -> re.Pattern:
    try:
        compiled = re.compile(pattern)
    except re.error as e:
        raise ConfigError(f"{key}: {pattern!r} is not a valid regex: {e}") from e
    if compiled.groups < 1:
        raise ConfigError(f"{key}: {pattern!r} has no group; expected one capturing the score, e.g. "
                          r"'Final Score:\s*([0-9.]+)'")
    return compiled


def load_template(name: str, key: str) -> Template:
    """The template `name` (a built-in name or a YAML file's path); raises ConfigError."""
    path = Path(name) if _is_path(name) else TEMPLATES / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"{key}: {name!r} is neither a template file nor a built-in template: "
                          f"{builtin_templates()}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{key}: template {str(path)!r} is not valid YAML: {e}") from e
    fields = {"prompt", "mode", "score_regex", "json_field", "scale", "score_range"}
    if not isinstance(raw, dict) or not {"prompt", "mode"} <= set(raw) or set(raw) - fields:
        raise ConfigError(f"{key}: template {str(path)!r} must be a mapping with `prompt` and `mode` and at most "
                          f"{sorted(fields)}; got {sorted(raw) if isinstance(raw, dict) else raw!r}")
    t = Template(**raw)
    wrong = [what for what, ok in (
        ("mode is pointwise or pairwise", t.mode in ("pointwise", "pairwise")),
        ("the prompt is a text holding {prompt}, where the caption goes", isinstance(t.prompt, str)
         and "{prompt}" in t.prompt),
        ("score_regex and json_field are texts", isinstance(t.score_regex, str) and isinstance(t.json_field, str)),
        ("scale is a number > 0, and only a pointwise template's", t.scale == 0 or (
            t.mode == "pointwise" and isinstance(t.scale, (int, float)) and not isinstance(t.scale, bool)
            and t.scale > 0)),
    ) if not ok]
    if wrong:
        raise ConfigError(f"{key}: template {str(path)!r} is invalid; expected: {'; '.join(wrong)}")
    if t.score_range is not None:
        _check_range(t.score_range, f"{key}: template {str(path)!r}: score_range")
    return t


@dataclass(frozen=True)
class AnswerFormat:
    """How an answer reads: exactly one of a compiled regex and a JSON field."""

    regex: re.Pattern | None
    json_field: str
    score_range: tuple[float, float] | None = None  # pointwise scores outside it are errors

    @staticmethod
    def of(section: JudgeConfig, template: Template) -> "AnswerFormat":
        key = section.KEY
        regex, field = section.score_regex, section.json_field
        if not (regex or field):
            regex, field = template.score_regex, template.json_field
        if bool(regex) == bool(field):
            raise ConfigError(f"{key}: the answer is read by exactly one of score_regex and json_field; template "
                              f"{section.prompt_template!r} gives {'both' if regex else 'neither'}, so set one in {key}")
        score_range = (section.score_range or template.score_range) if template.mode == "pointwise" else None
        return AnswerFormat(_compile(regex, f"{key}.score_regex") if regex else None, field,
                            tuple(score_range) if score_range else None)

    def describe(self) -> str:
        return f"score_regex {self.regex.pattern!r}" if self.regex else f"json_field {self.json_field!r}"

    def number(self, answer: str, what: str) -> float:
        """The score in a pointwise answer."""
        text = _after_thinking(answer)
        if self.regex:
            match = _last_match(self.regex, text)
            values = [g for g in match.groups() if g is not None] if match else []
        else:
            value = _json_value(text, self.json_field)
            values = [] if value is _MISSING or isinstance(value, bool) else [value]
        try:
            numbers = [float(v) for v in values]
        except (TypeError, ValueError):
            numbers = []
        if numbers and all(math.isfinite(n) for n in numbers):
            low, high = self.score_range or (-math.inf, math.inf)
            outside = [n for n in numbers if not low <= n <= high]
            if outside:
                raise JudgeError(f"{what}: score {outside[0]:g} is outside score_range [{low:g}, {high:g}]; the "
                                 f"answer: {_shown(answer)}")
            return sum(numbers) / len(numbers)
        raise JudgeError(f"{what}: no score in the answer by {self.describe()}; the answer: {_shown(answer)}")

    def choice(self, answer: str, what: str) -> float:
        """A pairwise answer's outcome: 1.0 when the first video is better, 0.0 when the second
        is, 0.5 for a tie."""
        text = _after_thinking(answer)
        if self.regex:
            match = _last_match(self.regex, text)
            value = _MISSING if match is None else "tie" if match.group(1) is None else match.group(1)
        else:
            value = _json_value(text, self.json_field)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = {1: "1", 2: "2", 0: "tie"}.get(value)
        outcome = {"1": 1.0, "2": 0.0, "0": 0.5, "tie": 0.5}.get(value.strip().lower()) if isinstance(value, str) else None
        if outcome is None:
            raise JudgeError(f"{what}: no choice (1, 2 or a tie) in the answer by {self.describe()}; "
                             f"the answer: {_shown(answer)}")
        return outcome


_MISSING = object()


def _after_thinking(answer: str) -> str:
    return answer.rsplit("</think>", 1)[-1]


def _last_match(regex: re.Pattern, text: str) -> re.Match | None:
    match = None
    for match in regex.finditer(text):
        pass
    return match


def _json_value(text: str, field: str) -> Any:
    """`field` (dotted) of the last JSON object in `text` that has it, or _MISSING."""
    decoder, found = json.JSONDecoder(), _MISSING
    for start in (m.start() for m in re.finditer(r"\{", text)):
        try:
            value, _ = decoder.raw_decode(text, start)
        except ValueError:
            continue
        for part in field.split("."):
            value = value.get(part, _MISSING) if isinstance(value, dict) else _MISSING
        if value is not _MISSING:
            found = value
    return found


def _shown(answer: str) -> str:
    return repr(answer if len(answer) <= SHOWN_CHARS else answer[:SHOWN_CHARS] + "...")


def encode_frames(video: torch.Tensor, count: int, size: int, image_format: str) -> list[str]:
    """uint8 [T, H, W, 3] -> data URLs of `count` frames evenly spaced from first to last
    (all T if fewer), each resized (bicubic) so that its longest side is `size` (0: as is)."""
    from PIL import Image

    indices = torch.linspace(0, video.shape[0] - 1, min(count, video.shape[0])).round().long()
    urls = []
    for frame in video[indices].numpy():
        image = Image.fromarray(frame)
        if size and max(image.size) != size:
            scale = size / max(image.size)
            image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                                 Image.Resampling.BICUBIC)
        buffer = io.BytesIO()
        if image_format == "jpeg":
            image.save(buffer, format="JPEG", quality=95)
        else:
            image.save(buffer, format="PNG")
        urls.append(f"data:image/{image_format};base64,{base64.b64encode(buffer.getvalue()).decode()}")
    return urls


class JudgeClient:
    """Chat-completions requests to one endpoint from a pool of max_concurrency threads,
    retried on transient failures."""

    def __init__(self, section: JudgeConfig):
        import httpx

        url = section.url.rstrip("/")
        self.endpoint = url if url.endswith("/chat/completions") else f"{url}/chat/completions"
        headers = {}
        if section.api_key_env:
            api_key = os.environ.get(section.api_key_env, "")
            if not api_key:
                raise ConfigError(f"{section.KEY}.api_key_env: the environment variable {section.api_key_env!r} "
                                  "is not set; expected the API key there")
            headers["Authorization"] = f"Bearer {api_key}"
        self.section, self.headers = section, headers
        self.ssl = httpx.create_ssl_context()  # made once: a client per try is cheap then
        self.transient = httpx.TransportError  # connection errors and timeouts
        self.pool = ThreadPoolExecutor(section.max_concurrency, thread_name_prefix="vlm-judge")

    def ask(self, images: list[str], text: str, what: str) -> str:
        """The answer to one user message of `images` (data URLs) then `text`."""
        s = self.section
        content = [{"type": "image_url", "image_url": {"url": url}} for url in images]
        payload = {"model": s.model, "messages": [{"role": "user", "content": content + [{"type": "text", "text": text}]}],
                   "max_tokens": s.max_tokens, "temperature": s.temperature}
        for attempt in range(s.retries + 1):
            if attempt:
                time.sleep(s.backoff_s * 2 ** (attempt - 1))
            try:
                response = self._post(payload)
            except self.transient as e:
                failure = f"{type(e).__name__}: {e}"
            else:
                if response.status_code == 200:
                    return _answer_text(response, what)
                failure = f"HTTP {response.status_code}: {_shown(response.text)}"
                if response.status_code != 429 and response.status_code < 500:
                    raise JudgeError(f"{what}: {self.endpoint} answered {failure}")
            logger.warning("%s: try %d of %d failed: %s", what, attempt + 1, s.retries + 1, failure)
        raise JudgeError(f"{what}: no answer from {self.endpoint} in {s.retries + 1} tries; the last: {failure}")

    def _post(self, payload: dict):
        """One try, given timeout_s in all. httpx's timeout bounds each wait for a byte, which
        a server trickling its reply never trips; so the try runs on its own thread with its
        own client, which is closed at the deadline (its thread then ends at its next byte
        or read timeout) while this one raises."""
        import httpx

        timeout_s = self.section.timeout_s
        client = httpx.Client(timeout=timeout_s, headers=self.headers, verify=self.ssl)
        outcome = {}

        def post() -> None:
            try:
                outcome["response"] = client.post(self.endpoint, json=payload)
            except BaseException as e:  # handed to the caller
                outcome["error"] = e

        thread = threading.Thread(target=post, daemon=True, name="vlm-judge-try")
        thread.start()
        thread.join(timeout_s)
        client.close()
        if thread.is_alive():
            raise httpx.TimeoutException(f"no whole reply within timeout_s={timeout_s:g}s")
        if "error" in outcome:
            raise outcome["error"]
        return outcome["response"]

    def map(self, fn: Callable[[Any], Any], items: list) -> list:
        """[fn(item) for item in items] on the pool; the first error is raised (requests not
        yet started are dropped)."""
        futures = [self.pool.submit(fn, item) for item in items]
        wait(futures, return_when=FIRST_EXCEPTION)
        failed = next((f for f in futures if f.done() and f.exception() is not None), None)
        if failed is not None:
            for future in futures:
                future.cancel()
            raise failed.exception()
        return [future.result() for future in futures]


def _answer_text(response, what: str) -> str:
    try:
        content = response.json()["choices"][0]["message"]["content"]
        if isinstance(content, list):  # a list of parts
            content = "".join(part.get("text", "") for part in content)
        if isinstance(content, str):
            return content
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        pass
    raise JudgeError(f"{what}: the reply is not a chat completion with a message; the reply: {_shown(response.text)}")


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
