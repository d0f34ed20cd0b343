"""Precomputed text embeddings on disk: safetensors shards plus a manifest.

    root/manifest.jsonl          one line per prompt: id, prompt, shard, row, tokens
    root/shard_00000.safetensors prompt_embeds [n, L, D], prompt_attention_mask [n, L],
                                 pooled_prompt_embeds [n, P], token_count [n]
    root/negative.safetensors    the same keys for the empty prompt (n = 1): the
                                 unconditional branch of classifier-free guidance

Shards are read lazily through memory-mapped `safe_open`; nothing is unpickled.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from fastvideo_grpo.file_modes import honour_umask
from fastvideo_grpo.models.base import TextConditioning

MANIFEST = "manifest.jsonl"
NEGATIVE = "negative.safetensors"
KEYS = ("prompt_embeds", "prompt_attention_mask", "pooled_prompt_embeds", "token_count")


def check_finite(tensor: torch.Tensor, what: str) -> None:
    """Precomputed inputs are checked as they are read: a NaN or inf byte in a shard would
    otherwise reach the loss and every weight."""
    if tensor.is_floating_point() and not torch.isfinite(tensor).all():
        bad = int((~torch.isfinite(tensor)).sum())
        raise ValueError(f"{what} holds {bad} non-finite values (NaN or inf); re-run data_preprocess/ for it")


def shard_name(index: int) -> str:
    return f"shard_{index:05d}.safetensors"


def write_shard(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Written under a temporary name and renamed: a shard that exists is complete.
    `metadata` goes into the safetensors header."""
    tmp = path.with_name(f".{path.name}.tmp")
    save_file({k: v.contiguous().cpu() for k, v in tensors.items()}, tmp, metadata=metadata)
    honour_umask(tmp)
    os.replace(tmp, path)


def write_manifest(root: Path, rows: list[dict]) -> None:
    tmp = root / f".{MANIFEST}.tmp"
    tmp.write_text("".join(json.dumps(row) + "\n" for row in rows))
    os.replace(tmp, root / MANIFEST)


def read_manifest(root: Path, writer: str) -> list[dict]:
    """The rows of root/manifest.jsonl, which `writer` produces."""
    manifest = root / MANIFEST
    if not manifest.is_file():
        raise FileNotFoundError(f"{manifest} does not exist; run {writer} first")
    return [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()]


class EmbeddingDataset:
    """Prompts and their text conditioning, indexed like the manifest."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.rows = read_manifest(self.root, "data_preprocess/ on the prompts")
        if not self.rows:
            raise ValueError(f"{self.root / MANIFEST} lists no prompts")
        self.prompts = [row["prompt"] for row in self.rows]
        self._files: dict[str, object] = {}
        rows_per_shard: dict[str, int] = {}
        for row in self.rows:
            rows_per_shard[row["shard"]] = max(rows_per_shard.get(row["shard"], 0), row["row"] + 1)
        shapes = [self._check_shard(name, n) for name, n in rows_per_shard.items()]
        if len({s[1:] for s in shapes}) > 1:
            raise ValueError(f"{self.root}: shards disagree on embedding shapes: {sorted(set(shapes))}")
        _, self.max_tokens, self.text_dim, self.pooled_dim = shapes[0]
        self.negative = self._read_negative(shapes[0][1:])

    def _read_negative(self, shape: tuple[int, int, int]) -> TextConditioning | None:
        """The empty prompt's embeddings, if preprocessing wrote them (required for CFG)."""
        if not (self.root / NEGATIVE).is_file():
            return None
        found = self._check_shard(NEGATIVE, 1)
        if found[1:] != shape:
            raise ValueError(f"{self.root / NEGATIVE}: (tokens, dim, pooled dim) {found[1:]} differ from the "
                             f"shards' {shape}")
        f = self._open(NEGATIVE)
        tensors = [f.get_tensor(key) for key in KEYS[:3]]
        for key, tensor in zip(KEYS[:3], tensors):
            check_finite(tensor, f"{self.root / NEGATIVE}: {key} of the empty prompt")
        return TextConditioning(*tensors)

    def _open(self, name: str):
        if name not in self._files:
            self._files[name] = safe_open(self.root / name, framework="pt")
        return self._files[name]

    def _check_shard(self, name: str, rows: int) -> tuple[int, int, int, int]:
        path = self.root / name
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing; {MANIFEST} lists {rows} rows in it")
        try:
            f = self._open(name)
            shapes = {key: tuple(f.get_slice(key).get_shape()) for key in KEYS}
        except Exception as e:
            raise ValueError(f"{path} is not a readable safetensors shard with {list(KEYS)} "
                             f"(truncated or corrupt?): {e}") from e
        n, length, dim = shapes["prompt_embeds"]
        expected = {"prompt_embeds": (rows, length, dim), "prompt_attention_mask": (rows, length),
                    "pooled_prompt_embeds": (rows, shapes["pooled_prompt_embeds"][-1]), "token_count": (rows,)}
        for key, shape in expected.items():
            if shapes[key] != shape:
                raise ValueError(f"{path}: {key} has shape {shapes[key]}, expected {shape} "
                                 f"({rows} rows per {MANIFEST})")
        return rows, length, dim, shapes["pooled_prompt_embeds"][-1]

    def __len__(self) -> int:
        return len(self.rows)

    def conditioning(self, indices: list[int]) -> TextConditioning:
        parts = {key: [] for key in KEYS[:3]}
        for i in indices:
            row = self.rows[i]
            f = self._open(row["shard"])
            for key in parts:
                tensor = f.get_slice(key)[row["row"]: row["row"] + 1]
                check_finite(tensor, f"{self.root / row['shard']}: {key} of row {row['row']} "
                                     f"(prompt {i}: {row['prompt']!r})")
                parts[key].append(tensor)
        negative = self.negative.repeat_interleave(len(indices)) if self.negative is not None else None
        return TextConditioning(torch.cat(parts["prompt_embeds"]), torch.cat(parts["prompt_attention_mask"]),
                                torch.cat(parts["pooled_prompt_embeds"]), negative)


class TinyRandomPrompts:
    """The tiny model's stand-in for precomputed embeddings: a prompt file encoded by a
    seeded random text encoder in process, the empty prompt included."""

    def __init__(self, prompts: list[str], encoder):
        self.prompts = prompts
        self.encoder = encoder
        self.text_dim = encoder.table.shape[1]
        self.pooled_dim = encoder.pool.shape[1]
        self.negative = encoder([""])

    def __len__(self) -> int:
        return len(self.prompts)

    def conditioning(self, indices: list[int]) -> TextConditioning:
        cond = self.encoder([self.prompts[i] for i in indices])
        cond.negative = self.negative.repeat_interleave(len(indices))
        return cond


class ImageLatents:
    """First-frame VAE latents (data_preprocess/preprocess_latents.py: shard key `latents`),
    row i conditioning prompt i."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.rows = read_manifest(self.root, "data_preprocess/preprocess_latents.py")
        self._files = {}
        for name in sorted({row["shard"] for row in self.rows}):
            path = self.root / name
            if not path.is_file():
                raise FileNotFoundError(f"{path} is missing; {self.root / MANIFEST} lists rows in it")
            self._files[name] = safe_open(path, framework="pt")
            if "latents" not in self._files[name].keys():
                raise ValueError(f"{path} has no `latents`; expected the output of preprocess_latents.py")

    def __len__(self) -> int:
        return len(self.rows)

    def latents(self, indices: list[int]) -> torch.Tensor:
        """[len(indices), C, 1, h, w]"""
        parts = []
        for i in indices:
            row = self.rows[i]
            tensor = self._files[row["shard"]].get_slice("latents")[row["row"]: row["row"] + 1]
            check_finite(tensor, f"{self.root / row['shard']}: latents of row {row['row']} (prompt {i})")
            parts.append(tensor)
        return torch.cat(parts)


class WithImageLatents:
    """A prompt source whose conditioning also carries each prompt's first-frame latent."""

    def __init__(self, source: EmbeddingDataset | TinyRandomPrompts, images: ImageLatents):
        if len(images) != len(source):
            raise ValueError(f"data.image_latents_dir={images.root} holds {len(images)} latents for "
                             f"{len(source)} prompts; expected one per prompt, in the same order")
        self.source = source
        self.images = images
        self.prompts = source.prompts
        self.text_dim = source.text_dim
        self.pooled_dim = source.pooled_dim

    def __len__(self) -> int:
        return len(self.source)

    def conditioning(self, indices: list[int]) -> TextConditioning:
        cond = self.source.conditioning(indices)
        cond.image_latents = self.images.latents(indices)
        return cond
