"""Preflight: what can be known about a training job before it is queued, reported at once.

`python -m fastvideo_grpo.train --check --config FILE [overrides]` loads the config and
checks every value, every path (the model folder and its components, the embeddings
manifest and shard headers against the model's text widths, reward checkpoints, the
output folder), the prompts against what rule rewards need, and the GPU count the job was
given against the parallel layout. It builds no model and imports no model library, so a
job's typos cost seconds on the login node instead of one queue wait each.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Callable

from fastvideo_grpo.config import Config, ConfigError, config_problems, load_config

# Keys of a transformer's (or UNet's) config.json that give the text widths it reads.
TEXT_WIDTH_KEYS = ("text_embed_dim", "joint_attention_dim", "cross_attention_dim")
POOLED_WIDTH_KEYS = ("pooled_projection_dim",)


def preflight(config: str | Path, overrides: list[str], world_size: int | None = None,
              gpus_per_node: int | None = None) -> list[str]:
    """Every problem found, each one line naming the key, file or value; [] when the job
    can start. A config that does not parse (an unknown key, a wrong type) is one problem:
    nothing else can be checked without it."""
    try:
        cfg = load_config(config, overrides, check=False)
    except ConfigError as e:
        return [str(e)]
    checks: list[Callable[[], list[str]]] = [
        lambda: config_problems(cfg),
        lambda: algorithm_problems(cfg),
        lambda: family_problems(cfg),
        lambda: reward_problems(cfg),
        lambda: model_folder_problems(cfg),
        lambda: embeddings_problems(cfg, "data.embeddings_dir", cfg.data.embeddings_dir),
        lambda: embeddings_problems(cfg, "eval.embeddings_dir", cfg.eval.embeddings_dir),
        lambda: folder_exists("data.image_latents_dir", cfg.data.image_latents_dir),
        lambda: output_problems(cfg),
        lambda: prompt_problems(cfg),
        lambda: layout_problems(cfg, world_size, gpus_per_node),
    ]
    problems: list[str] = []
    for check in checks:
        try:
            problems += check()
        except (ConfigError, OSError, ValueError) as e:
            problems.append(str(e))
    return problems


def algorithm_problems(cfg: Config) -> list[str]:
    """train.algorithm is in the algorithm table, which config_problems cannot import."""
    from fastvideo_grpo.algorithms.registry import algorithm_of

    algorithm_of(cfg)  # its ConfigError names the table's algorithms
    return []


def family_problems(cfg: Config) -> list[str]:
    """model.family is registered and supports what the config asks of it (sequence
    parallelism, first-frame latents, its own rules): what the train CLI checks before launching."""
    from fastvideo_grpo.models import check_model_config

    check_model_config(cfg)
    return []


def reward_problems(cfg: Config) -> list[str]:
    """reward.weights' names and sections, then each used section's `path`/`base` folders."""
    from fastvideo_grpo.rewards.registry import REGISTRY

    from fastvideo_grpo.rewards import check_reward_config

    check_reward_config(cfg.reward)
    owners = {score: model for model in REGISTRY.values() for score in model.scores}
    problems = []
    for model in {owners[name].name: owners[name] for name in cfg.reward.weights}.values():
        if model.config is None:
            continue
        section = cfg.reward.models.get(model.name, {})
        for f in dataclasses.fields(model.config):
            value = section.get(f.name)
            if f.name in ("path", "base") and isinstance(value, str) and value and not Path(value).exists():
                problems.append(f"reward.models.{model.name}.{f.name}: {value} does not exist")
    return problems


def model_folder_problems(cfg: Config) -> list[str]:
    """model.path is a diffusers pipeline folder holding every component its
    model_index.json names."""
    if cfg.model.size == "tiny" or not cfg.model.path:
        return []
    folder = Path(cfg.model.path)
    if not folder.is_dir():
        return [f"model.path: {folder} is not a folder"]
    index = folder / "model_index.json"
    if not index.is_file():
        return [f"model.path: {folder} has no model_index.json; expected a diffusers-format pipeline folder"]
    components = [name for name, value in json.loads(index.read_text()).items()
                  if not name.startswith("_") and isinstance(value, list) and value[0] is not None]
    missing = [name for name in components if not (folder / name).is_dir()]
    return [f"model.path: {folder} lacks {', '.join(f'{m}/' for m in missing)} named in model_index.json"] if missing else []


def trained_component_config(cfg: Config) -> dict | None:
    """config.json of the model folder's transformer (or UNet), if it has one."""
    if cfg.model.size == "tiny" or not cfg.model.path:
        return None
    for name in ("transformer", "unet"):
        file = Path(cfg.model.path) / name / "config.json"
        if file.is_file():
            return json.loads(file.read_text())
    return None


def embeddings_problems(cfg: Config, key: str, folder: str) -> list[str]:
    """The manifest parses, its first shard exists and its widths are the model's."""
    if not folder:
        return []
    root = Path(folder)
    manifest = root / "manifest.jsonl"
    if not manifest.is_file():
        return [f"{key}: {manifest} does not exist; run data_preprocess/ for these prompts"]
    first = manifest.read_text().split("\n", 1)[0]
    try:
        shard = root / json.loads(first)["shard"]
    except (ValueError, KeyError, TypeError):
        return [f"{key}: {manifest} line 1 is not a manifest row with a 'shard': {first[:80]!r}"]
    if not shard.is_file():
        return [f"{key}: {shard} (named by {manifest} line 1) does not exist"]
    from safetensors import safe_open

    with safe_open(str(shard), framework="pt") as f:
        widths = {name: f.get_slice(name).get_shape()[-1] for name in ("prompt_embeds", "pooled_prompt_embeds")
                  if name in f.keys()}
    model = trained_component_config(cfg)
    if model is None:
        return []
    problems = []
    for name, keys in (("prompt_embeds", TEXT_WIDTH_KEYS), ("pooled_prompt_embeds", POOLED_WIDTH_KEYS)):
        expected = next((model[k] for k in keys if isinstance(model.get(k), int)), None)
        if expected is not None and name in widths and widths[name] != expected:
            problems.append(f"{key}: {shard} holds {name} of width {widths[name]}, but model.path's network "
                            f"reads {expected}; these embeddings were made with another text encoder")
    return problems


def folder_exists(key: str, folder: str) -> list[str]:
    return [f"{key}: {folder} is not a folder"] if folder and not Path(folder).is_dir() else []


def output_problems(cfg: Config) -> list[str]:
    """train.output_dir can be created and written by this user."""
    out = Path(cfg.train.output_dir)
    if out.exists() and not out.is_dir():
        return [f"train.output_dir: {out} is a file"]
    existing = next(p for p in [out, *out.absolute().parents] if p.exists())
    if not os.access(existing, os.W_OK | os.X_OK):
        return [f"train.output_dir: {existing} is not writable, so {out} cannot be written"]
    return []


def training_prompts(cfg: Config) -> list[str]:
    if cfg.data.embeddings_dir:
        manifest = Path(cfg.data.embeddings_dir) / "manifest.jsonl"
        if not manifest.is_file():
            return []
        return [json.loads(line)["prompt"] for line in manifest.read_text().splitlines() if line.strip()]
    if cfg.data.prompts_file and Path(cfg.data.prompts_file).is_file():
        from fastvideo_grpo.data.preprocess import read_prompt_file

        return read_prompt_file(cfg.data.prompts_file)[0]
    return []


def prompt_problems(cfg: Config) -> list[str]:
    """Each weighted reward that needs something of a prompt (a rule reward's colour word)
    finds it in every training prompt."""
    from fastvideo_grpo.rewards.registry import REGISTRY

    checks = {model.name: model.check_prompt for model in REGISTRY.values()
              if model.check_prompt is not None and set(model.scores) & set(cfg.reward.weights)}
    if not checks:
        return []
    prompts = training_prompts(cfg)
    problems = []
    for name, check in checks.items():
        failed = []
        for prompt in prompts:
            try:
                check(prompt)
            except ValueError as e:
                failed.append(str(e))
        if failed:
            problems.append(f"reward {name}: {len(failed)} of {len(prompts)} training prompts lack what it needs, "
                            f"the first: {failed[0]}")
    return problems


def layout_problems(cfg: Config, world_size: int | None, gpus_per_node: int | None) -> list[str]:
    """The ranks the job was given divide into sequence-parallel and replica groups, and a
    reward process's GPU is one the node has."""
    p = cfg.parallel
    problems = []
    if world_size is not None and world_size % (p.sp_size * p.dp_replicate):
        problems.append(f"parallel.sp_size x parallel.dp_replicate = {p.sp_size} x {p.dp_replicate} does not divide "
                        f"the {world_size} ranks this job was given")
    device = cfg.reward.device
    if gpus_per_node is not None and cfg.reward.mode == "process" and device.startswith("cuda:"):
        index = int(device.split(":")[1])
        if index >= gpus_per_node:
            problems.append(f"reward.device: {device} is not one of this node's {gpus_per_node} GPUs")
    return problems


def job_shape_from_env() -> tuple[int | None, int | None]:
    """(ranks, GPUs per node) of the job this runs in, from SLURM's or the launcher's
    variables; None where they do not say. A node may run fewer ranks than it has GPUs (the
    launch keeps one for the reward process)."""
    per_node = os.environ.get("NPROC_PER_NODE") or os.environ.get("SLURM_GPUS_ON_NODE")
    gpus = os.environ.get("GPUS_PER_NODE") or os.environ.get("SLURM_GPUS_ON_NODE") or per_node
    nodes = os.environ.get("SLURM_NNODES") or os.environ.get("NNODES") or "1"
    if not per_node:
        return None, None
    try:
        return int(nodes) * int(per_node), int(gpus)
    except ValueError:
        return None, None
