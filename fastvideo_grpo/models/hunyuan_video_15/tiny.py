"""Tiny HunyuanVideo-1.5: the transformer and VAE of `model.size: tiny`, and a complete
diffusers-format folder with tiny random weights.

The folder is laid out like hunyuanvideo-community/HunyuanVideo-1.5-480p_t2v (transformer/,
vae/, text_encoder/ + tokenizer/ (Qwen2.5-VL's text model), text_encoder_2/ + tokenizer_2/
(ByT5), scheduler/, guider/, model_index.json), so that preprocessing, training, export and
`HunyuanVideo15Pipeline.from_pretrained` run end to end on CPU. Its Qwen2 tokenizer splits
the pipeline's chat template as Qwen2.5 does, so the pipeline's fixed crop (108 tokens)
removes exactly the template before the prompt.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import torch
from diffusers import (AutoencoderKLHunyuanVideo15, FlowMatchEulerDiscreteScheduler, HunyuanVideo15Pipeline,
                       HunyuanVideo15Transformer3DModel)
from diffusers.guiders import ClassifierFreeGuidance
from tokenizers import AddedToken, Regex, Tokenizer, models, pre_tokenizers, trainers
from transformers import (ByT5Tokenizer, Qwen2_5_VLTextConfig, Qwen2_5_VLTextModel, Qwen2Tokenizer, T5Config,
                          T5EncoderModel)
from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

from fastvideo_grpo.config import ModelConfig
from fastvideo_grpo.models.tiny.text_encoders import WORDS

TEXT_DIM = 32
# The tiny ByT5's width (text_embed_2_dim). A packed glyph token is GLYPH_DIM + 1 wide
# (policy.py): model.tiny_pooled_dim is a multiple of it, and the in-process encoder's random
# pooled vector packs no valid glyph token (as a prompt without quoted text).
GLYPH_DIM = 16
# The tiny image-embedding width (SigLIP's 1152 in the released model; unused by T2V).
IMAGE_DIM = 16
# The released 480p T2V's sampling defaults (its flow_shift and guidance scale).
FLOW_SHIFT = 5.0
GUIDANCE_SCALE = 6.0
# Qwen2.5's chat format for text messages (its chat template, without the vision parts).
QWEN_CHAT_TEMPLATE = ("{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}"
                      "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
QWEN_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def tiny_transformer(cfg: ModelConfig, text_dim: int) -> HunyuanVideo15Transformer3DModel:
    head_dim = cfg.tiny_head_dim
    # RoPE splits each head's rotation pairs over (t, h, w).
    pairs = head_dim // 2
    pairs_t = max(1, pairs // 4)
    pairs_h = (pairs - pairs_t) // 2
    return HunyuanVideo15Transformer3DModel(
        in_channels=2 * 32 + 1,  # the latents, the condition latents and their mask
        out_channels=32,
        num_attention_heads=cfg.tiny_heads,
        attention_head_dim=head_dim,
        num_layers=cfg.tiny_layers,
        num_refiner_layers=1,
        mlp_ratio=2.0,
        patch_size=1,
        patch_size_t=1,
        text_embed_dim=text_dim,
        text_embed_2_dim=GLYPH_DIM,
        image_embed_dim=IMAGE_DIM,
        rope_axes_dim=(2 * pairs_t, 2 * pairs_h, 2 * (pairs - pairs_t - pairs_h)),
        target_size=64,
        task_type="t2v",
    )


def tiny_vae(cfg: ModelConfig) -> AutoencoderKLHunyuanVideo15:
    """HunyuanVideo-1.5's VAE layout (4x temporal, 16x spatial, 32 channels) at
    model.tiny_vae_channels channels per level (its encoder groups them by 64: at least 64)."""
    return AutoencoderKLHunyuanVideo15(latent_channels=32, block_out_channels=(max(64, cfg.tiny_vae_channels),) * 5,
                                       layers_per_block=1)


def tiny_networks(cfg: ModelConfig, text_dim: int) -> tuple[HunyuanVideo15Transformer3DModel,
                                                            AutoencoderKLHunyuanVideo15]:
    """The transformer, then the VAE, from the seed model.init_seed."""
    torch.manual_seed(cfg.init_seed)
    return tiny_transformer(cfg, text_dim), tiny_vae(cfg)


def tiny_model_config(seed: int = 0) -> ModelConfig:
    """The tiny architecture the folder holds (that of assets/configs/tiny_hunyuan_video_15_t2v.yaml);
    `build_policy` on it gives the same weights."""
    return ModelConfig(family="hunyuan_video_15", size="tiny", tiny_heads=4, tiny_head_dim=16, tiny_text_dim=TEXT_DIM,
                       tiny_pooled_dim=GLYPH_DIM + 1, tiny_vae_channels=64, cfg_scale=GUIDANCE_SCALE, init_seed=seed)


def system_message() -> str:
    """HunyuanVideo15Pipeline's system prompt (the default of its text encoding)."""
    return inspect.signature(HunyuanVideo15Pipeline._get_mllm_prompt_embeds).parameters["system_message"].default


def qwen2_tokenizer() -> Qwen2Tokenizer:
    """Qwen2's tokenizer (its pre-tokenizer regex, byte-level BPE, chat special tokens) over a
    small BPE vocabulary learned from the pipeline's system prompt and the tiny word list, in
    which every piece of the template is one token, as in Qwen2.5's vocabulary."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), "isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    trainer = trainers.BpeTrainer(vocab_size=4096, special_tokens=QWEN_SPECIAL, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    words = sorted(WORDS)
    bpe.train_from_iterator([system_message(), "system\nuser\nassistant\n", " ".join(words), "\n".join(words)],
                            trainer)
    model = json.loads(bpe.to_str())["model"]
    tokenizer = Qwen2Tokenizer(vocab=model["vocab"], merges=[tuple(m) for m in model["merges"]],
                               chat_template=QWEN_CHAT_TEMPLATE, model_max_length=32768)
    tokenizer.add_tokens([AddedToken(t, special=True) for t in QWEN_SPECIAL[1:]], special_tokens=True)
    return tokenizer


def tiny_qwen_text_encoder(hidden_size: int) -> tuple[Qwen2_5_VLTextModel, Qwen2Tokenizer]:
    """A 3-layer random Qwen2.5-VL text model (the pipeline reads the hidden state two layers
    below the last) with its tokenizer."""
    tokenizer = qwen2_tokenizer()
    heads = 4
    half = hidden_size // heads // 2  # rotation pairs per head, split over mRoPE's (t, h, w)
    model = Qwen2_5_VLTextModel(Qwen2_5_VLTextConfig(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=64, num_hidden_layers=3,
        num_attention_heads=heads, num_key_value_heads=2, max_position_embeddings=2048,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0,
                         "mrope_section": [half - 2 * (half // 4), half // 4, half // 4]},
        pad_token_id=tokenizer.pad_token_id, bos_token_id=None, eos_token_id=tokenizer.eos_token_id))
    # Real encoders' hidden states are O(1); the default init gives ~0.01.
    torch.nn.init.normal_(model.embed_tokens.weight, std=1.0)
    return model, tokenizer


def tiny_byt5_text_encoder(hidden_size: int) -> tuple[T5EncoderModel, ByT5Tokenizer]:
    """A 2-layer random ByT5 encoder (the glyph encoder) with ByT5's byte tokenizer."""
    tokenizer = ByT5Tokenizer()
    model = T5EncoderModel(T5Config(vocab_size=len(tokenizer), d_model=hidden_size, d_ff=32, d_kv=4, num_layers=2,
                                    num_heads=4, pad_token_id=tokenizer.pad_token_id,
                                    eos_token_id=tokenizer.eos_token_id))
    return model, tokenizer


def write_folder(path: str | Path, seed: int = 0) -> Path:
    path = Path(path)
    # The transformer and VAE first, seeded as build_policy seeds the in-process tiny model;
    # the text encoders continue from that random state.
    transformer, vae = tiny_networks(tiny_model_config(seed), TEXT_DIM)
    qwen, qwen_tokenizer = tiny_qwen_text_encoder(TEXT_DIM)
    byt5, byt5_tokenizer = tiny_byt5_text_encoder(GLYPH_DIM)
    HunyuanVideo15Pipeline(text_encoder=qwen, tokenizer=qwen_tokenizer, transformer=transformer, vae=vae,
                           scheduler=FlowMatchEulerDiscreteScheduler(shift=FLOW_SHIFT), text_encoder_2=byt5,
                           tokenizer_2=byt5_tokenizer,
                           guider=ClassifierFreeGuidance(guidance_scale=GUIDANCE_SCALE)).save_pretrained(path)
    return path
