"""A complete diffusers-format HunyuanVideo folder with tiny random weights.

Laid out like the real one (transformer/, vae/, text_encoder/ + tokenizer/ (Llama),
text_encoder_2/ + tokenizer_2/ (CLIP-L), scheduler/, model_index.json), so that
preprocessing, training, export and `HunyuanVideoPipeline.from_pretrained` run end to
end on CPU. The tokenizers are word-level over a small vocabulary: unknown words map to
one token. `prompt_template.json` holds the template with this tokenizer's crop_start.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video import DEFAULT_PROMPT_TEMPLATE
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import CLIPTextConfig, CLIPTextModel, LlamaConfig, LlamaModel, PreTrainedTokenizerFast

from fastvideo_grpo.config import ModelConfig
from fastvideo_grpo.models.hunyuan_video import tiny_transformer, tiny_vae
from fastvideo_grpo.rewards.rules import COLORS

PROMPT_TEMPLATE_FILE = "prompt_template.json"
TEXT_DIM = 32
POOLED_DIM = 32
WORDS = sorted(set(
    "a an the of in on at with and to from over under down up across is are by "
    "ball ocean wave forest wind taxi street flower morning jellyfish water kite hill fire night "
    "car bird sky cat dog city river mountain rolling swaying driving opening drifting flying crackling "
    "bouncing floor deep walking running".split()) | set(COLORS))


def word_tokenizer(special: list[str], bos: str | None, eos: str, max_length: int) -> PreTrainedTokenizerFast:
    vocab = {token: i for i, token in enumerate(special + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = None
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split("\n", "isolated"), pre_tokenizers.WhitespaceSplit()])
    tokens = ([bos] if bos else []) + ["$A", eos]
    tok.post_processor = processors.TemplateProcessing(
        single=" ".join(tokens), special_tokens=[(t, vocab[t]) for t in (bos, eos) if t])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", eos_token=eos,
                                   bos_token=bos, model_max_length=max_length, padding_side="right")


def tiny_clip_text_encoder(hidden_size: int, initializer_factor: float = 1.0
                           ) -> tuple[CLIPTextModel, PreTrainedTokenizerFast]:
    """A 2-layer random CLIP text encoder (CLIP-L's role) with its word-level tokenizer."""
    tokenizer = word_tokenizer(["<pad>", "<unk>", "<|startoftext|>", "<|endoftext|>"], "<|startoftext|>",
                               "<|endoftext|>", 77)
    model = CLIPTextModel(CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=64,
                                         num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=77,
                                         pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                                         eos_token_id=tokenizer.eos_token_id, initializer_factor=initializer_factor))
    return model, tokenizer


def tiny_prompt_template(tokenizer: PreTrainedTokenizerFast) -> dict:
    """The default template with crop_start = this tokenizer's token count before the prompt."""
    prefix = DEFAULT_PROMPT_TEMPLATE["template"].split("{}")[0]
    return {"template": DEFAULT_PROMPT_TEMPLATE["template"], "crop_start": len(tokenizer(prefix).input_ids) - 1}


def write_tiny_hunyuan_folder(path: str | Path, seed: int = 0) -> Path:
    path = Path(path)
    # The transformer and VAE first, seeded as build_policy seeds the in-process tiny model.
    model_cfg = ModelConfig(size="tiny", tiny_heads=4, tiny_head_dim=16, init_seed=seed)
    torch.manual_seed(seed)
    tiny_transformer(model_cfg, TEXT_DIM, POOLED_DIM).save_pretrained(path / "transformer")
    tiny_vae(model_cfg).save_pretrained(path / "vae")
    llama_tok = word_tokenizer(["<pad>", "<unk>", "<|begin_of_text|>", "<|eot_id|>"], "<|begin_of_text|>",
                               "<|eot_id|>", 1024)
    llama = LlamaModel(LlamaConfig(vocab_size=len(llama_tok), hidden_size=TEXT_DIM, intermediate_size=64,
                                   num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                                   max_position_embeddings=1024, pad_token_id=llama_tok.pad_token_id))
    clip, clip_tok = tiny_clip_text_encoder(POOLED_DIM, initializer_factor=5.0)
    # Real encoders' hidden states are O(1) and their pooled outputs tell prompts apart; with
    # the default init the Llama states the pipeline reads are ~0.01 and the random CLIP's
    # pooled outputs of different prompts have cosine ~0.54 (0.37 with initializer_factor 5),
    # and the demo policy learns the prompts' colours far more slowly.
    torch.nn.init.normal_(llama.embed_tokens.weight, std=1.0)
    llama.save_pretrained(path / "text_encoder")
    llama_tok.save_pretrained(path / "tokenizer")
    clip.save_pretrained(path / "text_encoder_2")
    clip_tok.save_pretrained(path / "tokenizer_2")
    FlowMatchEulerDiscreteScheduler(shift=7.0).save_pretrained(path / "scheduler")
    (path / "model_index.json").write_text(json.dumps({
        "_class_name": "HunyuanVideoPipeline",
        "_diffusers_version": "0.42.1",
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
        "text_encoder": ["transformers", "LlamaModel"],
        "text_encoder_2": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "PreTrainedTokenizerFast"],
        "tokenizer_2": ["transformers", "PreTrainedTokenizerFast"],
        "transformer": ["diffusers", "HunyuanVideoTransformer3DModel"],
        "vae": ["diffusers", "AutoencoderKLHunyuanVideo"],
    }, indent=2))
    (path / PROMPT_TEMPLATE_FILE).write_text(json.dumps(tiny_prompt_template(llama_tok), indent=2))
    return path


if __name__ == "__main__":
    import sys

    print(write_tiny_hunyuan_folder(sys.argv[1]))
