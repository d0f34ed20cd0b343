"""The shapes world: procedural text-to-video data (world), its detector (detect), the fixed
pixel-space VAE of its pretrained model (vae) and the RL demo's before/after picture."""
