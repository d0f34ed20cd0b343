"""A VLM judge's template (the text it is sent, fastvideo_grpo.rewards.vlm_judge says how it
is written) and the reading of its answers: a score, or a pairwise choice."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from fastvideo_grpo.config import ConfigError


TEMPLATES = Path(__file__).resolve().parents[2] / "assets" / "reward_templates"
# What an answer shows at most in an error.
SHOWN_CHARS = 2000


class JudgeError(RuntimeError):
    """A judge request failed or its answer could not be read."""


@dataclass(frozen=True)
class Template:
    prompt: str  # the text, "{prompt}" standing for the caption
    mode: Literal["pointwise", "pairwise"]
    score_regex: str = ""
    json_field: str = ""
    scale: float = 0.0
    score_range: list[float] | None = None  # [lowest, highest] a pointwise answer's scores may be


def check_range(value: Any, key: str) -> None:
    numbers = isinstance(value, (list, tuple)) and len(value) == 2 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)
    if not (numbers and value[0] < value[1]):
        raise ConfigError(f"{key}: {value!r} is invalid; expected [lowest, highest], two finite numbers, lowest first")


def builtin_templates() -> list[str]:
    return sorted(path.stem for path in TEMPLATES.glob("*.yaml"))


def is_template_path(template: str) -> bool:
    return "/" in template or template.endswith((".yaml", ".yml"))


def compile_regex(pattern: str, key: str) -> re.Pattern:
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
    path = Path(name) if is_template_path(name) else TEMPLATES / f"{name}.yaml"
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
        check_range(t.score_range, f"{key}: template {str(path)!r}: score_range")
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
        return AnswerFormat(compile_regex(regex, f"{key}.score_regex") if regex else None, field,
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
                                 f"answer: {shown(answer)}")
            return sum(numbers) / len(numbers)
        raise JudgeError(f"{what}: no score in the answer by {self.describe()}; the answer: {shown(answer)}")

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
                             f"the answer: {shown(answer)}")
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


def shown(answer: str) -> str:
    return repr(answer if len(answer) <= SHOWN_CHARS else answer[:SHOWN_CHARS] + "...")


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
            compile_regex(self.score_regex, f"{key}.score_regex")
        if not is_template_path(self.prompt_template):
            require((TEMPLATES / f"{self.prompt_template}.yaml").is_file(), "prompt_template",
                    f"a template file's path or a built-in template: {builtin_templates()}")
