"""What the families' tiny random-weight models share (tests, the CPU demo, `model.size:
tiny`): tiny text encoders, the hashing text encoder, a tiny AutoencoderKL.

Each family's own tiny model lives in its folder (models/<family>/tiny.py): it builds the
network and VAE as `build_policy` does for `model.size: tiny` (same configs, same seeding)
and writes a complete diffusers-format folder through the pipeline's own `save_pretrained`
(`ModelFamily.write_tiny_folder`):

    python -m fastvideo_grpo.models.tiny FAMILY OUT_DIR
"""
