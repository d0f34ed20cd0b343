"""Tiny random text encoders in the roles of the pipelines' own (CLIP-L, T5, Llama), each
with a word-level tokenizer over a small vocabulary: unknown words map to one token."""

from __future__ import annotations

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import (CLIPTextConfig, CLIPTextModel, LlamaConfig, LlamaModel, PreTrainedTokenizerFast, T5Config,
                          T5EncoderModel)

# The colour words of the `color` rule reward (rewards.rules.COLORS; tests/test_tiny.py
# checks they agree), so that the tiny encoders tell the demo's colours apart.
COLOR_WORDS = ("red", "green", "blue", "yellow", "cyan", "magenta", "purple", "orange")
WORDS = sorted(set(
    "a an the of in on at with and to from over under down up across is are by "
    "ball ocean wave forest wind taxi street flower morning jellyfish water kite hill fire night "
    "car bird sky cat dog city river mountain rolling swaying driving opening drifting flying crackling "
    "bouncing floor deep walking running".split()) | set(COLOR_WORDS))


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


def tiny_t5_text_encoder(hidden_size: int) -> tuple[T5EncoderModel, PreTrainedTokenizerFast]:
    """A 2-layer random T5 encoder (FLUX's T5-XXL role); its tokenizer adds only </s>."""
    tokenizer = word_tokenizer(["<pad>", "<unk>", "</s>"], None, "</s>", 512)
    model = T5EncoderModel(T5Config(vocab_size=len(tokenizer), d_model=hidden_size, d_ff=64, d_kv=8, num_layers=2,
                                    num_heads=4, pad_token_id=tokenizer.pad_token_id,
                                    eos_token_id=tokenizer.eos_token_id))
    return model, tokenizer


# Llama-3's pre-tokenizer (the Split regex of its tokenizer.json): words with their leading
# space, digits in runs of up to 3, punctuation runs, newline runs.
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")


def llama3_word_tokenizer(max_length: int) -> PreTrainedTokenizerFast:
    """Llama-3's own pre-tokenization (its chat special tokens whole, its split regex, then
    byte-level symbols: " red" -> "Ġred") with one token per piece, and only BOS added.

    Every piece of diffusers' default HunyuanVideo template is a single token of Llama-3's
    BPE vocabulary, so this tokenizer splits the text before the prompt as Llama-3 does: BOS
    and 94 pieces, the template's crop_start of 95. The pipeline's default template then
    crops exactly the template away here too (with fewer tokens it crops the prompt, and the
    all-zero text mask gives NaN frames)."""
    special = ["<pad>", "<unk>", "<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
    words = [form for word in WORDS for form in (word, "Ġ" + word)]  # the prompt's first word has no space
    vocab = {token: i for i, token in enumerate(special + words)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = None
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_SPLIT), "isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(special)
    tok.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", special_tokens=[("<|begin_of_text|>", vocab["<|begin_of_text|>"])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", eos_token="<|eot_id|>",
                                   bos_token="<|begin_of_text|>", model_max_length=max_length, padding_side="right")


def tiny_llama_text_encoder(hidden_size: int) -> tuple[LlamaModel, PreTrainedTokenizerFast]:
    """A 3-layer random Llama (HunyuanVideo's Llava-Llama-3 role) with its tokenizer."""
    tokenizer = llama3_word_tokenizer(1024)
    model = LlamaModel(LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=64,
                                   num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                                   max_position_embeddings=1024, pad_token_id=tokenizer.pad_token_id))
    return model, tokenizer
