"""Where a run's prompts and their conditioning come from."""

from __future__ import annotations

import json
from pathlib import Path

from fastvideo_grpo.config import TINY_TEXT_ENCODER_FILE, Config, ConfigError
from fastvideo_grpo.data.embeddings import EmbeddingDataset, ImageLatents, TinyRandomPrompts, WithImageLatents
from fastvideo_grpo.data.preprocess import read_prompt_file
from fastvideo_grpo.models.tiny.hashing_text_encoder import TinyTextEncoder


def check_tiny_text_encoder(cfg: Config) -> None:
    """A pretrained tiny folder (model.path) was trained on the encoder its text_encoder.json
    describes; any other would feed it embeddings it never saw. Raises ConfigError."""
    file = Path(cfg.model.path) / TINY_TEXT_ENCODER_FILE
    if not cfg.model.path or not file.is_file():
        return
    sections = {"model": cfg.model, "data": cfg.data}
    for key, value in json.loads(file.read_text()).items():
        section = next((name for name, s in sections.items() if hasattr(s, key)), None)
        if section is not None and getattr(sections[section], key) != value:
            raise ConfigError(f"{section}.{key}={getattr(sections[section], key)!r} does not match {file}: the "
                              f"model was trained with {value!r}")


def build_prompt_source(cfg: Config) -> EmbeddingDataset | TinyRandomPrompts | WithImageLatents:
    """Precomputed embeddings (data.embeddings_dir), or for the tiny model a prompt file
    encoded by a seeded random text encoder; with data.image_latents_dir, each prompt's
    first-frame latent too."""
    if cfg.data.embeddings_dir:
        source = EmbeddingDataset(cfg.data.embeddings_dir)
    else:
        check_tiny_text_encoder(cfg)
        encoder = TinyTextEncoder(cfg.model.tiny_text_dim, cfg.model.tiny_pooled_dim, cfg.data.max_text_tokens,
                                  seed=cfg.model.init_seed)
        source = TinyRandomPrompts(read_prompt_file(cfg.data.prompts_file)[0], encoder)
    if cfg.data.image_latents_dir:
        return WithImageLatents(source, ImageLatents(cfg.data.image_latents_dir))
    return source
