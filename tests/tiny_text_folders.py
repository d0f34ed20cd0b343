"""Tiny FLUX and Stable Diffusion folders holding only what text preprocessing loads."""

import json
from pathlib import Path

import torch
from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler
from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

from fastvideo_grpo.models.tiny_hunyuan import word_tokenizer


def tiny_clip(folder: Path, hidden: int = 32) -> None:
    tok = word_tokenizer(["<pad>", "<unk>", "<|startoftext|>", "<|endoftext|>"], "<|startoftext|>", "<|endoftext|>", 77)
    CLIPTextModel(CLIPTextConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=64, num_hidden_layers=2,
                                 num_attention_heads=4, max_position_embeddings=77, pad_token_id=tok.pad_token_id,
                                 bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
                  ).save_pretrained(folder / "text_encoder")
    tok.save_pretrained(folder / "tokenizer")


def write_index(folder: Path, index: dict) -> None:
    (folder / "model_index.json").write_text(json.dumps({"_diffusers_version": "0.42.1", **index}))


def tiny_flux_text_folder(folder: Path) -> Path:
    torch.manual_seed(0)
    tiny_clip(folder)
    t5_tok = word_tokenizer(["<pad>", "<unk>", "</s>"], None, "</s>", 512)
    T5EncoderModel(T5Config(vocab_size=len(t5_tok), d_model=32, d_ff=64, d_kv=8, num_layers=2, num_heads=4,
                            pad_token_id=t5_tok.pad_token_id, eos_token_id=t5_tok.eos_token_id)
                   ).save_pretrained(folder / "text_encoder_2")
    t5_tok.save_pretrained(folder / "tokenizer_2")
    FlowMatchEulerDiscreteScheduler(shift=3.0).save_pretrained(folder / "scheduler")
    write_index(folder, {
        "_class_name": "FluxPipeline", "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "PreTrainedTokenizerFast"],
        "text_encoder_2": ["transformers", "T5EncoderModel"],
        "tokenizer_2": ["transformers", "PreTrainedTokenizerFast"],
        "transformer": ["diffusers", "FluxTransformer2DModel"], "vae": ["diffusers", "AutoencoderKL"]})
    return folder


def tiny_sd_text_folder(folder: Path) -> Path:
    torch.manual_seed(0)
    tiny_clip(folder)
    DDIMScheduler().save_pretrained(folder / "scheduler")
    write_index(folder, {
        "_class_name": "StableDiffusionPipeline", "scheduler": ["diffusers", "DDIMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "PreTrainedTokenizerFast"],
        "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
        "safety_checker": [None, None], "feature_extractor": [None, None], "requires_safety_checker": False})
    return folder
