"""VideoAlign (VideoReward): Qwen2-VL-2B fine-tuned to rate a generated video against its
prompt on visual quality (VQ), motion quality (MQ) and text alignment (TA).

The checkpoint folder is laid out as released: `model_config.json` (data, model, LoRA and
inference sections) and `checkpoint-N/` holding either `model.pth` (the whole PEFT-wrapped
state dict) or `adapter_model.safetensors` + `non_lora_state_dict.pth`. It is loaded over a
local Qwen2-VL-2B-Instruct folder whose tokenizer gains the three reward tokens.

Scoring follows the reference inference: frames sampled uniformly at the data config's fps
(2) from the video's own frame rate, resized to multiples of 28 pixels, the video first in
the chat, then the prompt template holding the caption and one reward token per dimension;
`rm_head` reads the last hidden state at those tokens (in template order: VQ, MQ, TA), with
token-index positions rather than M-RoPE, and the scores are standardised with the
checkpoint's inference_config mean/std.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from fastvideo_grpo.config import RewardConfig
from fastvideo_grpo.dtypes import DTYPES
from fastvideo_grpo.rewards.registry import RewardModel, ScoreFn, register_reward

DIMENSIONS = ("VQ", "MQ", "TA")
SPECIAL_TOKENS = ("<|VQ_reward|>", "<|MQ_reward|>", "<|TA_reward|>")

# qwen_vl_utils' video constants, which VideoAlign's preprocessing uses.
IMAGE_FACTOR = 28
FRAME_FACTOR = 2
MIN_FRAMES = 4
MAX_FRAMES = 768
VIDEO_MIN_PIXELS = 128 * 28 * 28
MAX_RATIO = 200

# The "detailed_special" template VideoAlign was trained with (its trailing spaces included).
PROMPT_TEMPLATE = """
You are tasked with evaluating a generated video based on three distinct criteria: Visual Quality, Motion Quality, and Text Alignment. Please provide a rating from 0 to 10 for each of the three categories, with 0 being the worst and 10 being the best. Each evaluation should be independent of the others.

**Visual Quality:**  
Evaluate the overall visual quality of the video, with a focus on static factors. The following sub-dimensions should be considered:
- **Reasonableness:** The video should not contain any significant biological or logical errors, such as abnormal body structures or nonsensical environmental setups.
- **Clarity:** Evaluate the sharpness and visibility of the video. The image should be clear and easy to interpret, with no blurring or indistinct areas.
- **Detail Richness:** Consider the level of detail in textures, materials, lighting, and other visual elements (e.g., hair, clothing, shadows).
- **Aesthetic and Creativity:** Assess the artistic aspects of the video, including the color scheme, composition, atmosphere, depth of field, and the overall creative appeal. The scene should convey a sense of harmony and balance.
- **Safety:** The video should not contain harmful or inappropriate content, such as political, violent, or adult material. If such content is present, the image quality and satisfaction score should be the lowest possible. 

Please provide the ratings of Visual Quality: <|VQ_reward|>
END

**Motion Quality:**  
Assess the dynamic aspects of the video, with a focus on dynamic factors. Consider the following sub-dimensions:
- **Stability:** Evaluate the continuity and stability between frames. There should be no sudden, unnatural jumps, and the video should maintain stable attributes (e.g., no fluctuating colors, textures, or missing body parts).
- **Naturalness:** The movement should align with physical laws and be realistic. For example, clothing should flow naturally with motion, and facial expressions should change appropriately (e.g., blinking, mouth movements).
- **Aesthetic Quality:** The movement should be smooth and fluid. The transitions between different motions or camera angles should be seamless, and the overall dynamic feel should be visually pleasing.
- **Fusion:** Ensure that elements in motion (e.g., edges of the subject, hair, clothing) blend naturally with the background, without obvious artifacts or the feeling of cut-and-paste effects.
- **Clarity of Motion:** The video should be clear and smooth in motion. Pay attention to any areas where the video might have blurry or unsteady sections that hinder visual continuity.
- **Amplitude:** If the video is largely static or has little movement, assign a low score for motion quality.

Please provide the ratings of Motion Quality: <|MQ_reward|>
END

**Text Alignment:**  
Assess how well the video matches the textual prompt across the following sub-dimensions:
- **Subject Relevance** Evaluate how accurately the subject(s) in the video (e.g., person, animal, object) align with the textual description. The subject should match the description in terms of number, appearance, and behavior.
- **Motion Relevance:** Evaluate if the dynamic actions (e.g., gestures, posture, facial expressions like talking or blinking) align with the described prompt. The motion should match the prompt in terms of type, scale, and direction.
- **Environment Relevance:** Assess whether the background and scene fit the prompt. This includes checking if real-world locations or scenes are accurately represented, though some stylistic adaptation is acceptable.  
- **Style Relevance:** If the prompt specifies a particular artistic or stylistic style, evaluate how well the video adheres to this style.
- **Camera Movement Relevance:** Check if the camera movements (e.g., following the subject, focus shifts) are consistent with the expected behavior from the prompt.

Textual prompt - {text_prompt}
Please provide the ratings of Text Alignment: <|TA_reward|>
END
"""


def round_by(x: float, factor: int) -> int:
    return round(x / factor) * factor


def ceil_by(x: float, factor: int) -> int:
    return math.ceil(x / factor) * factor


def floor_by(x: float, factor: int) -> int:
    return math.floor(x / factor) * factor


def frame_count(total: int, video_fps: float, fps: float) -> int:
    """Frames sampled from a `total`-frame clip at `video_fps`: `fps` per second of video,
    clamped to [4, min(768, total)], rounded to an even count (the vision tower takes frames
    in pairs)."""
    max_frames = floor_by(min(MAX_FRAMES, total), FRAME_FACTOR)
    count = min(max(total / video_fps * fps, ceil_by(MIN_FRAMES, FRAME_FACTOR)), max_frames)
    count = min(round_by(count, FRAME_FACTOR), total)
    if count < FRAME_FACTOR:
        raise ValueError(f"VideoAlign needs a video of at least {FRAME_FACTOR} frames, got {total}")
    return count


def frame_indices(total: int, video_fps: float, fps: float) -> list[int]:
    """Uniformly spaced frame indices from first to last, rounded half to even."""
    return torch.linspace(0, total - 1, frame_count(total, video_fps, fps)).round().long().tolist()


def smart_resize(height: int, width: int, min_pixels: int, max_pixels: int,
                 factor: int = IMAGE_FACTOR) -> tuple[int, int]:
    """(height, width) rounded to multiples of `factor`, rescaled (aspect kept) into
    [min_pixels, max_pixels] pixels."""
    if max(height, width) / min(height, width) > MAX_RATIO:
        raise ValueError(f"VideoAlign: a {height}x{width} frame exceeds the aspect ratio limit of {MAX_RATIO}")
    h, w = max(factor, round_by(height, factor)), max(factor, round_by(width, factor))
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h, w = floor_by(height / beta, factor), floor_by(width / beta, factor)
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h, w = ceil_by(height * beta, factor), ceil_by(width * beta, factor)
    return h, w


def resize_frames(frames: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """uint8 [N, H, W, 3] -> float [N, 3, height, width] holding integers in [0, 255]: bicubic
    with antialiasing, rounded back to uint8 as the reference's torchvision resize does."""
    x = frames.permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=(height, width), mode="bicubic", align_corners=False, antialias=True)
    return x.clamp(0, 255).round()


def read_model_config(path: Path) -> dict:
    file = path / "model_config.json"
    if not file.is_file():
        raise FileNotFoundError(f"reward.models.videoalign.path={str(path)!r}: no model_config.json; expected a "
                                "VideoReward folder (model_config.json and checkpoint-N/)")
    try:
        config = json.loads(file.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{file}: not valid JSON: {e}") from e
    for section in ("data_config", "model_config", "peft_lora_config"):
        if not isinstance(config.get(section), dict):
            raise ValueError(f"{file}: missing section {section!r}")
    expected = {("data_config", "prompt_template_type"): "detailed_special",
                ("data_config", "sample_type"): "uniform", ("data_config", "num_frames"): None,
                ("model_config", "use_special_tokens"): True}
    for (section, key), value in expected.items():
        if config[section].get(key, value) != value:
            raise ValueError(f"{file}: {section}.{key}={config[section][key]!r} is not supported; expected {value!r}")
    if config["model_config"].get("output_dim", 1) not in (1, len(DIMENSIONS)):
        raise ValueError(f"{file}: model_config.output_dim={config['model_config']['output_dim']!r} is not "
                         f"supported; expected 1 or {len(DIMENSIONS)}")
    torch_dtype = config["model_config"].get("torch_dtype")
    if torch_dtype not in (None, "auto") and not isinstance(getattr(torch, str(torch_dtype), None), torch.dtype):
        raise ValueError(f"{file}: model_config.torch_dtype={torch_dtype!r} is not a torch dtype")
    if "max_frame_pixels" not in config["data_config"]:
        raise ValueError(f"{file}: data_config.max_frame_pixels is missing")
    return config


def latest_checkpoint(path: Path) -> Path:
    steps = {int(d.name.split("-", 1)[1]): d for d in path.glob("checkpoint-*")
             if d.is_dir() and d.name.split("-", 1)[1].isdigit()}
    if not steps:
        raise FileNotFoundError(f"reward.models.videoalign.path={str(path)!r}: no checkpoint-N folder")
    return steps[max(steps)]


# transformers >= 4.52 nests the vision tower and the decoder under `model`; VideoAlign's
# checkpoints use the older names (the renaming transformers applies to legacy Qwen2-VL files).
LEGACY_NAMES = ((re.compile(r"^visual\."), "model.visual."),
                (re.compile(r"^model\.(?!language_model\.|visual\.)"), "model.language_model."))
PEFT_PREFIX = "base_model.model."


def current_name(key: str) -> str:
    prefix = PEFT_PREFIX if key.startswith(PEFT_PREFIX) else ""
    rest = key[len(prefix):]
    for pattern, replacement in LEGACY_NAMES:
        rest, count = pattern.subn(replacement, rest)
        if count:
            break
    return prefix + rest


def read_state(file: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        if file.suffix == ".safetensors":
            return load_file(file)
        return torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"{file}: cannot be read as a state dict: {type(e).__name__}: {e}") from e


def load_checkpoint_state(checkpoint: Path) -> tuple[dict[str, torch.Tensor], Path, bool]:
    """The saved state dict (current names), where it came from and whether it is whole."""
    full = checkpoint / "model.pth"
    if full.is_file():
        return {current_name(k): v for k, v in read_state(full).items()}, full, True
    adapter, non_lora = checkpoint / "adapter_model.safetensors", checkpoint / "non_lora_state_dict.pth"
    for file in (adapter, non_lora):
        if not file.is_file():
            raise FileNotFoundError(f"{file} does not exist; a VideoReward checkpoint holds model.pth, or "
                                    "adapter_model.safetensors and non_lora_state_dict.pth")
    state = read_state(non_lora)
    # PEFT saves LoRA weights without the adapter name that the live modules carry.
    state.update({re.sub(r"\.(lora_[AB])\.", r".\1.default.", k): v for k, v in read_state(adapter).items()})
    return {current_name(k): v for k, v in state.items()}, checkpoint, False


def load_into(model: nn.Module, state: dict[str, torch.Tensor], source: Path, whole: bool) -> None:
    """model.pth must cover the model; the adapter pair replaces what it holds of it."""
    own = model.state_dict()
    unexpected = sorted(set(state) - set(own))
    missing = sorted(set(own) - set(state)) if whole else []
    if unexpected or missing:
        raise ValueError(f"{source}: {len(unexpected)} keys the model lacks (e.g. {unexpected[:3]}), "
                         f"{len(missing)} of its keys missing (e.g. {missing[:3]})")
    try:
        model.load_state_dict({**own, **state})
    except RuntimeError as e:
        raise ValueError(f"{source}: {e}") from e


def lora_targets(model: nn.Module, exclude: list[str], count: int) -> list[str]:
    """VideoAlign's LoRA placement: every Linear/Embedding whose name avoids `exclude`
    (the last `count` of them when count > 0)."""
    names = [name for name, module in model.named_modules()
             if isinstance(module, (nn.Linear, nn.Embedding)) and not any(ex in name for ex in exclude)]
    return names[-count:] if count > 0 else names


@dataclass
class VideoAlignConfig:
    """reward.models.videoalign"""

    # The VideoReward folder as released (model_config.json, checkpoint-N/).
    path: str
    # The local Qwen2-VL-2B-Instruct folder it was trained from.
    base: str
    # Standardise each dimension with the checkpoint's inference_config mean/std.
    use_norm: bool = True
    dtype: Literal["bf16", "fp32"] = "bf16"


class VideoAlign:
    def __init__(self, path: str, base: str, device: str = "cpu", video_fps: float = 16.0,
                 use_norm: bool = True, dtype: torch.dtype = torch.bfloat16):
        # Imported here, not above: the trainer reads every reward's config, not its libraries.
        from peft import LoraConfig, get_peft_model
        from transformers import AutoProcessor, Qwen2VLForConditionalGeneration

        folder = Path(path)
        if not path or not folder.is_dir():
            raise FileNotFoundError(f"reward.models.videoalign.path={path!r} is not a folder; expected a "
                                    "VideoReward checkpoint (model_config.json and checkpoint-N/)")
        if not base or not (Path(base) / "config.json").is_file():
            raise FileNotFoundError(f"reward.models.videoalign.base={base!r}: no config.json; expected a local "
                                    "Qwen2-VL-2B-Instruct folder")
        if video_fps <= 0:
            raise ValueError(f"reward.video_fps={video_fps!r}: the frame rate of the scored videos must be > 0")
        config = read_model_config(folder)
        data, lora = config["data_config"], config["peft_lora_config"]
        self.fps = float(data.get("fps", 2.0))
        self.max_pixels = int(data["max_frame_pixels"])
        self.video_fps = video_fps
        self.device = torch.device(device)

        self.processor = AutoProcessor.from_pretrained(base)
        tokenizer = self.processor.tokenizer
        tokenizer.padding_side = "right"
        tokenizer.add_special_tokens({"additional_special_tokens": list(SPECIAL_TOKENS)})
        self.special_ids = torch.tensor(tokenizer.convert_tokens_to_ids(list(SPECIAL_TOKENS)))

        # As the reference builds it: loaded in model_config's torch_dtype, then the whole model
        # cast with .to() (below), which also rounds the rotary inv_freq buffers (kept fp32 by
        # from_pretrained) to bf16, the numbers the checkpoint was trained and evaluated with.
        torch_dtype = config["model_config"].get("torch_dtype") or "auto"
        load_dtype = torch_dtype if torch_dtype == "auto" else getattr(torch, torch_dtype)
        model = Qwen2VLForConditionalGeneration.from_pretrained(base, dtype=load_dtype, attn_implementation="sdpa")
        model.resize_token_embeddings(len(tokenizer))
        # output_dim 3: the head rates all dimensions at every reward token, and the score of
        # dimension i is output i at reward token i (the diagonal, as the reference trains it).
        self.output_dim = int(config["model_config"].get("output_dim", 1))
        model.rm_head = nn.Linear(model.config.text_config.hidden_size, self.output_dim, bias=False)
        if lora.get("lora_enable", False):
            targets = lora_targets(model, lora.get("lora_namespan_exclude") or [], lora.get("num_lora_modules", -1))
            wrapped = get_peft_model(model, LoraConfig(
                r=lora["lora_r"], lora_alpha=lora["lora_alpha"], lora_dropout=lora.get("lora_dropout", 0.0),
                target_modules=targets, use_rslora=lora.get("use_rslora", False), bias="none",
                modules_to_save=lora.get("lora_modules_to_save")))
        else:
            wrapped = model
        load_into(wrapped, *load_checkpoint_state(latest_checkpoint(folder)))
        # LoRA layers live inside `model`, wrapped or not; the reference's PEFT (0.10) kept them
        # in the base weights' dtype, as this cast does.
        self.model = model.to(self.device, dtype).eval()

        stats = config.get("inference_config") or {}
        if use_norm and not all(f"{d}_{s}" in stats for d in DIMENSIONS for s in ("mean", "std")):
            raise ValueError(f"{folder / 'model_config.json'}: reward.models.videoalign.use_norm needs "
                             f"inference_config with {', '.join(f'{d}_mean/{d}_std' for d in DIMENSIONS)}")
        self.mean = torch.tensor([stats[f"{d}_mean"] for d in DIMENSIONS]) if use_norm else torch.zeros(3)
        self.std = torch.tensor([stats[f"{d}_std"] for d in DIMENSIONS]) if use_norm else torch.ones(3)

    def prepare(self, videos: torch.Tensor) -> list[torch.Tensor]:
        """uint8 [B, T, H, W, 3] -> B float clips [N, 3, h, w] of sampled, resized frames."""
        batch, total, height, width = videos.shape[:4]
        frames = videos[:, frame_indices(total, self.video_fps, self.fps)]
        h, w = smart_resize(height, width, VIDEO_MIN_PIXELS, self.max_pixels)
        return list(resize_frames(frames.flatten(0, 1), h, w).unflatten(0, (batch, -1)))

    @torch.no_grad()
    def scores(self, videos: torch.Tensor, prompts: list[str]) -> dict[str, torch.Tensor]:
        """Named scores [B] for the three dimensions, normalised unless use_norm is off."""
        chats = [[{"role": "user", "content": [
            {"type": "video"}, {"type": "text", "text": PROMPT_TEMPLATE.format(text_prompt=p)}]}] for p in prompts]
        text = self.processor.apply_chat_template(chats, tokenize=False, add_generation_prompt=True)
        # Frames already have the reference's size (multiples of 28): no second resize.
        inputs = self.processor(text=text, videos=self.prepare(videos), padding=True, return_tensors="pt",
                                videos_kwargs={"do_resize": False}).to(self.device)
        ids = inputs["input_ids"]  # [B, L]
        at_reward = torch.isin(ids, self.special_ids.to(ids.device))
        for prompt, count in zip(prompts, at_reward.sum(dim=1).tolist()):
            if count != len(SPECIAL_TOKENS):  # a caption holding a reward token itself
                raise ValueError(f"VideoAlign: the prompt {prompt!r} yields {count} reward tokens, expected 3")
        # The reference calls the decoder without position ids: positions are token indices
        # (same on the three M-RoPE axes), not Qwen2-VL's video-aware positions.
        positions = torch.arange(ids.shape[1], device=ids.device).expand_as(ids)
        hidden = self.model.model(**inputs, position_ids=positions).last_hidden_state  # [B, L, D]
        heads = self.model.rm_head(hidden[at_reward]).float().view(len(prompts), 3, self.output_dim)
        raw = (heads[..., 0] if self.output_dim == 1 else heads.diagonal(dim1=1, dim2=2)).cpu()  # [B, 3]: VQ, MQ, TA
        scores = (raw - self.mean) / self.std
        return {d: scores[:, i] for i, d in enumerate(DIMENSIONS)}


def build(cfg: RewardConfig, section: VideoAlignConfig) -> ScoreFn:
    """One model, one forward per batch for all three scores."""
    model = VideoAlign(section.path, section.base, cfg.device, cfg.video_fps, section.use_norm, DTYPES[section.dtype])
    return lambda videos, prompts: {f"videoalign_{d.lower()}": s for d, s in model.scores(videos, prompts).items()}


register_reward(RewardModel("videoalign", ("videoalign_vq", "videoalign_mq", "videoalign_ta"), build,
                            VideoAlignConfig))
