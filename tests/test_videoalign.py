"""VideoAlign on a tiny Qwen2-VL saved in the released VideoReward layout (CPU, offline)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (PreTrainedTokenizerFast, Qwen2VLConfig, Qwen2VLForConditionalGeneration,
                          Qwen2VLImageProcessor, Qwen2VLProcessor, Qwen2VLVideoProcessor)

from fastvideo_grpo.config import RewardConfig
from fastvideo_grpo.models.tiny.text_encoders import WORDS
from fastvideo_grpo.rewards import build_scorer
from fastvideo_grpo.rewards.videoalign import (PROMPT_TEMPLATE, VideoAlign, frame_count, frame_indices,
                                               smart_resize)

QWEN_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
               "<|image_pad|>", "<|video_pad|>"]
REWARD_TOKENS = ["<|VQ_reward|>", "<|MQ_reward|>", "<|TA_reward|>"]
# Qwen2-VL's chat template, reduced to what a user turn with a video and text needs.
CHAT_TEMPLATE = (
    "{% for m in messages %}{% if loop.first and m.role != 'system' %}<|im_start|>system\nYou are a helpful "
    "assistant.<|im_end|>\n{% endif %}<|im_start|>{{ m.role }}\n{% for c in m.content %}{% if c.type == 'video' %}"
    "<|vision_start|><|video_pad|><|vision_end|>{% elif c.type == 'text' %}{{ c.text }}{% endif %}{% endfor %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
STATS = {"VQ_mean": 3.6757, "VQ_std": 2.2476, "MQ_mean": 1.1646, "MQ_std": 1.3811, "TA_mean": 2.8105, "TA_std": 2.5121}
LORA_R, LORA_ALPHA = 8, 16
LLM_LINEARS = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
               "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]


def qwen_tokenizer() -> PreTrainedTokenizerFast:
    """Word-level over a small vocabulary; like Qwen2's, it adds no BOS/EOS."""
    vocab = {t: i for i, t in enumerate(["<unk>"] + QWEN_TOKENS + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split("\n", "isolated"),
                                                 pre_tokenizers.WhitespaceSplit()])
    tok = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<|endoftext|>",
                                  eos_token="<|im_end|>")
    tok.add_special_tokens({"additional_special_tokens": QWEN_TOKENS})
    return tok


def tiny_config(tok, vocab_size: int) -> Qwen2VLConfig:
    ids = {t: tok.convert_tokens_to_ids(t) for t in QWEN_TOKENS}
    return Qwen2VLConfig(
        text_config=dict(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, bos_token_id=None,
                         eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"],
                         rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 1e4}),
        vision_config=dict(depth=1, embed_dim=32, hidden_size=32, num_heads=2, mlp_ratio=2),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True)


def legacy(key: str) -> str:
    """A current transformers name as VideoAlign's checkpoints (older transformers) spell it."""
    if key.startswith("model.visual."):
        return key[len("model."):]
    return key.replace("model.language_model.", "model.", 1)


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    """A base Qwen2-VL folder, the "trained" weights by hand, and VideoReward folders: model.pth,
    the adapter pair, and a checkpoint trained without LoRA."""
    root = tmp_path_factory.mktemp("videoalign")
    tok = qwen_tokenizer()
    torch.manual_seed(0)
    base = Qwen2VLForConditionalGeneration(tiny_config(tok, len(tok)))
    base.save_pretrained(root / "base")
    Qwen2VLProcessor(image_processor=Qwen2VLImageProcessor(), tokenizer=tok, video_processor=Qwen2VLVideoProcessor(),
                     chat_template=CHAT_TEMPLATE).save_pretrained(root / "base")

    # Training resized the embeddings for the reward tokens, tuned the vision tower and
    # those embeddings fully, the decoder's linears with LoRA, and learned rm_head.
    base_state = base.state_dict()
    trained = {k: v + 0.05 * torch.randn_like(v) for k, v in base_state.items()
               if k.startswith("model.visual.")}
    embed = base_state["model.language_model.embed_tokens.weight"]
    trained["model.language_model.embed_tokens.weight"] = torch.cat([embed, torch.randn(3, embed.shape[1])])
    lora = {}
    for layer in range(2):
        for linear in LLM_LINEARS:
            name = f"model.language_model.layers.{layer}.{linear}"
            out_dim, in_dim = base_state[f"{name}.weight"].shape
            lora[name] = (torch.randn(LORA_R, in_dim) * 0.2, torch.randn(out_dim, LORA_R) * 0.2)
    rm_head = torch.randn(1, 32)

    whole, adapter, non_lora = {}, {}, {}
    for key, value in {**base_state, **trained, "lm_head.weight": trained[
            "model.language_model.embed_tokens.weight"], "rm_head.weight": rm_head}.items():
        module, param = key.rsplit(".", 1)
        if module in lora:
            whole[f"base_model.model.{legacy(module)}.base_layer.{param}"] = value
            for part, weight in zip(("lora_A", "lora_B"), lora[module] if param == "weight" else ()):
                whole[f"base_model.model.{legacy(module)}.{part}.default.weight"] = weight
                adapter[f"base_model.model.{legacy(module)}.{part}.weight"] = weight
        else:
            whole[f"base_model.model.{legacy(key)}"] = value
            if key in trained or key == "rm_head.weight":
                non_lora[f"base_model.model.{legacy(key)}"] = value

    model_config = {
        "data_config": {"meta_data": "", "data_dir": "", "max_frame_pixels": 200704, "num_frames": None, "fps": 2.0,
                        "eval_dim": ["VQ", "MQ", "TA"], "prompt_template_type": "detailed_special",
                        "sample_type": "uniform"},
        "model_config": {"model_name_or_path": "Qwen/Qwen2-VL-2B-Instruct", "output_dim": 1,
                         "use_special_tokens": True, "reward_token": "special"},
        "peft_lora_config": {"lora_enable": True, "vision_lora": False, "lora_r": LORA_R, "lora_alpha": LORA_ALPHA,
                             "lora_dropout": 0.05, "lora_namespan_exclude": ["lm_head", "rm_head", "embed_tokens",
                                                                             "visual"],
                             "lora_task_type": "CAUSAL_LM", "use_rslora": False, "num_lora_modules": -1},
        "inference_config": STATS,
    }
    # The trained model by hand: LoRA merged as W + (alpha / r) B A.
    merged = {**base_state, **trained, "lm_head.weight": trained["model.language_model.embed_tokens.weight"]}
    for name, (a, b) in lora.items():
        merged[f"{name}.weight"] = base_state[f"{name}.weight"] + LORA_ALPHA / LORA_R * b @ a

    for layout in ("model.pth", "adapter", "full"):
        folder = root / layout
        (folder / "checkpoint-100").mkdir(parents=True)
        (folder / "checkpoint-20").mkdir()  # an older step, not the one loaded
        config = json.loads(json.dumps(model_config))
        config["peft_lora_config"]["lora_enable"] = layout != "full"
        (folder / "model_config.json").write_text(json.dumps(config))
        if layout == "model.pth":
            torch.save(whole, folder / "checkpoint-100" / "model.pth")
        elif layout == "adapter":
            save_file(adapter, folder / "checkpoint-100" / "adapter_model.safetensors")
            torch.save(non_lora, folder / "checkpoint-100" / "non_lora_state_dict.pth")
        else:  # trained without LoRA: a plain state dict
            full = {legacy(k): v for k, v in merged.items()}
            torch.save({**full, "rm_head.weight": rm_head}, folder / "checkpoint-100" / "model.pth")
    reference = Qwen2VLForConditionalGeneration(tiny_config(tok, len(tok) + 3)).eval()
    reference.load_state_dict(merged)
    return root, reference, rm_head


def videos(batch=2, frames=9, height=32, width=48, seed=0):
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.integers(0, 256, (batch, frames, height, width, 3), dtype=np.uint8))


def hand_scores(root: Path, reference, rm_head, video, prompt) -> torch.Tensor:
    """Raw [VQ, MQ, TA] for one 9-frame 32x48 video at 8 fps, built step by step."""
    # 9 frames at 8 fps = 2.25 s -> 4.5 frames at 2 fps, raised to the minimum of 4 and
    # spread evenly: 0, 8/3, 16/3, 8 rounded. 32x48 is below 100352 pixels: scaled by
    # sqrt(100352 / 1536) and rounded up to multiples of 28: 280x392.
    frames = video[[0, 3, 5, 8]].permute(0, 3, 1, 2).float()
    frames = F.interpolate(frames, size=(280, 392), mode="bicubic", antialias=True).clamp(0, 255).round()
    pixels = Qwen2VLVideoProcessor()(videos=[frames], do_resize=False, return_tensors="pt")
    grid = pixels["video_grid_thw"]
    assert grid.tolist() == [[2, 20, 28]]  # frame pairs, 14-pixel patches
    tok = qwen_tokenizer()
    tok.add_special_tokens({"additional_special_tokens": REWARD_TOKENS})
    text = ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<|vision_start|>"
            + "<|video_pad|>" * (2 * 10 * 14) + "<|vision_end|>" + PROMPT_TEMPLATE.format(text_prompt=prompt)
            + "<|im_end|>\n<|im_start|>assistant\n")
    ids = torch.tensor(tok(text).input_ids)
    with torch.no_grad():
        embeds = reference.get_input_embeddings()(ids)
        vision = reference.model.visual(pixels["pixel_values_videos"], grid_thw=grid).pooler_output
        embeds[ids == reference.config.video_token_id] = vision
        hidden = reference.model.language_model(inputs_embeds=embeds[None],
                                                position_ids=torch.arange(len(ids))[None]).last_hidden_state[0]
    positions = [ids.tolist().index(tok.convert_tokens_to_ids(t)) for t in REWARD_TOKENS]
    assert positions == sorted(positions)
    if rm_head.shape[0] == 3:  # output_dim 3: dimension i is head output i at reward token i
        return (hidden[positions] * rm_head).sum(dim=-1)
    return hidden[positions] @ rm_head[0]


def test_frame_count_and_indices():
    assert frame_count(53, 16, 2) == 6  # 3.3 s at 2 fps = 6.6 -> nearest even
    assert frame_indices(53, 16, 2) == [0, 10, 21, 31, 42, 52]
    assert frame_count(61, 16, 2) == 8  # 7.6 -> 8
    assert frame_count(40, 16, 2) == 4  # 5.0 -> 2 pairs and a half, rounded half to even
    assert frame_count(9, 8, 2) == 4 and frame_indices(9, 8, 2) == [0, 3, 5, 8]  # raised to the minimum
    assert frame_count(3, 8, 2) == 2  # a clip shorter than the minimum keeps an even count
    assert frame_count(2000, 8, 2) == 500
    assert frame_count(10000, 10, 2) == 768  # the maximum
    with pytest.raises(ValueError, match="at least 2 frames"):
        frame_count(1, 8, 2)


def test_smart_resize_keeps_aspect_within_the_pixel_range():
    lo, hi = 128 * 28 * 28, 200704
    assert smart_resize(480, 480, lo, hi) == (448, 448)  # 476x476 is over 200704: scaled down
    assert smart_resize(480, 832, lo, hi) == (336, 588)
    assert smart_resize(720, 1280, lo, hi) == (336, 588)
    assert smart_resize(32, 48, lo, hi) == (280, 392)  # scaled up past 100352
    assert smart_resize(448, 224, lo, hi) == (448, 224)  # already multiples of 28 in range
    with pytest.raises(ValueError, match="aspect ratio"):
        smart_resize(10, 2500, lo, hi)


@pytest.mark.parametrize("layout", ["model.pth", "adapter", "full"])
def test_scores_equal_a_hand_built_forward(released, layout):
    root, reference, rm_head = released
    model = VideoAlign(str(root / layout), str(root / "base"), video_fps=8, use_norm=False, dtype=torch.float32)
    clips = videos()
    prompts = ["a red ball rolling", "a cat walking on the floor at night"]  # different lengths: padding
    scores = model.scores(clips, prompts)
    raw = torch.stack([scores[d] for d in ("VQ", "MQ", "TA")], dim=1)
    expected = torch.stack([hand_scores(root, reference, rm_head, clips[i], prompts[i]) for i in range(2)])
    torch.testing.assert_close(raw, expected, rtol=1e-4, atol=1e-4)
    assert raw.std() > 0.1  # the three tokens read different states


def with_model_config(root: Path, target: Path, **changes) -> Path:
    """A copy of the model.pth folder with model_config entries changed."""
    target.mkdir()
    (target / "checkpoint-100").mkdir()
    (target / "checkpoint-100" / "model.pth").symlink_to(root / "model.pth" / "checkpoint-100" / "model.pth")
    config = json.loads((root / "model.pth" / "model_config.json").read_text())
    config["model_config"].update(changes)
    (target / "model_config.json").write_text(json.dumps(config))
    return target


def test_three_output_head_reads_the_diagonal(released, tmp_path):
    root, reference, _ = released
    folder = with_model_config(root, tmp_path / "dim3", output_dim=3)
    state = torch.load(root / "model.pth" / "checkpoint-100" / "model.pth", weights_only=True)
    head = torch.randn(3, 32, generator=torch.Generator().manual_seed(3))
    state["base_model.model.rm_head.weight"] = head
    (folder / "checkpoint-100" / "model.pth").unlink()
    torch.save(state, folder / "checkpoint-100" / "model.pth")
    model = VideoAlign(str(folder), str(root / "base"), video_fps=8, use_norm=False, dtype=torch.float32)
    clips, prompts = videos(), ["a red ball rolling", "a dog"]
    scores = model.scores(clips, prompts)
    raw = torch.stack([scores[d] for d in ("VQ", "MQ", "TA")], dim=1)
    expected = torch.stack([hand_scores(root, reference, head, clips[i], prompts[i]) for i in range(2)])
    torch.testing.assert_close(raw, expected, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="model_config.output_dim=2 is not supported"):
        VideoAlign(str(with_model_config(root, tmp_path / "dim2", output_dim=2)), str(root / "base"))


def test_bf16_rounds_rotary_frequencies_as_the_reference_model_to(released):
    """The reference casts the loaded model with .to(bfloat16): every buffer, the rotary
    inv_freq of the decoder and the vision tower included, is bf16-rounded."""
    root, reference, _ = released
    model = VideoAlign(str(root / "model.pth"), str(root / "base"), video_fps=8, dtype=torch.bfloat16).model
    fresh = Qwen2VLForConditionalGeneration(reference.config)  # fp32 buffers, computed from the config
    buffers = dict(model.named_buffers())
    rotary = {name.rsplit(".", 2)[0] for name in buffers if name.endswith("inv_freq")}
    assert rotary == {"model.visual", "model.language_model"}  # the decoder's and the vision tower's
    for name, expected in fresh.named_buffers():
        if name.endswith("inv_freq"):
            assert buffers[name].dtype == torch.bfloat16
            assert torch.equal(buffers[name], expected.to(torch.bfloat16)), name
            assert not torch.equal(buffers[name].float(), expected)  # the rounding is real
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())


def test_model_config_torch_dtype_is_the_load_dtype(released, tmp_path):
    """model_config.torch_dtype=bfloat16: weights are loaded (rounded) in bf16 before the
    cast to the scoring dtype, as the reference's from_pretrained(torch_dtype=...) does."""
    root, _, _ = released
    folder = with_model_config(root, tmp_path / "bf16", torch_dtype="bfloat16")
    model = VideoAlign(str(folder), str(root / "base"), video_fps=8, dtype=torch.float32).model
    weight = model.model.language_model.layers[0].mlp.down_proj.weight
    assert weight.dtype == torch.float32
    assert torch.equal(weight, weight.to(torch.bfloat16).float())
    plain = VideoAlign(str(root / "model.pth"), str(root / "base"), video_fps=8, dtype=torch.float32).model
    other = plain.model.language_model.layers[0].mlp.down_proj.weight
    assert not torch.equal(other, other.to(torch.bfloat16).float())
    with pytest.raises(ValueError, match="model_config.torch_dtype='float99'"):
        VideoAlign(str(with_model_config(root, tmp_path / "bad", torch_dtype="float99")), str(root / "base"))


def test_one_forward_per_batch_serves_the_normalised_dimensions(released):
    root, _, _ = released
    prompts = ["a red ball", "a dog"]
    raw = VideoAlign(str(root / "model.pth"), str(root / "base"), video_fps=8, use_norm=False,
                     dtype=torch.float32).scores(videos(), prompts)
    normalised = {f"videoalign_{d.lower()}": (raw[d] - STATS[f"{d}_mean"]) / STATS[f"{d}_std"] for d in raw}
    models = {"videoalign": {"path": str(root / "model.pth"), "base": str(root / "base"), "dtype": "fp32"}}
    forwards = []

    def count(module, args):
        if type(module).__name__ == "Qwen2VLModel":
            forwards.append(1)

    hook = torch.nn.modules.module.register_module_forward_pre_hook(count)
    try:
        all_three = build_scorer(RewardConfig(weights={"videoalign_vq": 1.0, "videoalign_mq": 0.5,
                                                       "videoalign_ta": 0.5}, models=models, video_fps=8))
        scores = all_three(videos(), prompts)
        assert len(forwards) == 1
        assert list(scores) == ["videoalign_vq", "videoalign_mq", "videoalign_ta"]
        for name, expected in normalised.items():
            torch.testing.assert_close(scores[name], expected)
        two = build_scorer(RewardConfig(weights={"videoalign_ta": 1.0, "videoalign_vq": 1.0}, models=models,
                                        binary_thresholds={"videoalign_ta": 0.0}, video_fps=8))
        scores = two(videos(), prompts)
        assert len(forwards) == 2
    finally:
        hook.remove()
    assert list(scores) == ["videoalign_ta", "videoalign_vq"]  # only the configured ones
    torch.testing.assert_close(scores["videoalign_vq"], normalised["videoalign_vq"])
    assert scores["videoalign_ta"].tolist() == (normalised["videoalign_ta"] > 0).float().tolist()


def test_bad_checkpoint_folders_name_the_file(released, tmp_path):
    root, _, _ = released
    base = str(root / "base")
    with pytest.raises(FileNotFoundError, match="model_config.json"):
        VideoAlign(str(tmp_path), base, dtype=torch.float32)
    (tmp_path / "model_config.json").write_text((root / "adapter" / "model_config.json").read_text())
    with pytest.raises(FileNotFoundError, match="no checkpoint-N folder"):
        VideoAlign(str(tmp_path), base, dtype=torch.float32)
    (tmp_path / "checkpoint-7").mkdir()
    with pytest.raises(FileNotFoundError, match="checkpoint-7/adapter_model.safetensors does not exist"):
        VideoAlign(str(tmp_path), base, dtype=torch.float32)
    state = torch.load(root / "model.pth" / "checkpoint-100" / "model.pth", weights_only=True)
    state["base_model.model.rm_head.bias"] = torch.zeros(1)
    torch.save(state, tmp_path / "checkpoint-7" / "model.pth")
    with pytest.raises(ValueError, match=r"checkpoint-7/model.pth: 1 keys the model lacks .*rm_head.bias"):
        VideoAlign(str(tmp_path), base, dtype=torch.float32)
    (tmp_path / "checkpoint-7" / "model.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="checkpoint-7/model.pth: cannot be read"):
        VideoAlign(str(tmp_path), base, dtype=torch.float32)
    (tmp_path / "model_config.json").write_text("{")
    with pytest.raises(ValueError, match="model_config.json: not valid JSON"):
        VideoAlign(str(tmp_path), base, dtype=torch.float32)
    with pytest.raises(FileNotFoundError, match="reward.models.videoalign.base"):
        VideoAlign(str(root / "adapter"), str(tmp_path), dtype=torch.float32)


def test_a_caption_holding_a_reward_token_is_an_error(released):
    root, _, _ = released
    model = VideoAlign(str(root / "adapter"), str(root / "base"), video_fps=8, dtype=torch.float32)
    with pytest.raises(ValueError, match="yields 4 reward tokens"):
        model.scores(videos(), ["a red ball", "a dog <|TA_reward|>"])
