"""Training configuration: nested dataclasses, loaded from YAML with dotted CLI overrides.

Every field is validated on load; an unknown key or a bad value raises `ConfigError`
naming the dotted key, the value and what was expected.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml


class ConfigLoader(yaml.SafeLoader):
    """YAML with YAML 1.2's booleans: only true and false (any case) are booleans, so the
    documented values `on`, `off`, `yes` and `no` (e.g. model.vae_tiling: off) stay strings
    instead of turning into YAML 1.1's True and False."""


ConfigLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
ConfigLoader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                                   list("tTfF"))


def parse_yaml(text: str, source: str = "") -> Any:
    """`text` as ConfigLoader reads it, except that a key given twice in one mapping (which
    YAML silently settles for the last) is an error naming `source`, the key and both lines."""
    loader = ConfigLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_unique_keys(node, source)
        return loader.construct_document(node)
    finally:
        loader.dispose()


class ConfigError(ValueError):
    pass


# In a pretrained tiny folder: the settings of the in-process text encoder it was trained
# with (tiny_text_dim, tiny_pooled_dim, init_seed, max_text_tokens).
TINY_TEXT_ENCODER_FILE = "text_encoder.json"


@dataclass
class ModelConfig:
    # A name in models.registry.FAMILIES; models.check_model_config checks it (and what the
    # family supports: parallel.sp_size > 1, its own rules), as config cannot import the models
    # it configures.
    family: str = "hunyuan_video"
    # Modules, or paths of .py files, imported before model.family is looked up (trainer and
    # every rank, planner, export); each registers families with
    # fastvideo_grpo.models.register_family.
    plugins: list[str] = field(default_factory=list)
    # Local diffusers-format folder (transformer/ or unet/, vae/, ...). With size "tiny", empty
    # (random weights) or a pretrained tiny HunyuanVideo folder (assets/shapes_model) whose
    # transformer and VAE are loaded, and whose TINY_TEXT_ENCODER_FILE holds the settings of
    # the in-process text encoder it was trained with.
    path: str = ""
    # "tiny" builds a small model of the same architecture from config with seeded random
    # weights (tests, demo); "full" loads `path`.
    size: Literal["tiny", "full"] = "full"
    # Compute dtype of the transformer and VAE forward passes.
    dtype: Literal["fp32", "bf16"] = "bf16"
    # Attention kernels (models/attention.py), usable wherever their package imports:
    # "sdpa": torch's scaled_dot_product_attention (its flash kernel where no mask is left);
    # "flash": flash-attn 2's flash_attn_func, and flash_attn_varlen_func for a batch whose
    # prompts keep different numbers of text tokens; "flash_varlen": flash_attn_varlen_func
    # for every call; "flash3", "flash3_varlen": the same with flash-attn 3
    # (flash_attn_interface, Hopper). SD's UNet calls SDPA itself whatever the name.
    attention: Literal["sdpa", "flash", "flash_varlen", "flash3", "flash3_varlen"] = "sdpa"
    # Decode in overlapping spatial/temporal tiles (diffusers' enable_tiling, as DanceGRPO
    # decodes): 53 frames at 480p do not fit untiled next to a training step. "auto": on at
    # full size, off for the tiny model.
    vae_tiling: Literal["auto", "on", "off"] = "auto"
    # HunyuanVideo and FLUX.1-dev are guidance-distilled: the guidance scale is an input embedding
    # (HunyuanVideo 6.0; FLUX.1-dev 3.5, as the FLUX configs set).
    guidance_scale: float = 6.0
    # Classifier-free guidance (two branches, conditional and empty-prompt, in one batched
    # forward) in rollout and training alike; 1 disables it. Above 1 the trainer makes one
    # optimizer step per iteration (all micro-batches accumulated), as the paper does where
    # CFG is needed (SD, I2V); the empty-prompt embedding comes from data_preprocess/.
    cfg_scale: float = 1.0
    # Wan2.2 A14B's mixture of two experts (a model.path folder with transformer_2 and
    # boundary_ratio, or model.tiny_boundary_ratio > 0): "high" trains `transformer` (timesteps
    # at or above boundary_ratio * num_train_timesteps), "low" trains `transformer_2` (below
    # it), "both" both; empty: both. The rollout always samples with both; the update trains
    # only the steps of a trained expert; a frozen expert has no gradients, optimizer state or
    # checkpoint entries. Set for a one-expert model, a ConfigError.
    train_experts: Literal["", "high", "low", "both"] = ""
    # The low-noise expert's classifier-free guidance scale (WanPipeline's guidance_scale_2);
    # 0: model.cfg_scale, as the pipeline's default. Two-expert models only.
    cfg_scale_2: float = 0.0
    # The released architecture the planner builds when model.path is empty, by its name among
    # the family's published ones (wan: Wan2.1-T2V-1.3B, Wan2.1-T2V-14B, Wan2.2-T2V-A14B);
    # empty: the family's first.
    published: str = ""
    init_seed: int = 0
    # LoRA on the blocks' attention and MLP linears (0: train all weights).
    lora_rank: int = 0
    # LoRA scale numerator; 0 means lora_alpha = lora_rank.
    lora_alpha: float = 0.0
    # torch.compile each transformer block in place after FSDP2 wraps it (parallel/fsdp.py:
    # apply_compile); parameter names and checkpoints are those of the eager model.
    compile: bool = False
    # Overrides of the tiny architecture (only read when size is "tiny").
    tiny_layers: int = 1
    tiny_single_layers: int = 1
    tiny_heads: int = 2
    tiny_head_dim: int = 8
    tiny_text_dim: int = 16
    tiny_pooled_dim: int = 8
    tiny_vae_channels: int = 16
    # Wan: > 0 builds two tiny experts switched at this boundary_ratio (Wan2.2 A14B's layout,
    # `python -m fastvideo_grpo.models.tiny wan_moe`); 0: one transformer.
    tiny_boundary_ratio: float = 0.0

    def problems(self, cfg: Config) -> list[str]:
        m, found = self, Problems()
        for key in ("tiny_layers", "tiny_heads", "tiny_head_dim", "tiny_text_dim", "tiny_pooled_dim",
                    "tiny_vae_channels"):
            found.require(getattr(m, key) >= 1, f"model.{key}", getattr(m, key), ">= 1")
        found.require(m.tiny_single_layers >= 0, "model.tiny_single_layers", m.tiny_single_layers, ">= 0")
        found.require(m.cfg_scale >= 1, "model.cfg_scale", m.cfg_scale, ">= 1 (1 disables guidance)")
        found.require(m.cfg_scale_2 == 0 or m.cfg_scale_2 >= 1, "model.cfg_scale_2", m.cfg_scale_2,
                      "0 (model.cfg_scale) or >= 1")
        found.require(0 <= m.tiny_boundary_ratio < 1, "model.tiny_boundary_ratio", m.tiny_boundary_ratio,
                      "in [0, 1) (0: one expert)")
        found.require(m.lora_rank >= 0, "model.lora_rank", m.lora_rank, ">= 0")
        found.require(m.size == "tiny" or bool(m.path), "model.path", m.path,
                      "a local diffusers-format folder when model.size is 'full'")
        # Whether model.family loads such a folder, models.check_model_config checks.
        pretrained_tiny = (Path(m.path) / TINY_TEXT_ENCODER_FILE).is_file()
        found.require(m.size == "full" or not m.path or pretrained_tiny, "model.path", m.path,
                      "empty with model.size: tiny, which builds the tiny model in process and would ignore this "
                      f"folder (unless it is a pretrained tiny folder holding {TINY_TEXT_ENCODER_FILE}, as "
                      "assets/shapes_model); set model.size=full to train the folder's model")
        return found


@dataclass
class DataConfig:
    # Precomputed text embeddings (data_preprocess/): the manifest and shards' folder.
    embeddings_dir: str = ""
    # Without embeddings_dir (tiny model only): prompts encoded in process by a seeded
    # random-embedding encoder over whitespace tokens, with up to max_text_tokens tokens.
    prompts_file: str = "assets/prompts/tiny.txt"
    max_text_tokens: int = 16
    shuffle: bool = True
    # Image-to-video: first-frame latents (data_preprocess/preprocess_latents.py), one per
    # prompt in the prompts' order.
    image_latents_dir: str = ""

    def problems(self, cfg: Config) -> list[str]:
        found = Problems()
        found.require(cfg.model.size == "tiny" or bool(self.embeddings_dir), "data.embeddings_dir",
                      self.embeddings_dir,
                      "a folder of precomputed embeddings (data_preprocess/) for a full-size model")
        return found


@dataclass
class SamplingConfig:
    num_steps: int = 16
    eta: float = 0.25
    shift: float = 5.0
    sde_type: Literal["dance", "flow_grpo", "cps"] = "dance"
    # The log-prob of a CPS step: "gaussian", the full Gaussian log-density as for the other
    # SDE types, so exp(log-ratio) is the policy ratio PPO's clip is defined on, one clip_range
    # means the same for every sde_type, and GRPO-Guard's ratio_norm / step_reweight hold;
    # "flow_grpo", Flow-GRPO's -mean((x - mean)^2), whose log-ratio is 2 std^2 times the
    # Gaussian one, so that clip ranges published for Flow-GRPO(-Fast) CPS carry over (1e-5).
    cps_log_prob: Literal["gaussian", "flow_grpo"] = "gaussian"
    height: int = 480
    width: int = 480
    num_frames: int = 53
    # Frame rate of the written videos, and (through reward.video_fps) the rate the video
    # rewards assume: VideoAlign samples 2 frames per second of video, so 53 frames at 8 fps
    # (6.6 s, DanceGRPO's --fps 8) give it 13 frames, at 16 fps only 6.
    fps: int = 8
    # Samples per prompt (G); all share one initial noise unless shared_noise is false
    # (an ablation: the paper finds independent noise destabilises training).
    group_size: int = 24
    shared_noise: bool = True
    # Samples per transformer call during rollout; training micro-batches mirror it.
    rollout_batch_size: int = 1
    # Decoded videos per VAE call.
    decode_batch_size: int = 1
    # Where the trajectory (G x (N+1) latents per prompt, and their log-probs) is kept: on
    # the training device, or in host memory for long videos, moved per micro-batch.
    trajectory_device: Literal["device", "cpu"] = "device"
    # SDE steps per iteration, a window of the schedule (step_plan.py); 0: every step is an
    # SDE step (DanceGRPO). Only the window is trained; outside it ode_solver runs.
    sde_window_size: int = 0
    # Where the window is: "progressive" (MixGRPO) starts at step 0 and moves by
    # sde_window_stride (at most sde_window_size) every sde_window_every iterations while its
    # start is trainable (<= N-2), cut at N-2, then back to 0, so that a cycle trains every
    # step 0..N-2 (MixGRPO's clip and roll back); "random"
    # (Flow-GRPO-Fast) draws a start per iteration from the seeded generator; "fixed"
    # starts at sde_window_start.
    sde_window_schedule: Literal["progressive", "random", "fixed"] = "progressive"
    sde_window_stride: int = 1
    sde_window_every: int = 1
    sde_window_start: int = 0
    # Where "random" draws the window's first step from 0: "full" up to N-1-w (the window may
    # end at the last trainable step N-2), "mixgrpo" up to N-2-w (MixGRPO's random
    # strategy), "flow_grpo_fast" up to N//2-w (Flow-GRPO-Fast's sde_window_range (0, N//2):
    # the window stays in the noisier half).
    window_start_range: Literal["full", "mixgrpo", "flow_grpo_fast"] = "full"
    # The deterministic solver outside the window: the family's first-order step ("euler";
    # DDIM for Stable Diffusion) or DPM-Solver++(2M) in the data-prediction form.
    ode_solver: Literal["euler", "dpmpp_2m"] = "euler"
    # Solver steps covering the span after the window (MixGRPO-Flash); 0: every level of
    # the schedule.
    post_window_steps: int = 0
    # Where those post_window_steps levels lie: "grid", evenly spaced levels of the schedule
    # (works for every family, DDIM's integer timesteps included); "even_t", exactly evenly
    # spaced in unshifted time, between the schedule's levels, as MixGRPO-Flash places them
    # (rectified flow only). They differ only by the rounding to the grid.
    post_window_spacing: Literal["grid", "even_t"] = "grid"
    # With ode_solver dpmpp_2m, MixGRPO-Flash's own choices ("keep", "euler") beside ours,
    # measured on data with an exact x0_hat (bench/flash_solver_accuracy.py):
    # solver_history "keep" carries DPM-Solver++'s history over the SDE window (the first step
    # after it is second-order, from the window's last x0_hat); "reset" (ours) starts first-order
    # after it, since the window's noise moved the sample off the ODE path that history belongs
    # to: the clean sample's error is the same for early windows, 1.02-1.11x larger with "keep"
    # for later ones and 2.3x with CPS.
    solver_history: Literal["reset", "keep"] = "reset"
    # The deterministic steps before the window: "euler" as MixGRPO-Flash; "ode_solver" (ours)
    # runs ode_solver there too: the same forwards, 1.6-3.2x less error at the window's start.
    prefix_solver: Literal["ode_solver", "euler"] = "ode_solver"

    def problems(self, cfg: Config) -> list[str]:
        s, found = self, Problems()
        found.require(s.num_steps >= 2, "sampling.num_steps", s.num_steps, ">= 2")
        found.require(s.eta >= 0, "sampling.eta", s.eta, ">= 0")
        found.require(s.shift > 0, "sampling.shift", s.shift, "> 0")
        found.require(s.group_size >= 2, "sampling.group_size", s.group_size, ">= 2")
        found.require(s.rollout_batch_size >= 1, "sampling.rollout_batch_size", s.rollout_batch_size, ">= 1")
        found.require(s.decode_batch_size >= 1, "sampling.decode_batch_size", s.decode_batch_size, ">= 1")
        found.require(s.num_frames >= 1 and (s.num_frames - 1) % 4 == 0, "sampling.num_frames",
                      s.num_frames, "4k+1 (the VAE compresses time by 4)")
        for key in ("height", "width"):
            value = getattr(s, key)
            found.require(value >= 16 and value % 16 == 0, f"sampling.{key}", value, "a multiple of 16")
        found.require(0 <= s.sde_window_size <= s.num_steps - 1, "sampling.sde_window_size", s.sde_window_size,
                      f"0 (every step) or a window of at most sampling.num_steps - 1 = {s.num_steps - 1} steps "
                      "(the last step, into the clean sample, is never trained)")
        found.require(s.sde_window_stride >= 1, "sampling.sde_window_stride", s.sde_window_stride, ">= 1")
        found.require(s.sde_window_every >= 1, "sampling.sde_window_every", s.sde_window_every, ">= 1")
        found.require(0 <= s.sde_window_start <= s.num_steps - 1 - s.sde_window_size, "sampling.sde_window_start",
                      s.sde_window_start,
                      f"in [0, {s.num_steps - 1 - s.sde_window_size}] (num_steps - 1 - sde_window_size)")
        found.require(s.post_window_steps >= 0, "sampling.post_window_steps", s.post_window_steps, ">= 0")
        found.require(s.sde_window_schedule != "progressive" or s.sde_window_stride <= max(s.sde_window_size, 1),
                      "sampling.sde_window_stride", s.sde_window_stride,
                      f"at most sampling.sde_window_size ({s.sde_window_size}): a longer stride skips steps no "
                      "window trains")
        if s.window_start_range != "full":
            found.require(s.sde_window_schedule == "random", "sampling.window_start_range", s.window_start_range,
                          "'full' unless sampling.sde_window_schedule=random (the range the random start is drawn "
                          "from)")
            bound = s.num_steps - 2 if s.window_start_range == "mixgrpo" else s.num_steps // 2
            found.require(s.sde_window_size <= bound, "sampling.window_start_range", s.window_start_range,
                          f"a range that holds the window: {s.window_start_range} starts it at most at {bound} - "
                          f"sampling.sde_window_size ({s.sde_window_size})")
        found.require(s.cps_log_prob == "gaussian" or s.sde_type == "cps", "sampling.cps_log_prob", s.cps_log_prob,
                      "'gaussian' unless sampling.sde_type=cps")
        found.require(s.post_window_spacing == "grid" or s.post_window_steps > 0, "sampling.post_window_spacing",
                      s.post_window_spacing, "'grid' unless sampling.post_window_steps > 0 (the levels it spaces)")
        for key, ours in (("solver_history", "reset"), ("prefix_solver", "ode_solver")):
            found.require(getattr(s, key) == ours or s.ode_solver == "dpmpp_2m", f"sampling.{key}", getattr(s, key),
                          f"{ours!r} unless sampling.ode_solver=dpmpp_2m (with euler there is no other solver)")
        found.require(s.sde_type != "cps" or s.eta <= 1, "sampling.eta", s.eta,
                      "in (0, 1] for sampling.sde_type=cps (its noise is sigma_next * sin(eta * pi / 2))")
        found.require(s.eta > 0, "sampling.eta", s.eta, "> 0 for training (eta = 0 is the ODE sampler)")
        return found


@dataclass
class PolicyUpdateConfig:
    # What every algorithm's update reads (train.algorithm: grpo and nft alike).
    # Advantages are clipped to [-adv_clip_max, adv_clip_max] (NFT also scales its loss by it).
    adv_clip_max: float = 5.0
    # Each kept sample trains max(1, int(N * timestep_fraction)) of its N trainable timesteps
    # (GRPO: the rollout's trainable transitions; NFT: the sampler's levels).
    timestep_fraction: float = 0.6
    # Train on the best_of/2 highest and best_of/2 lowest advantage samples of each
    # group (0 trains all G).
    best_of: int = 0
    # Normalise advantages per group (GRPO) or over the whole batch (DDPO-style ablation).
    advantage_mode: Literal["group", "batch"] = "group"

    def problems(self, cfg: Config) -> list[str]:
        u, s, found = self, cfg.sampling, Problems()
        found.require(0 < u.timestep_fraction <= 1, "policy_update.timestep_fraction", u.timestep_fraction,
                      "in (0, 1]")
        found.require(int((s.num_steps - 1) * u.timestep_fraction) >= 1, "policy_update.timestep_fraction",
                      u.timestep_fraction, f"large enough to train >= 1 of {s.num_steps - 1} transitions")
        found.require(u.adv_clip_max > 0, "policy_update.adv_clip_max", u.adv_clip_max, "> 0")
        found.require(u.best_of == 0 or (u.best_of % 2 == 0 and 2 <= u.best_of <= s.group_size),
                      "policy_update.best_of", u.best_of,
                      f"0 or an even number <= sampling.group_size ({s.group_size})")
        return found


@dataclass
class GRPOConfig:
    clip_range: float = 1e-4
    # Which of the trainable transitions are trained (policy_update.timestep_fraction of
    # them): a random subset per rollout batch, or the first / last ones (ablations).
    timestep_selection: Literal["random", "first", "last"] = "random"
    # KL penalty to the frozen initial policy; 0 disables it and no reference is loaded.
    kl_weight: float = 0.0
    # How the KL weight moves: "constant" (kl_weight throughout), "linear" (kl_weight to
    # kl_weight_final over train.iterations), "adaptive" (PPO's rule: doubled when the
    # iteration's KL is above 1.5 * kl_target, halved when below kl_target / 1.5).
    kl_schedule: Literal["constant", "linear", "adaptive"] = "constant"
    kl_weight_final: float = 0.0
    kl_target: float = 0.0
    # GARDO-style reset of the KL reference to the current policy: every this many
    # iterations (0: never), and after any iteration whose mean KL exceeds reference_reset_kl
    # (0: never). The reference is then checkpointed with the run.
    reference_reset_every: int = 0
    reference_reset_kl: float = 0.0
    # GRPO-Guard (arXiv 2510.22319): normalise the per-step log-ratio so that its mean is 0
    # and its scale is the same at every noise level (needs the rollout's step means: one
    # more latent per sample per SDE step is kept), and reweight each trained step's loss
    # so that every noise level contributes a gradient of the same scale.
    ratio_norm: bool = False
    step_reweight: bool = False

    def problems(self, cfg: Config) -> list[str]:
        g, found = self, Problems()
        for key in ("ratio_norm", "step_reweight"):
            found.require(cfg.sampling.cps_log_prob == "gaussian" or not getattr(g, key), f"grpo.{key}",
                          getattr(g, key),
                          "false with sampling.cps_log_prob=flow_grpo (GRPO-Guard assumes the Gaussian log-density)")
        found.require(g.clip_range > 0, "grpo.clip_range", g.clip_range, "> 0")
        found.require(g.kl_weight >= 0, "grpo.kl_weight", g.kl_weight, ">= 0")
        moves_kl = g.kl_schedule != "constant" or g.reference_reset_every > 0 or g.reference_reset_kl > 0
        found.require(not moves_kl or g.kl_weight > 0, "grpo.kl_weight", g.kl_weight,
                      "> 0 with a grpo.kl_schedule other than constant or a reference reset (with 0 there is no "
                      "reference)")
        found.require(g.kl_weight_final >= 0, "grpo.kl_weight_final", g.kl_weight_final, ">= 0")
        found.require(g.kl_schedule != "adaptive" or g.kl_target > 0, "grpo.kl_target", g.kl_target,
                      "> 0 with grpo.kl_schedule=adaptive")
        found.require(g.reference_reset_every >= 0, "grpo.reference_reset_every", g.reference_reset_every, ">= 0")
        found.require(g.reference_reset_kl >= 0, "grpo.reference_reset_kl", g.reference_reset_kl, ">= 0")
        return found


@dataclass
class RewardConfig:
    # Reward name -> advantage weight. Names are the scores the registered reward models
    # provide (fastvideo_grpo.rewards.REGISTRY), e.g. videoalign_vq of model videoalign.
    weights: dict[str, float] = field(default_factory=lambda: {"videoalign_vq": 1.0})
    # Reward name -> threshold: the reward becomes 1.0 above it, 0.0 otherwise.
    binary_thresholds: dict[str, float] = field(default_factory=dict)
    # "inline" scores in the trainer process; "process" starts one reward process per node
    # (on `device`); "remote" connects to `python -m fastvideo_grpo.rewards.serve` at `address`.
    mode: Literal["inline", "process", "remote"] = "process"
    address: str = ""
    # Where the reward models run, e.g. "cuda:7" (a GPU the policy does not use) or "cpu".
    device: str = "cpu"
    # Reward model -> its own settings, e.g. models.videoalign.path. Kept raw here: each
    # reward declares and checks its section (fastvideo_grpo.rewards.check_reward_config),
    # so this file need not know every reward.
    models: dict[str, dict] = field(default_factory=dict)
    # Modules, or paths of .py files, imported before reward names are checked (trainer,
    # reward process, reward server); each registers rewards with
    # fastvideo_grpo.rewards.register_reward.
    plugins: list[str] = field(default_factory=list)
    # Frame rate of the scored videos (VideoAlign samples 2 frames per second of video);
    # 0 takes sampling.fps.
    video_fps: float = 0.0
    # Video rewards that score frames use every frame_stride-th frame.
    frame_stride: int = 4
    # Seconds a request may take before the trainer raises.
    timeout_s: float = 600.0
    # The reward process scores up to max_batch videos at once, waiting at most
    # max_latency_ms for a batch to fill.
    max_batch: int = 8
    max_latency_ms: float = 20.0
    # Samples per group as the reward process sees them: a pairwise reward
    # (fastvideo_grpo.rewards.pairwise) compares each group's samples with each other and
    # must get whole groups in one call. 0 takes sampling.group_size.
    group_size: int = 0
    # Times a dead reward process is restarted (its pending requests resent) before the
    # trainer gives up.
    max_restarts: int = 1
    # A NaN or inf reward: "error" stops the run naming the reward, the sample and its
    # prompt; "drop_group" leaves that sample's group out of the update (advantage 0, not
    # trained) and counts it in the metric dropped_groups.
    on_nonfinite: Literal["error", "drop_group"] = "error"

    def problems(self, cfg: Config) -> list[str]:
        r, found = self, Problems()
        found.require(r.group_size in (0, cfg.sampling.group_size), "reward.group_size", r.group_size,
                      f"0 or sampling.group_size ({cfg.sampling.group_size}): the reward process sees the trainer's "
                      "groups")
        found.require(len(r.weights) > 0, "reward.weights", r.weights, "at least one reward")
        found.require(any(w != 0 for w in r.weights.values()), "reward.weights", r.weights,
                      "at least one non-zero weight (with all weights 0 every advantage is 0: nothing trains)")
        for name in r.binary_thresholds:
            found.require(name in r.weights, f"reward.binary_thresholds.{name}", name,
                          f"one of the rewards in reward.weights {sorted(r.weights)}")
        found.require(r.max_restarts >= 0, "reward.max_restarts", r.max_restarts, ">= 0")
        found.require(r.on_nonfinite != "drop_group" or cfg.policy_update.advantage_mode == "group",
                      "reward.on_nonfinite", r.on_nonfinite,
                      "'error' with policy_update.advantage_mode=batch (a dropped group has no batch statistics)")
        found.require(r.mode != "remote" or ":" in r.address, "reward.address", r.address,
                      "host:port of a running reward server when reward.mode is 'remote'")
        found.require(r.frame_stride >= 1, "reward.frame_stride", r.frame_stride, ">= 1")
        found.require(r.video_fps > 0, "reward.video_fps", r.video_fps, "> 0 (0 takes sampling.fps)")
        found.require(r.timeout_s > 0, "reward.timeout_s", r.timeout_s, "> 0")
        found.require(r.max_batch >= 1, "reward.max_batch", r.max_batch, ">= 1")
        return found


@dataclass
class TrainConfig:
    iterations: int = 300
    # Prompts per iteration on each data-parallel rank.
    prompts_per_iteration: int = 1
    lr: float = 1e-5
    weight_decay: float = 1e-4
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    # AdamW's kernels: fused (one kernel per step; on CPU 3.5x faster than the others), foreach
    # (torch's own default on GPU), for_loop (torch's own default on CPU). They agree to float
    # rounding.
    adam_implementation: Literal["fused", "foreach", "for_loop"] = "fused"
    grad_clip: float = 1.0
    # Linear warmup of the learning rate over this many optimizer steps (0: constant): step k
    # (from 0) trains at lr * k / lr_warmup_steps, as diffusers' constant_with_warmup.
    lr_warmup_steps: int = 0
    # After warmup, the learning rate stays (constant) or falls with the run's progress: during
    # iteration k of train.iterations n it is lr * (1 - k/n) (linear) or lr * (1 + cos(pi k/n)) / 2
    # (cosine), never 0. Smaller last steps leave a final policy closer to its neighbours.
    lr_schedule: Literal["constant", "linear", "cosine"] = "constant"
    # Kept samples per optimizer step, each with all its trained timesteps, as the released
    # scripts count it: an iteration takes ceil(kept samples per rank / this) optimizer steps
    # (the last one takes the rest), whatever the number of ranks. HunyuanVideo T2V: best-of
    # 8 kept / 4 = 2 steps; FLUX: 12 / 4 = 3. Set it to the kept samples per rank for one
    # step per iteration (the paper's choice where CFG is trained).
    gradient_accumulation_steps: int = 4
    seed: int = 42
    output_dir: str = "outputs/run"
    sample_every: int = 10
    num_saved_samples: int = 2
    # A tqdm bar on a terminal; where stderr is no terminal (a batch job's log) or with
    # false, one log line per iteration (reward, loss, KL, seconds, ETA) instead.
    progress_bar: bool = True
    # "auto" continues from output_dir/checkpoints/latest if present; "never" starts
    # fresh; anything else is the path of a checkpoint folder.
    resume: str = "auto"
    # EMA of the trained weights (0 disables it).
    ema_decay: float = 0.0
    # An optimizer step whose gradient norm is NaN or inf is skipped (weights, optimizer and
    # LR schedule untouched) and counted in nonfinite_steps; this many skipped in a row stop
    # the run with a checkpoint of the last finite weights and an error.
    max_nonfinite_steps: int = 3
    # When the EMA is updated: once per iteration, after its optimizer steps, as DanceGRPO's
    # FLUX trainer does (the default), or after every optimizer step.
    ema_update: Literal["iteration", "optimizer_step"] = "iteration"
    # The training algorithm, a name in algorithms.registry.ALGORITHMS: "grpo", clipped GRPO on the SDE
    # rollout's log-probs (the `grpo` section), or "nft", DiffusionNFT (algorithms/nft.py) on the
    # forward process of deterministic rollouts (the `nft` section). Both read `policy_update`.
    algorithm: str = "grpo"

    def problems(self, cfg: Config) -> list[str]:
        # Imported here, as the trainer imports the algorithms: a config may be loaded without them.
        from fastvideo_grpo.algorithms.config_checks import algorithm_problems

        t, found = self, Problems(problem(*p) for p in algorithm_problems(cfg))
        found.require(t.iterations >= 1, "train.iterations", t.iterations, ">= 1")
        found.require(t.prompts_per_iteration >= 1, "train.prompts_per_iteration", t.prompts_per_iteration, ">= 1")
        found.require(t.lr > 0, "train.lr", t.lr, "> 0")
        found.require(t.lr_warmup_steps >= 0, "train.lr_warmup_steps", t.lr_warmup_steps, ">= 0")
        found.require(bool(t.output_dir.strip()), "train.output_dir", t.output_dir,
                      "a folder (empty would write the run's lock, checkpoints and logs into the current directory)")
        found.require(t.grad_clip > 0, "train.grad_clip", t.grad_clip, "> 0")
        found.require(t.max_nonfinite_steps >= 1, "train.max_nonfinite_steps", t.max_nonfinite_steps, ">= 1")
        found.require(t.gradient_accumulation_steps >= 1, "train.gradient_accumulation_steps",
                      t.gradient_accumulation_steps, ">= 1")
        found.require(0 <= t.ema_decay < 1, "train.ema_decay", t.ema_decay, "in [0, 1)")
        return found


@dataclass
class NFTConfig:
    # Weight of the policy in the implicit positive policy beta*v + (1-beta)*v_old.
    beta: float = 1.0
    # The old policy's EMA decay schedule (nft.return_decay): 0 flat 0 (old = the last
    # policy), 1 rising by 0.001 per optimizer step to 0.5, 2 flat for 75 steps then by
    # 0.0075 to 0.999.
    decay_type: int = 1
    # ||v - v_ref||^2 to the frozen initial policy (0: no reference is built).
    kl_weight: float = 0.0
    # Samples per training forward (0: sampling.rollout_batch_size); free of the rollout's
    # batching, as no log-prob has to match.
    micro_batch_size: int = 0

    def problems(self, cfg: Config) -> list[str]:
        n, found = self, Problems()
        found.require(n.beta > 0, "nft.beta", n.beta, "> 0")
        found.require(n.decay_type in (0, 1, 2), "nft.decay_type", n.decay_type, "0, 1 or 2")
        found.require(n.kl_weight >= 0, "nft.kl_weight", n.kl_weight, ">= 0")
        found.require(n.micro_batch_size >= 0, "nft.micro_batch_size", n.micro_batch_size, ">= 0")
        return found


@dataclass
class CheckpointConfig:
    # Save every this many iterations (0: only at the end and on preemption).
    every: int = 50
    keep_last: int = 3
    # At load, check every file's CRC32 against the one recorded at save (reads the whole
    # checkpoint once more); false for huge runs, which then check only the files' sizes.
    verify: bool = True

    def problems(self, cfg: Config) -> list[str]:
        found = Problems()
        found.require(self.every >= 0, "checkpoint.every", self.every, ">= 0")
        found.require(self.keep_last >= 1, "checkpoint.keep_last", self.keep_last, ">= 1")
        return found


@dataclass
class EvalConfig:
    # Evaluate every this many iterations, and after the last (0: never): ODE sampling
    # (eta = 0) of held-out prompts from fixed seeds, scored by the training rewards.
    every: int = 0
    # Also evaluate before the first iteration (with `every` > 0): the baseline that health's
    # held-out check compares each later evaluation with (otherwise the first evaluation is).
    at_start: bool = False
    # Held-out prompts: a folder of precomputed embeddings, or for the tiny model a prompt
    # file. Both empty: the training prompts.
    embeddings_dir: str = ""
    prompts_file: str = ""
    # The first num_prompts prompts (0: all), each sampled from seeds seed .. seed+num_seeds-1.
    num_prompts: int = 0
    num_seeds: int = 1
    seed: int = 0
    # ODE steps (0: sampling.num_steps).
    num_steps: int = 0
    # Samples per transformer call.
    batch_size: int = 1
    # Videos of the first grid_prompts prompts (first seed) are tiled into the logged grid.
    grid_prompts: int = 4
    # Each grid video is shrunk by a whole factor (block means) to at most this many pixels
    # on its longer side before it is sent to the rank that writes the grid (0: full size;
    # 720p x 53 frames is 147 MB a video).
    grid_max_side: int = 320
    # Early stop (0: off): stop, with a checkpoint, once the held-out reward (the weighted
    # sum of the rewards' means) has been more than early_stop_margin below its best for
    # early_stop_patience evaluations in a row. Each new best is checkpointed and marked
    # (checkpoints/best), so `export --best` takes it.
    early_stop_patience: int = 0
    early_stop_margin: float = 0.0
    # Also stop (0: off) when the mean group diversity of the last health.window iterations
    # falls below this fraction of the first health.window iterations'.
    early_stop_diversity: float = 0.0

    def problems(self, cfg: Config) -> list[str]:
        e, found = self, Problems()
        found.require(e.every >= 0, "eval.every", e.every, ">= 0")
        found.require(e.num_prompts >= 0, "eval.num_prompts", e.num_prompts, ">= 0")
        found.require(e.num_seeds >= 1, "eval.num_seeds", e.num_seeds, ">= 1")
        found.require(e.num_steps >= 0, "eval.num_steps", e.num_steps, "0 (sampling.num_steps) or a step count")
        found.require(e.batch_size >= 1, "eval.batch_size", e.batch_size, ">= 1")
        found.require(e.grid_prompts >= 0, "eval.grid_prompts", e.grid_prompts, ">= 0")
        found.require(e.grid_max_side >= 0, "eval.grid_max_side", e.grid_max_side, ">= 0")
        found.require(e.early_stop_patience >= 0, "eval.early_stop_patience", e.early_stop_patience, ">= 0")
        found.require(e.early_stop_margin >= 0, "eval.early_stop_margin", e.early_stop_margin, ">= 0")
        found.require(0 <= e.early_stop_diversity < 1, "eval.early_stop_diversity", e.early_stop_diversity,
                      "in [0, 1)")
        found.require(e.every > 0 or e.early_stop_patience == 0, "eval.early_stop_patience", e.early_stop_patience,
                      "0 unless eval.every > 0 (early stop watches the held-out evaluation)")
        found.require(not (e.embeddings_dir and e.prompts_file), "eval.prompts_file", e.prompts_file,
                      "empty when eval.embeddings_dir is set (one held-out prompt source)")
        found.require(cfg.model.size == "tiny" or not e.prompts_file, "eval.prompts_file", e.prompts_file,
                      "empty for a full-size model (use eval.embeddings_dir)")
        return found


@dataclass
class HealthConfig:
    # Warnings (health.py): each fires once when its condition starts, is logged with what
    # to try, and is recorded in output_dir/health.json with the iteration.
    # |ratio - 1| before the first optimizer step above this: stale old log-probs.
    ratio_tolerance: float = 1e-3
    # zero_std_frac above this for zero_std_iterations iterations in a row: flat groups.
    zero_std_frac: float = 0.5
    zero_std_iterations: int = 3
    # grad_norm above this multiple of the median of the run's earlier iterations.
    grad_norm_factor: float = 10.0
    # clip_frac above this: the clipped objective has stopped learning.
    clip_frac: float = 0.5
    # Group diversity below this fraction of its first iterations' while the reward rises:
    # the signature of reward hacking.
    diversity_fraction: float = 0.5
    # Iterations that make the baseline (first) and the recent window.
    window: int = 5
    # A held-out reward (any the evaluation reports, weighted or not) whose paired drop from
    # the run's first evaluation is below 0 at this one-sided confidence: reward hacking (an
    # untrained reward) or over-fitting (a trained one) seen on held-out prompts (health.py).
    held_out_confidence: float = 0.975

    def problems(self, cfg: Config) -> list[str]:
        h, found = self, Problems()
        for key in ("ratio_tolerance", "zero_std_frac", "grad_norm_factor", "clip_frac", "diversity_fraction"):
            found.require(getattr(h, key) > 0, f"health.{key}", getattr(h, key), "> 0")
        found.require(h.zero_std_iterations >= 1, "health.zero_std_iterations", h.zero_std_iterations, ">= 1")
        found.require(h.window >= 1, "health.window", h.window, ">= 1")
        found.require(0.5 < h.held_out_confidence < 1, "health.held_out_confidence", h.held_out_confidence,
                      "in (0.5, 1)")
        return found


@dataclass
class LoggingConfig:
    # TensorBoard event files always go to output_dir/tb; W&B is optional.
    wandb: bool = False
    wandb_project: str = "fastvideo-grpo"
    # "offline" writes output_dir/wandb/ without network (`wandb sync` uploads it later).
    wandb_mode: Literal["online", "offline"] = "online"
    # Run name for W&B (empty: the output folder's name).
    run_name: str = ""
    # Dense peak TFLOP/s of one accelerator, for the logged MFU (tflops_per_gpu / peak). 0: the
    # bf16 peak of the CUDA device by name where known (flops.PEAK_BF16_TFLOPS: H100/H800/H200
    # 989, A100 312); else MFU is not logged, only tflops_per_gpu.
    peak_tflops: float = 0.0

    def problems(self, cfg: Config) -> list[str]:
        found = Problems()
        found.require(self.peak_tflops >= 0, "logging.peak_tflops", self.peak_tflops,
                      ">= 0 (0: looked up from the CUDA device's name)")
        return found


@dataclass
class ParallelConfig:
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # Ulysses sequence-parallel degree: the video tokens of a sample are split over sp ranks.
    sp_size: int = 1
    # HSDP: replicate over this many groups, shard within each.
    dp_replicate: int = 1
    activation_checkpointing: bool = True
    cpu_offload: bool = False
    # Reduce-scatter gradients after every micro-batch instead of once per optimizer step.
    # true: sharded gradients throughout, at one reduce-scatter per micro-batch (overlapped
    # with the backward); false: one reduction per step, but every rank holds the unsharded
    # gradient of the whole trained model while it accumulates, in the fp32 reduce dtype
    # (47.8 GB for the 12.8B HunyuanVideo: no full-size config fits an 80 GB GPU with it).
    reduce_grads_every_micro_batch: bool = True
    # The rollout's forwards (no autograd): "always" reshards each block after its forward
    # (FSDP2's default: every forward all-gathers the whole network again); "never" gathers
    # each block once per rollout and holds the network unsharded in the compute dtype
    # (23.9 GB at 12.8B in bf16) until the rollout ends; "auto": never when that takes at most
    # half the device memory free at the rollout's start, else always
    # (parallel.fsdp.rollout_keeps_gathered; `python -m fastvideo_grpo.plan` says which).
    rollout_reshard: Literal["auto", "always", "never"] = "auto"
    # Ranks of a node that load the network into host memory at a time: each holds it whole
    # in fp32 (47.8 GB at 12.8B) until it is sharded onto its GPU, while the node's other ranks
    # wait their turn. 0: all at once (host memory: ranks per node x the fp32 network).
    loaders_per_node: int = 1
    # A rank whose process stops (SIGSTOP, a frozen node) would hold the others in a
    # collective for the process group's 30-minute timeout. Each rank sends a heartbeat
    # through torchrun's store; one silent for this many seconds ends the job
    # (fastvideo_grpo.parallel.watchdog). It beats beside the training thread, so a long
    # step, checkpoint or compile never trips it. 0 turns it off; one process has none.
    watchdog_seconds: float = 300.0
    # How long any collective may wait before the job fails, for every process group (the
    # device mesh's too): long enough for the slowest reward scoring or evaluation.
    timeout_minutes: float = 30.0

    def problems(self, cfg: Config) -> list[str]:
        p, found = self, Problems()
        found.require(p.loaders_per_node >= 0, "parallel.loaders_per_node", p.loaders_per_node,
                      ">= 0 (0: every rank of a node at once)")
        found.require(p.watchdog_seconds >= 0, "parallel.watchdog_seconds", p.watchdog_seconds,
                      "seconds > 0, or 0 to turn the watchdog off")
        found.require(p.sp_size >= 1, "parallel.sp_size", p.sp_size, ">= 1")
        if p.sp_size > 1:
            heads = cfg.model.tiny_heads if cfg.model.size == "tiny" else attention_heads(cfg.model.path)
            found.require(heads is None or heads % p.sp_size == 0, "parallel.sp_size", p.sp_size,
                          f"a divisor of the model's {heads} attention heads (Ulysses splits heads over sp ranks)")
        found.require(p.timeout_minutes > 0, "parallel.timeout_minutes", p.timeout_minutes, "> 0")
        found.require(p.dp_replicate >= 1, "parallel.dp_replicate", p.dp_replicate, ">= 1")
        return found


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    policy_update: PolicyUpdateConfig = field(default_factory=PolicyUpdateConfig)
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    health: HealthConfig = field(default_factory=HealthConfig)
    nft: NFTConfig = field(default_factory=NFTConfig)


def _fields(cls) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls)}


def _coerce(key: str, value: Any, annotation: Any) -> Any:
    """Check `value` against `annotation` (a type from the dataclass) and convert it."""
    origin = typing.get_origin(annotation)
    if origin is Literal:
        allowed = typing.get_args(annotation)
        if value not in allowed:
            raise ConfigError(f"{key}: {value!r} is not one of {list(allowed)}")
        return value
    if origin is dict:
        key_type, value_type = typing.get_args(annotation)
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return {
            _coerce(f"{key}.{k}", k, key_type): _coerce(f"{key}.{k}", v, value_type)
            for k, v in value.items()
        }
    if annotation is dict:  # a raw section, checked by whoever owns it
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if origin is list:
        (item_type,) = typing.get_args(annotation)
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, e.g. [a, b], got {value!r}")
        return [_coerce(f"{key}[{i}]", v, item_type) for i, v in enumerate(value)]
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if annotation is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):  # YAML 1.1 reads "1e-5" (no dot) as a string
            try:
                number = float(value)
            except ValueError:
                pass
        if number is None:
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        if not math.isfinite(number):
            raise ConfigError(f"{key}: expected a finite number, got {value!r}")
        return number
    if annotation is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    raise TypeError(f"unsupported config annotation {annotation!r} for {key}")


def _merge(obj: Any, updates: dict, prefix: str = "") -> None:
    hints = typing.get_type_hints(type(obj))
    known = _fields(type(obj))
    for name, value in updates.items():
        key = f"{prefix}{name}"
        if prefix == "grpo." and name in _fields(PolicyUpdateConfig):  # both algorithms read these now
            raise ConfigError(f"{key} moved to policy_update.{name}")
        if name not in known:
            raise ConfigError(f"unknown config key {key!r}; allowed: {sorted(known)}")
        annotation = hints[name]
        if dataclasses.is_dataclass(annotation):
            if not isinstance(value, dict):
                raise ConfigError(f"{key}: expected a section (mapping), got {value!r}")
            _merge(getattr(obj, name), value, prefix=f"{key}.")
        elif annotation == dict[str, dict]:
            # Raw sections merge key by key, as dataclass sections do: an override of
            # reward.models.hps.path keeps the file's reward.models.hps.model.
            old = getattr(obj, name)
            new = _coerce(key, value, annotation)
            setattr(obj, name, {**old, **{k: {**old.get(k, {}), **v} for k, v in new.items()}})
        else:
            setattr(obj, name, _coerce(key, value, annotation))


def coerce_section(cls: type, raw: dict, key: str) -> dict[str, Any]:
    """The values of the raw section at dotted `key`, checked against dataclass `cls` as
    every section is: an unknown key is named with the allowed ones, each value is
    coerced to its field's type. For sections their owners declare (reward.models.*)."""
    hints = typing.get_type_hints(cls)
    known = _fields(cls)
    values = {}
    for name, value in raw.items():
        if name not in known:
            raise ConfigError(f"unknown config key {f'{key}.{name}'!r}; allowed: {sorted(known)}")
        values[name] = _coerce(f"{key}.{name}", value, hints[name])
    return values


def parse_override(text: str) -> dict:
    """`train.lr=2e-5` -> {"train": {"lr": 2e-5}}; the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value")
    dotted, raw = text.split("=", 1)
    value = parse_yaml(raw, f"override {text!r}") if raw else ""
    nested: dict = {}
    node = nested
    parts = dotted.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return nested


def _check_unique_keys(node: yaml.Node, source: str, prefix: str = "") -> None:
    if isinstance(node, yaml.MappingNode):
        lines: dict[str, int] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                continue
            key, line = key_node.value, key_node.start_mark.line + 1
            if key in lines:
                raise ConfigError(f"{source}: {prefix}{key} is given twice, on lines {lines[key]} and {line} "
                                  "(YAML would silently keep the second); keep one")
            lines[key] = line
            _check_unique_keys(value_node, source, f"{prefix}{key}.")
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            _check_unique_keys(item, source, prefix)


def validate(cfg: Config, may_be_empty: tuple[str, ...] = ()) -> None:
    """Every value check at once: a ConfigError that lists every problem, so that a config
    is fixed in one round trip, not one queue wait per typo. Keys in `may_be_empty` (dotted)
    are not reported for being empty."""
    raise_problems(config_problems(cfg), may_be_empty)


def raise_problems(problems: list[str], may_be_empty: tuple[str, ...] = ()) -> None:
    """A ConfigError naming each problem, if any; those of keys in `may_be_empty` (dotted)
    for being empty are left out."""
    problems = [p for p in problems if not any(p.startswith(f"{key}: ''") for key in may_be_empty)]
    if len(problems) == 1:
        raise ConfigError(problems[0])
    if problems:
        raise ConfigError(f"{len(problems)} problems:\n" + "\n".join(f"  - {p}" for p in problems))


def problem(key: str, value: Any, expected: str) -> str:
    """A config problem as validate reports it."""
    return f"{key}: {value!r} is invalid; expected {expected}"


def config_problems(cfg: Config) -> list[str]:
    """Every section's problems: each section's `problems(cfg)` reports its own keys, reading
    the whole config for the rules that relate them to other sections'."""
    problems: list[str] = []
    for section in (cfg.sampling, cfg.policy_update, cfg.grpo, cfg.reward, cfg.nft, cfg.train, cfg.health,
                    cfg.parallel, cfg.model, cfg.logging, cfg.checkpoint, cfg.eval, cfg.data):
        problems += section.problems(cfg)
    return problems


class Problems(list):
    """The problems a section's check finds, as validate reports them."""

    def require(self, ok: bool, key: str, value: Any, expected: str) -> None:
        if not ok:
            self.append(problem(key, value, expected))


def attention_heads(model_path: str) -> int | None:
    """num_attention_heads of model.path's transformer/config.json, read before any model is
    built; None when the folder has none (the model builder then names what is missing)."""
    file = Path(model_path) / "transformer" / "config.json"
    try:
        return int(json.loads(file.read_text())["num_attention_heads"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def run_config_path(checkpoint: Path) -> Path | None:
    """The training config a run saved beside its checkpoints (RUN/config.yaml for
    RUN/checkpoints/step_N), if it is there."""
    path = Path(checkpoint).parent.parent / "config.yaml"
    return path if path.is_file() else None


def load_config(path: str | Path | None = None, overrides: list[str] = (), check: bool = True) -> Config:
    """The config of YAML file `path` with dotted `overrides` applied; with `check`, every
    value is validated (the preflight collects value problems with the others instead)."""
    cfg = Config()
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            data = parse_yaml(path.read_text(), str(path)) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {path} is not valid YAML: {e}") from e
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path}: top level must be a mapping of sections")
        try:
            _merge(cfg, data)
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from e
    for text in overrides:
        _merge(cfg, parse_override(text))
    if cfg.reward.video_fps == 0:
        cfg.reward.video_fps = float(cfg.sampling.fps)
    if cfg.reward.group_size == 0:
        cfg.reward.group_size = cfg.sampling.group_size
    if check:
        validate(cfg)
    return cfg


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)
