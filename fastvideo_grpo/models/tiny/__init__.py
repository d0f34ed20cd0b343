"""Tiny random-weight models of each family: tests, the CPU demo and `model.size: tiny`.

Each family's module builds its network and VAE as `build_policy` does for `model.size:
tiny` (same configs, same seeding) and writes a complete diffusers-format folder through
the pipeline's own `save_pretrained`:

    python -m fastvideo_grpo.models.tiny FAMILY OUT_DIR
"""
