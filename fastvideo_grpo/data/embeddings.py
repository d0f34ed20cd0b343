"""Precomputed text embeddings on disk: safetensors shards plus a manifest.

    root/manifest.jsonl          one line per prompt: id, prompt, shard, row, tokens
    root/shard_00000.safetensors prompt_embeds [n, L, D], prompt_attention_mask [n, L],
                                 pooled_prompt_embeds [n, P], token_count [n]
    root/negative.safetensors    the same keys for the empty prompt (n = 1): the
                                 unconditional branch of classifier-free guidance

Shards are read lazily through memory-mapped `safe_open`; nothing is unpickled. Each shard's
header records the CRC32 of every row (prompt), checked as the row is read.
"""

from __future__ import annotations

import json
import logging
import os
import zlib
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from fastvideo_grpo.checkpoint.folders import write_atomic
from fastvideo_grpo.checkpoint.integrity import summary
from fastvideo_grpo.file_modes import honour_umask
from fastvideo_grpo.models.base import TextConditioning

logger = logging.getLogger(__name__)

MANIFEST = "manifest.jsonl"
NEGATIVE = "negative.safetensors"
KEYS = ("prompt_embeds", "prompt_attention_mask", "pooled_prompt_embeds", "token_count")
# The safetensors header key holding, per row (first dimension: one prompt), the CRC32 of that
# row's bytes in every tensor, key by key in sorted order, separated by spaces: a reader checks
# exactly the rows it reads, never a whole shard it mostly does not need.
CHECKSUM = "fastvideo_grpo.row_crc32"


def check_finite(tensor: torch.Tensor, what: str) -> None:
    """Precomputed inputs are checked as they are read: a NaN or inf byte in a shard would
    otherwise reach the loss and every weight."""
    if tensor.is_floating_point() and not torch.isfinite(tensor).all():
        bad = int((~torch.isfinite(tensor)).sum())
        raise ValueError(f"{what} holds {bad} non-finite values (NaN or inf); re-run data_preprocess/ for it")


def shard_name(index: int) -> str:
    return f"shard_{index:05d}.safetensors"


def rows_crc32(tensors: dict[str, torch.Tensor]) -> list[str]:
    """CRC32 of each row of the tensors (contiguous, on the CPU, one first dimension), its
    bytes key by key in sorted order."""
    shapes = {key: tuple(t.shape) for key, t in tensors.items()}
    if len({shape[:1] for shape in shapes.values()}) != 1 or () in shapes.values():
        raise ValueError(f"shard tensors need one first dimension (rows); got shapes {shapes}")
    crcs = []
    for row in range(next(iter(shapes.values()))[0]):
        crc = 0
        for key in sorted(tensors):
            crc = zlib.crc32(tensors[key][row].reshape(-1).view(torch.uint8).numpy(), crc)
        crcs.append(f"{crc:08x}")
    return crcs


def write_shard(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Written under a temporary name and renamed: a shard that exists is complete; a failed
    write (a full disk) removes the partial file. `metadata` goes into the safetensors
    header, with each row's CRC32."""
    tensors = {k: v.contiguous().cpu() for k, v in tensors.items()}
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        save_file(tensors, tmp, metadata={**(metadata or {}), CHECKSUM: " ".join(rows_crc32(tensors))})
        honour_umask(tmp)
        os.replace(tmp, path)
    except (OSError, SafetensorError) as e:
        tmp.unlink(missing_ok=True)
        raise OSError(f"writing {path} failed ({summary(e)}); the partial file was removed") from e


def write_manifest(root: Path, rows: list[dict]) -> None:
    write_atomic(root / MANIFEST, "".join(json.dumps(row) + "\n" for row in rows))


def read_manifest(root: Path, writer: str, required: tuple[str, ...] = ("shard", "row")) -> list[dict]:
    """The rows of root/manifest.jsonl, which `writer` produces; each must hold `required`."""
    manifest = root / MANIFEST
    if not manifest.is_file():
        raise FileNotFoundError(f"{manifest} does not exist; run {writer} first")
    rows = []
    for number, line in enumerate(manifest.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{manifest}:{number}: not JSON ({e.msg} at column {e.colno}): truncated or "
                             f"damaged; re-run {writer}") from e
        missing = [key for key in required if not isinstance(row, dict) or key not in row]
        if missing:
            raise ValueError(f"{manifest}:{number}: the row has no {', '.join(map(repr, missing))}; expected "
                             f"{', '.join(map(repr, required))} in every row; re-run {writer}")
        rows.append(row)
    return rows


class VerifiedShards:
    """The shards of one folder, opened with `safe_open`; `row` checks each row it reads
    against the CRC32 its shard's header records. Shards without one are read with one
    warning."""

    def __init__(self, root: Path):
        self.root = root
        self.files: dict[str, object] = {}
        self.checksums: dict[str, list[str] | None] = {}
        self.warned = False

    def open(self, name: str):
        """The shard's header and lazy tensors, unchecked (for shapes and keys)."""
        if name not in self.files:
            self.files[name] = safe_open(self.root / name, framework="pt")
        return self.files[name]

    def row(self, name: str, row: int) -> dict[str, torch.Tensor]:
        """Row `row` of every tensor of the shard, [1, ...] each, checked."""
        f = self.open(name)
        tensors = {key: f.get_slice(key)[row:row + 1] for key in f.keys()}
        expected = self.recorded(name)
        if expected is not None and (found := rows_crc32(tensors)[0]) != expected[row]:
            raise ValueError(f"{self.root / name}: row {row} does not hold the bytes preprocessing wrote (CRC32 "
                             f"{found}, the header records {expected[row]}): the shard is corrupted; re-run "
                             "data_preprocess/ for it")
        return tensors

    def recorded(self, name: str) -> list[str] | None:
        if name not in self.checksums:
            f = self.open(name)
            text = (f.metadata() or {}).get(CHECKSUM)
            crcs = text.split() if text is not None else None
            rows = f.get_slice(next(iter(f.keys()))).get_shape()[0]
            if crcs is not None and len(crcs) != rows:
                raise ValueError(f"{self.root / name}: the header records {len(crcs)} row checksums for {rows} rows: "
                                 "it is corrupted; re-run data_preprocess/ for it")
            if crcs is None and not self.warned:
                logger.warning("%s records no checksums (written before shards stored them): its rows are not "
                               "verified; re-run data_preprocess/ into %s to add them", self.root / name, self.root)
                self.warned = True
            self.checksums[name] = crcs
        return self.checksums[name]


class EmbeddingDataset:
    """Prompts and their text conditioning, indexed like the manifest."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.rows = read_manifest(self.root, "data_preprocess/ on the prompts", ("prompt", "shard", "row"))
        if not self.rows:
            raise ValueError(f"{self.root / MANIFEST} lists no prompts")
        self.prompts = [row["prompt"] for row in self.rows]
        self.shards = VerifiedShards(self.root)
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
        row = self.shards.row(NEGATIVE, 0)
        tensors = [row[key] for key in KEYS[:3]]
        for key, tensor in zip(KEYS[:3], tensors):
            check_finite(tensor, f"{self.root / NEGATIVE}: {key} of the empty prompt")
        return TextConditioning(*tensors)

    def _check_shard(self, name: str, rows: int) -> tuple[int, int, int, int]:
        path = self.root / name
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing; {MANIFEST} lists {rows} rows in it")
        try:
            f = self.shards.open(name)
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
            tensors = self.shards.row(row["shard"], row["row"])
            for key in parts:
                tensor = tensors[key]
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
    row i conditioning prompt i; with the image encoder's tokens (`image_embeds`) where
    preprocessing wrote them (a family with an image encoder: every shard or none)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.rows = read_manifest(self.root, "data_preprocess/preprocess_latents.py")
        self.shards = VerifiedShards(self.root)
        keys = {}
        for name in sorted({row["shard"] for row in self.rows}):
            path = self.root / name
            if not path.is_file():
                raise FileNotFoundError(f"{path} is missing; {self.root / MANIFEST} lists rows in it")
            keys[name] = set(self.shards.open(name).keys())
            if "latents" not in keys[name]:
                raise ValueError(f"{path} has no `latents`; expected the output of preprocess_latents.py")
        with_embeds = sorted(name for name, k in keys.items() if "image_embeds" in k)
        if with_embeds and len(with_embeds) != len(keys):
            raise ValueError(f"{self.root}: {with_embeds} hold `image_embeds`, {sorted(set(keys) - set(with_embeds))} "
                             "do not; re-run preprocess_latents.py with --overwrite")

    def __len__(self) -> int:
        return len(self.rows)

    def tensors(self, indices: list[int]) -> dict[str, torch.Tensor]:
        """The rows' `latents` [len(indices), C, 1, h, w] and, where written, `image_embeds`
        [len(indices), N, D]."""
        parts = {}
        for i in indices:
            row = self.rows[i]
            for key, tensor in self.shards.row(row["shard"], row["row"]).items():
                check_finite(tensor, f"{self.root / row['shard']}: {key} of row {row['row']} (prompt {i})")
                parts.setdefault(key, []).append(tensor)
        return {key: torch.cat(rows) for key, rows in parts.items()}

    def latents(self, indices: list[int]) -> torch.Tensor:
        """[len(indices), C, 1, h, w]"""
        return self.tensors(indices)["latents"]


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
        tensors = self.images.tensors(indices)
        cond.image_latents, cond.image_embeds = tensors["latents"], tensors.get("image_embeds")
        return cond
