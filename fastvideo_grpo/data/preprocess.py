"""The model-independent half of offline encoding: read prompts (or image paths), split them
into shards over ranks, skip finished shards, write the manifest. A model adds an encode
function: a batch of items -> shard tensors."""

from __future__ import annotations

import hashlib
import json
import logging
import time
import unicodedata
from pathlib import Path
from typing import Callable

import torch
from safetensors import SafetensorError, safe_open

from fastvideo_grpo.data.embeddings import CHECKSUM, MANIFEST, NEGATIVE, shard_name, write_manifest, write_shard
from fastvideo_grpo.dtypes import DTYPES
from fastvideo_grpo.parallel import World, barrier

logger = logging.getLogger(__name__)

# A batch of items -> the shard tensors of that batch (first dim: the batch) and how many
# items were truncated.
EncodeFn = Callable[[list[str]], tuple[dict[str, torch.Tensor], int]]
JSON_SUFFIXES = (".jsonl", ".json")
BOM = b"\xef\xbb\xbf"
# Characters refused in a prompt: those str.splitlines splits at (one line would be one prompt
# to a reader and several to a splitlines reader, or the reverse), NUL, a byte order mark past
# the start of the file, and every other control character (category Cc) but tab and newline.
# None shows in an editor, and each changes what the encoder sees.
NOT_TEXT = {"\r": "carriage return", "\x0b": "vertical tab", "\x0c": "form feed", "\x00": "NUL",
            "\x1c": "file separator", "\x1d": "group separator", "\x1e": "record separator",
            "\x85": "next line (NEL)", "\u2028": "line separator", "\u2029": "paragraph separator",
            "\ufeff": "byte order mark past the start of the file"}
# The safetensors header key under which a shard records what it was encoded from.
FINGERPRINT = "fastvideo_grpo.fingerprint"
RERUN_HELP = ("Re-running into the same --output keeps a shard only if it was encoded from the same "
              "{items} with the same settings ({settings}, --dtype); any other shard is re-encoded, "
              "and the log names it and why. --overwrite re-encodes every shard.")


class PromptFileError(ValueError):
    """A prompt or input-list file that cannot be read as meant; the message names the file,
    the line and the value."""


def shorten(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def check_text(path: Path, number: int, text: str, field: str = "") -> None:
    """`field` names where in the line `text` sits (a JSON record's 'prompt')."""
    for column, char in enumerate(text, start=1):
        if char in NOT_TEXT or (unicodedata.category(char) == "Cc" and char not in "\t\n"):
            name = NOT_TEXT.get(char, "control character")
            raise PromptFileError(f"{path}:{number}:{field} character {column} is U+{ord(char):04X} ({name}) in "
                                  f"{shorten(text)!r}; expected plain text, one prompt a line")


def read_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, text) of a UTF-8 file, a leading byte order mark dropped. Lines end at
    \\n or \\r\\n only: str.splitlines would also split at form feeds, NEL, U+2028 and more,
    making one prompt several and shifting every later line number."""
    data = path.read_bytes()
    data = data[len(BOM):] if data.startswith(BOM) else data
    pieces = data.split(b"\n")
    if pieces[-1] == b"":  # the newline that ends the last line
        pieces.pop()
    lines = []
    for number, piece in enumerate(pieces, start=1):
        piece = piece[:-1] if piece.endswith(b"\r") else piece
        try:
            text = piece.decode("utf-8")
        except UnicodeDecodeError as e:
            raise PromptFileError(f"{path}:{number}: invalid UTF-8 at byte {e.start + 1} of the line "
                                  f"({piece[e.start:e.end]!r} in {piece[:80]!r}); save the file as UTF-8") from e
        check_text(path, number, text)
        lines.append((number, text))
    return lines


def json_prompt(path: Path, number: int, line: str) -> str:
    """The `prompt` string of one JSON Lines record ("" for a blank line); anything else
    is an error, not its str(): 42, null or a list would be encoded as the text "42", "None",
    "['a', 'b']"."""
    if not line.strip():
        return ""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise PromptFileError(f"{path}:{number}: not JSON ({e.msg} at column {e.colno}) in {shorten(line)!r}; "
                              "expected one JSON object a line with a 'prompt' field") from e
    if not isinstance(record, dict) or "prompt" not in record:
        raise PromptFileError(f"{path}:{number}: expected a JSON object with a 'prompt' field, got "
                              f"{shorten(line)!r}")
    prompt = record["prompt"]
    if not isinstance(prompt, str):
        raise PromptFileError(f"{path}:{number}: 'prompt' is {shorten(json.dumps(prompt))}, expected a string")
    check_text(path, number, prompt, " 'prompt'")
    return prompt.strip()


def read_prompt_file(path: str | Path) -> tuple[list[str], int]:
    """Prompts of a `.txt` (one a line) or `.jsonl`/`.json` (JSON Lines, `prompt` field)
    file in UTF-8, and how many blank lines were skipped."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompt file {path} does not exist")
    is_json = path.suffix.lower() in JSON_SUFFIXES
    prompts, blank = [], []
    for number, line in read_lines(path):
        prompt = json_prompt(path, number, line) if is_json else line.strip()
        if prompt:
            prompts.append(prompt)
        else:
            blank.append(number)
    report_blank_lines(path, blank)
    if not prompts:
        raise PromptFileError(f"prompt file {path} holds no prompts")
    return prompts, len(blank)


def report_blank_lines(path: Path, numbers: list[int]) -> None:
    if numbers:
        shown = ", ".join(map(str, numbers[:10])) + (", ..." if len(numbers) > 10 else "")
        logger.info("%s: skipped %d blank lines or empty prompts (line %s)", path, len(numbers), shown)


def stored(tensors: dict[str, torch.Tensor], dtype: str) -> dict[str, torch.Tensor]:
    """Floats in the requested dtype, integers as int64."""
    return {key: t.to(DTYPES[dtype]) if t.is_floating_point() else t.to(torch.int64) for key, t in tensors.items()}


def shard_fingerprint(items: list, settings: dict) -> dict:
    """What decides a shard's content: its items (hashed; a shard holds up to thousands) and
    the settings they are encoded with."""
    digest = hashlib.sha256(json.dumps(items).encode()).hexdigest()
    return {"items_sha256": digest, "items": len(items), "settings": settings}


def write_fingerprinted_shard(path: Path, tensors: dict[str, torch.Tensor], fingerprint: dict) -> None:
    """write_shard with the fingerprint in the safetensors header, so the shard itself says
    what it was encoded from."""
    write_shard(path, tensors, metadata={FINGERPRINT: json.dumps(fingerprint, sort_keys=True)})


def stale_reason(path: Path, fingerprint: dict, item_key: str) -> str | None:
    """Why the shard at `path` is not what this run would write (None: it is)."""
    try:
        with safe_open(path, framework="pt") as f:
            header = f.metadata() or {}
    except SafetensorError as e:
        return f"it is unreadable ({e})"
    if FINGERPRINT not in header:
        return "it records no fingerprint (written before shards stored one)"
    if CHECKSUM not in header:
        return "it records no checksum (written before shards stored one)"
    old = json.loads(header[FINGERPRINT])
    if old["items_sha256"] != fingerprint["items_sha256"]:
        return (f"its {old['items']} {item_key}s differ from the {fingerprint['items']} this run puts there "
                f"(sha256 {old['items_sha256'][:12]} -> {fingerprint['items_sha256'][:12]})")
    before, now = old["settings"], fingerprint["settings"]
    changed = sorted(key for key in before.keys() | now.keys() if before.get(key) != now.get(key))
    if changed:
        return "settings changed: " + "; ".join(
            f"{key} {shorten(json.dumps(before.get(key)))} -> {shorten(json.dumps(now.get(key)))}" for key in changed)
    return None


def preprocess(items: list[str], encode: EncodeFn, output: str | Path, world: World, shard_size: int = 1024,
               batch_size: int = 8, dtype: str = "bf16", overwrite: bool = False, item_key: str = "prompt",
               settings: dict | None = None, identify: Callable[[str], object] | None = None) -> dict:
    """Encode every shard this rank owns (shard i belongs to rank i % world size) that is
    not on disk yet, or whose fingerprint differs from this run's: its items (with
    `identify(item)`, e.g. an image file's size and time) and `settings` (what else decides
    the tensors: model path, max tokens, ...; dtype is added here). Rank 0 then writes the
    manifest: one row per item with its `item_key` (the prompt, or an image path), shard, row,
    and token count where the shards have one. Returns counts for the log."""
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    settings = {**(settings or {}), "dtype": dtype}
    num_shards = -(-len(items) // shard_size)
    encoded = skipped = reencoded = truncated = 0
    started = time.perf_counter()
    mine = range(world.rank, num_shards, world.world_size)
    for done, shard in enumerate(mine, start=1):
        path = output / shard_name(shard)
        chunk = items[shard * shard_size:(shard + 1) * shard_size]
        fingerprint = shard_fingerprint(chunk if identify is None else [[i, identify(i)] for i in chunk], settings)
        if path.exists() and not overwrite:
            reason = stale_reason(path, fingerprint, item_key)
            if reason is None:
                skipped += 1
                continue
            logger.warning("rank %d re-encodes %s: %s", world.rank, path, reason)
            reencoded += 1
        parts = [encode(chunk[start:start + batch_size]) for start in range(0, len(chunk), batch_size)]
        truncated += sum(count for _, count in parts)
        tensors = {key: torch.cat([batch[key] for batch, _ in parts]) for key in parts[0][0]}
        write_fingerprinted_shard(path, stored(tensors, dtype), fingerprint)
        encoded += 1
        eta = round((time.perf_counter() - started) / done * (len(mine) - done))
        logger.info("rank %d wrote %s (%d items; %d of its %d shards, ETA %d:%02d:%02d)", world.rank, path, len(chunk),
                    done, len(mine), eta // 3600, eta // 60 % 60, eta % 60)
    counts = {"shards_encoded": encoded, "shards_skipped": skipped, "shards_reencoded": reencoded,
              "prompts_truncated": truncated}
    barrier(world)
    if world.is_main:
        write_manifest(output, manifest_rows(items, output, num_shards, shard_size, item_key))
        logger.info("wrote %s (%d items in %d shards)", output / MANIFEST, len(items), num_shards)
        report_leftover_shards(output, num_shards)
    barrier(world)
    return counts


def report_leftover_shards(output: Path, num_shards: int) -> None:
    """Shards past the last one of this run are from an earlier, longer one: the manifest no
    longer lists them, so they are unused, not wrong; say so rather than delete data."""
    # Zero-padded names sort as their indices do.
    leftover = sorted(p.name for p in output.glob("shard_*.safetensors") if p.name >= shard_name(num_shards))
    if leftover:
        shown = ", ".join(leftover[:5]) + (", ..." if len(leftover) > 5 else "")
        logger.warning("%s: %d shards from an earlier run are not in %s (%s); they are unused, delete them",
                       output, len(leftover), MANIFEST, shown)


def write_negative(encode: EncodeFn, output: Path, dtype: str) -> None:
    """The empty prompt's embeddings, encoded like every prompt: the unconditional branch of
    classifier-free guidance (as the pipelines encode an absent negative prompt)."""
    tensors, _ = encode([""])
    write_shard(output / NEGATIVE, stored(tensors, dtype))
    logger.info("wrote %s", output / NEGATIVE)


def manifest_rows(items: list[str], output: Path, num_shards: int, shard_size: int, item_key: str) -> list[dict]:
    from safetensors import safe_open

    rows = []
    for shard in range(num_shards):
        with safe_open(output / shard_name(shard), framework="pt") as f:
            tokens = f.get_tensor("token_count").tolist() if "token_count" in f.keys() else None
        for row in range(len(items[shard * shard_size:(shard + 1) * shard_size])):
            i = shard * shard_size + row
            rows.append({"id": i, item_key: items[i], "shard": shard_name(shard), "row": row,
                         **({"tokens": tokens[row]} if tokens is not None else {})})
    return rows


def text_shard_tensors(embeds: torch.Tensor, mask: torch.Tensor, pooled: torch.Tensor) -> dict[str, torch.Tensor]:
    """The tensors of a text-embedding shard, as EmbeddingDataset reads them."""
    return {"prompt_embeds": embeds.cpu(), "prompt_attention_mask": mask.cpu(), "pooled_prompt_embeds": pooled.cpu(),
            "token_count": mask.sum(dim=1).cpu()}


def load_text_pipeline(pipeline_cls, model_path: Path, device: torch.device, components: tuple[str, ...],
                       **skipped):
    """A diffusers pipeline with only its text encoders and tokenizers loaded; `skipped`
    names the other components as None (transformer=None, vae=None, ...)."""
    for sub in components:
        if not (model_path / sub).is_dir():
            raise FileNotFoundError(f"--model-path {model_path}: no {sub}/; expected a diffusers folder for "
                                    f"{pipeline_cls.__name__}")
    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    return pipeline_cls.from_pretrained(model_path, torch_dtype=dtype, **skipped).to(device)
