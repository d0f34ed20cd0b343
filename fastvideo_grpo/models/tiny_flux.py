"""A complete diffusers-format FLUX.1 folder with tiny random weights.

Laid out like FLUX.1-dev (transformer/, vae/, text_encoder/ + tokenizer/ (CLIP-L),
text_encoder_2/ + tokenizer_2/ (T5), scheduler/, model_index.json), so that
preprocessing, training, export and `FluxPipeline.from_pretrained` run end to end on CPU.
The tokenizers are word-level over a small vocabulary, as in `tiny_hunyuan`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from transformers import T5Config, T5EncoderModel

from fastvideo_grpo.config import ModelConfig
from fastvideo_grpo.models.flux import tiny_transformer, tiny_vae
from fastvideo_grpo.models.tiny_hunyuan import tiny_clip_text_encoder, word_tokenizer

TEXT_DIM = 32
POOLED_DIM = 32


def tiny_model_config(seed: int = 0) -> ModelConfig:
    """The tiny architecture the folder holds; `build_policy` on it gives the same weights."""
    return ModelConfig(family="flux", size="tiny", tiny_heads=4, tiny_head_dim=16, tiny_text_dim=TEXT_DIM,
                       tiny_pooled_dim=POOLED_DIM, guidance_scale=3.5, init_seed=seed)


def write_tiny_flux_folder(path: str | Path, seed: int = 0) -> Path:
    path = Path(path)
    # The transformer and VAE first, seeded as build_policy seeds the in-process tiny model.
    model_cfg = tiny_model_config(seed)
    torch.manual_seed(seed)
    tiny_transformer(model_cfg, TEXT_DIM, POOLED_DIM).save_pretrained(path / "transformer")
    tiny_vae(model_cfg).save_pretrained(path / "vae")
    t5_tok = word_tokenizer(["<pad>", "<unk>", "</s>"], None, "</s>", 512)
    clip, clip_tok = tiny_clip_text_encoder(POOLED_DIM)
    t5 = T5EncoderModel(T5Config(vocab_size=len(t5_tok), d_model=TEXT_DIM, d_ff=64, d_kv=8, num_layers=2,
                                 num_heads=4, pad_token_id=t5_tok.pad_token_id, eos_token_id=t5_tok.eos_token_id))
    clip.save_pretrained(path / "text_encoder")
    clip_tok.save_pretrained(path / "tokenizer")
    t5.save_pretrained(path / "text_encoder_2")
    t5_tok.save_pretrained(path / "tokenizer_2")
    # FLUX.1-dev's scheduler config: resolution-dependent shift.
    FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                    base_image_seq_len=256, max_image_seq_len=4096).save_pretrained(path / "scheduler")
    (path / "model_index.json").write_text(json.dumps({
        "_class_name": "FluxPipeline",
        "_diffusers_version": "0.42.1",
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "text_encoder_2": ["transformers", "T5EncoderModel"],
        "tokenizer": ["transformers", "PreTrainedTokenizerFast"],
        "tokenizer_2": ["transformers", "PreTrainedTokenizerFast"],
        "transformer": ["diffusers", "FluxTransformer2DModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }, indent=2))
    return path


if __name__ == "__main__":
    import sys

    print(write_tiny_flux_folder(sys.argv[1]))
