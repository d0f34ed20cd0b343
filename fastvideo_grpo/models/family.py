"""What a model family is to the shared code: one `ModelFamily` entry, exposed by the
family's folder (models/<family>/__init__.py) and collected by models/registry.py."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import torch
from torch import nn

from fastvideo_grpo.config import Config, ConfigError, ModelConfig
from fastvideo_grpo.models.base import Policy

if TYPE_CHECKING:
    from fastvideo_grpo.parallel.distributed import World


@dataclass(frozen=True)
class Published:
    """A family's released architecture, for the planner: used when model.path names no folder."""

    name: str
    # (network, vae, model config, device) -> the family's Policy, as its build function makes it.
    policy: Callable
    network_config: dict
    vae: type
    vae_config: dict
    text_tokens: int  # tokens per prompt of the family's preprocessing encoder
    # The network's config (released or model.path's) -> (text embedding dim, pooled dim) of
    # one prompt's precomputed conditioning.
    text_dims: Callable[[dict], tuple[int, int]]


@dataclass(frozen=True)
class ModelFamily:
    # model.family's value.
    name: str
    # The adapter: (model config, device, text_dim, pooled_dim) -> Policy.
    build: Callable[[ModelConfig, torch.device, int, int], Policy]
    # The diffusers pipeline class of the family's folders (export writes LoRA files with it).
    pipeline: str
    # The trained network's class (`from_config`, `save_pretrained`: a diffusers ModelMixin),
    # and its component in the pipeline: its subfolder in a diffusers folder ("transformer").
    network: type
    component: str
    # (network, one sample's latent shape, text tokens) -> FLOPs of one row's forward, in the
    # convention of models/flop_count.py. Required: the trainer counts FLOPs every iteration.
    forward_flops: Callable[[nn.Module, tuple[int, ...], int], int]
    # peft's target_modules for LoRA: a regex over the network's module names (or a list of
    # name suffixes) matching the linears LoRA adapts.
    lora_targets: str | list[str]
    # The released full-size architecture(s) the planner builds on the meta device, model.published
    # choosing one by name (empty: the first); None: the family is planned only from a
    # model.path folder or as model.size: tiny.
    published: Published | tuple[Published, ...] | None = None
    # (network, world) -> splits the network's tokens over world's sp ranks (Ulysses); None:
    # parallel.sp_size must be 1.
    sequence_parallel: Callable[[nn.Module, "World"], None] | None = None
    # (folder, seed) -> a complete diffusers folder of the tiny model (`python -m
    # fastvideo_grpo.models.tiny`); None where the family's tiny model is built in process only.
    write_tiny_folder: Callable[[str | Path, int], Path] | None = None
    # The module of the family's offline text encoder (`encoder(args, device)`, `MAX_TOKENS`,
    # optionally `add_arguments` and `fingerprint`), run by data.preprocess.family_main;
    # imported only when preprocessing. None: no preprocessing encoder.
    encoder: str | None = None
    # Whether a sample is conditioned on its first frame's latent (data.image_latents_dir).
    image_conditioned: bool = False
    # The module of the family's offline image encoder (`image_embedder(model_path, device)`
    # -> a function from a list of PIL images to their [n, N, D] tokens), run by
    # data_preprocess/preprocess_latents.py --family, whose shards then hold `image_embeds`
    # beside `latents`; imported only when preprocessing. None: first-frame latents only.
    image_encoder: str | None = None
    # (config) -> (tokens, width) of one sample's image-encoder tokens, the shape of the
    # planner's stand-in `image_embeds`; None: the network reads none.
    image_tokens: Callable[[Config], tuple[int, int]] | None = None
    # Whether build loads a pretrained tiny folder (model.size: tiny with a model.path holding
    # config.TINY_TEXT_ENCODER_FILE, as assets/shapes_model).
    pretrained_tiny: bool = False
    # The family's own rules on a config -> its problems, each "key: value is invalid; ...";
    # checked with the config's own (models.check_model_config), before any model is built.
    config_problems: Callable[[Config], list[str]] | None = None
    # Further tiny folders the family writes, by the name `python -m fastvideo_grpo.models.tiny
    # NAME` offers beside the family's own (wan: wan_moe, two experts).
    tiny_folders: dict[str, Callable[[str | Path, int], Path]] = field(default_factory=dict)
    # Further classes the trained network may be besides `network` (wan: WanExperts, two
    # experts as one module): a checkpoint's or a published config's _class_name picks it.
    networks: tuple[type, ...] = ()
    # (trained network) -> the pipeline components export writes it as, {subfolder: module};
    # None: the network itself as `component`.
    export_components: Callable[[nn.Module], dict[str, nn.Module]] | None = None
    # model.path -> the config of the network the planner builds on the meta device, with its
    # _class_name (wan: two experts'); None: `component`/config.json.
    folder_network_config: Callable[[Path], dict] | None = None
    # Whether the family reads model.train_experts, model.cfg_scale_2 and
    # model.tiny_boundary_ratio (wan: Wan2.2's two experts); others refuse them.
    experts: bool = False
    # A diffusers folder -> its network with weights, as `network_class` builds it (wan: both
    # experts of a two-expert folder); None: `component`'s class from its config.json.
    load_folder_network: Callable[[Path], nn.Module] | None = None

    def __post_init__(self):
        for key in ("build", "forward_flops"):
            if not callable(getattr(self, key)):
                raise TypeError(f"ModelFamily {self.name!r}: {key} must be a function, got {getattr(self, key)!r}")
        for key in ("sequence_parallel", "write_tiny_folder", "config_problems", "image_tokens", "load_folder_network"):
            if getattr(self, key) is not None and not callable(getattr(self, key)):
                raise TypeError(f"ModelFamily {self.name!r}: {key} must be a function or None, "
                                f"got {getattr(self, key)!r}")
        if not self.lora_targets:
            raise TypeError(f"ModelFamily {self.name!r}: lora_targets must name the modules LoRA adapts")

    def network_class(self, config: dict) -> type:
        """The class a network config's _class_name names among `networks`, else `network`."""
        return next((c for c in self.networks if c.__name__ == config.get("_class_name")), self.network)

    def components(self, network: nn.Module) -> dict[str, nn.Module]:
        """The pipeline components export writes `network` as: {subfolder: module}."""
        return self.export_components(network) if self.export_components else {self.component: network}

    def released(self, name: str = "") -> Published | None:
        """The published architecture called `name` (model.published); empty: the first."""
        entries = self.published if isinstance(self.published, tuple) else (self.published,)
        if not name or self.published is None:
            return entries[0]
        for entry in entries:
            if entry.name == name:
                return entry
        raise ConfigError(f"model.published: {name!r} is invalid; expected one of {[e.name for e in entries]} "
                          f"(model.family {self.name!r}'s released architectures) or empty")
