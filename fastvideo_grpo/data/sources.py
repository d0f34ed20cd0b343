"""Where a run's prompts and their conditioning come from."""

from __future__ import annotations

from fastvideo_grpo.config import Config
from fastvideo_grpo.data.embeddings import EmbeddingDataset, ImageLatents, TinyRandomPrompts, WithImageLatents
from fastvideo_grpo.data.preprocess import read_prompt_file
from fastvideo_grpo.models.tiny.hashing_text_encoder import TinyTextEncoder


def build_prompt_source(cfg: Config) -> EmbeddingDataset | TinyRandomPrompts | WithImageLatents:
    """Precomputed embeddings (data.embeddings_dir), or for the tiny model a prompt file
    encoded by a seeded random text encoder; with data.image_latents_dir, each prompt's
    first-frame latent too."""
    if cfg.data.embeddings_dir:
        source = EmbeddingDataset(cfg.data.embeddings_dir)
    else:
        encoder = TinyTextEncoder(cfg.model.tiny_text_dim, cfg.model.tiny_pooled_dim, cfg.data.max_text_tokens,
                                  seed=cfg.model.init_seed)
        source = TinyRandomPrompts(read_prompt_file(cfg.data.prompts_file)[0], encoder)
    if cfg.data.image_latents_dir:
        return WithImageLatents(source, ImageLatents(cfg.data.image_latents_dir))
    return source
