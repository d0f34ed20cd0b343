"""CLI: checkpoint -> diffusers folder.

    python -m fastvideo_grpo.export --checkpoint RUN/checkpoints/step_N --output OUT
        [--ema] [--dtype bf16] [--base-model HUNYUAN_FOLDER] [--max-shard-size 5GB] [--adapter-only]
    python -m fastvideo_grpo.export --checkpoint RUN --best --output OUT ...

Writes the trained network as the pipeline component its diffusers class is named by:
OUT/transformer/ for a transformer, OUT/unet/ for a UNet (Stable Diffusion), and as each of its
components for a network of several (Wan2.2 A14B: OUT/transformer/ and OUT/transformer_2/), holding
config.json + diffusion_pytorch_model*.safetensors (sharded over the size threshold) that
`<Class>.from_pretrained(OUT, subfolder=...)` loads. With --base-model, the other
components (vae, text encoders, tokenizers, scheduler, model_index.json) are copied next to
it so that the whole pipeline loads from OUT. --checkpoint may also be RUN/checkpoints/latest,
RUN/checkpoints or RUN: the run's latest checkpoint; with --best, the run's best held-out
evaluation's (RUN/checkpoints/best, marked by early stop). Its files are first checked against
the checkpoint's manifest (CRC32s unless the run had checkpoint.verify=false).

Export never deletes what it did not write. OUT must be new, empty, or an earlier export
(marked by OUT/fastvideo_grpo_export.json); the run folder, anything inside it, the base
model's folder and the current directory are refused. The export is written beside OUT in a
hidden temp folder (removed if writing fails, e.g. on a full disk), and an earlier export is
replaced by renames: OUT -> .OUT.export-old, temp -> OUT, then the old one is removed. A kill
at any point leaves the old export or the new one; if it struck between the two renames, the
next export to OUT puts the old one back first.

A LoRA run's checkpoint holds only the adapters, and a run that froze part of the network
(model.train_experts) only the rest; the base weights come from the run's config (model.path,
or the seeded tiny model). A LoRA export merges the adapters into the weights, or with
--adapter-only writes OUT/pytorch_lora_weights.safetensors, which a pipeline's
`load_lora_weights(OUT)` reads (for several components, one file in each trained component's
folder: `load_lora_weights(OUT/transformer_2, load_into_transformer_2=True)`).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from pathlib import Path

import diffusers
import torch

from fastvideo_grpo.checkpoint import (CHECKPOINTS, TRANSFORMER_CONFIG, best_checkpoint, load_shards, resolve_checkpoint,
                                       saved_keys, verify_checkpoint)
from fastvideo_grpo.cli.errors import run_cli
from fastvideo_grpo.config import Config, load_config, run_config_path
from fastvideo_grpo.dtypes import DTYPES
from fastvideo_grpo.file_modes import honour_umask
from fastvideo_grpo.models import FAMILIES, ModelFamily, build_policy, model_family
from fastvideo_grpo.models.lora import apply_lora, trainable_state
from fastvideo_grpo.quiet import silence_library_noise

logger = logging.getLogger(__name__)


def run_config(checkpoint: Path) -> Config | None:
    """The training config saved beside the checkpoints (RUN/config.yaml), if any."""
    path = run_config_path(checkpoint)
    return load_config(path) if path is not None else None


def base_network(cfg: Config) -> torch.nn.Module:
    """The run's base network, with its frozen parts frozen, and for a LoRA run fresh adapters
    attached."""
    m = cfg.model
    # The text widths only shape the tiny model; a full-size builder would check them against
    # its folder, and the run's embeddings are not at hand here.
    widths = (m.tiny_text_dim, m.tiny_pooled_dim) if m.size == "tiny" else (0, 0)
    model = build_policy(m, torch.device("cpu"), *widths).transformer
    if m.lora_rank > 0:
        apply_lora(model, m.lora_rank, m.lora_alpha, model_family(m).lora_targets)
    return model


def transformer_config(checkpoint: Path) -> Path:
    """The checkpoint's transformer config file; an error naming the folder if it has none."""
    path = checkpoint / TRANSFORMER_CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"{checkpoint} is not a checkpoint: no {TRANSFORMER_CONFIG}")
    return path


def checkpoint_family(checkpoint: Path, cfg: Config | None) -> ModelFamily:
    """The family of a checkpoint's network: its run's model.family (`cfg`, the config beside
    the checkpoints), else the registered family whose network class its config names."""
    if cfg is not None:
        return model_family(cfg.model)
    name = json.loads(transformer_config(checkpoint).read_text()).get("_class_name")
    family = next((f for f in FAMILIES.values() if name in {c.__name__ for c in (f.network, *f.networks)}), None)
    if family is None:
        raise ValueError(f"{checkpoint / TRANSFORMER_CONFIG}: _class_name {name!r} is the network of none of the "
                         f"model families {list(FAMILIES)}, and no run config.yaml beside the checkpoints names one")
    return family


def load_trained_transformer(checkpoint: str | Path, ema: bool = False) -> torch.nn.Module:
    """The checkpoint's transformer on CPU (with LoRA adapters still separate). `checkpoint`
    is a step_N folder, or what `resolve_checkpoint` takes for one."""
    checkpoint = resolve_checkpoint(checkpoint)
    config_path = transformer_config(checkpoint)
    cfg = run_config(checkpoint)
    verify_checkpoint(checkpoint, checksums=cfg is None or cfg.checkpoint.verify)  # the run's checkpoint.verify
    if ema and not any(key.startswith("ema.") for key in saved_keys(checkpoint)):
        raise ValueError(f"{checkpoint} holds no EMA weights: its run had train.ema_decay = 0")
    if cfg is not None and cfg.model.lora_rank > 0:
        model = base_network(cfg)
    else:
        config = json.loads(config_path.read_text())
        with torch.device("meta"):
            model = checkpoint_family(checkpoint, cfg).network_class(config).from_config(config)
        saved = saved_keys(checkpoint)
        if all(f"model.{name}" in saved for name in model.state_dict()):
            model.to_empty(device="cpu")
        elif cfg is None:
            raise ValueError(f"{checkpoint} holds part of the network (its run froze the rest, model.train_experts), "
                             "and no run config.yaml beside the checkpoints names the base model to take the rest "
                             "from")
        else:
            model = base_network(cfg)  # the frozen part's weights
    state = {"model": trainable_state(model.state_dict(), model)}
    if ema:
        state["ema"] = {name: torch.empty_like(p) for name, p in model.named_parameters() if p.requires_grad}
    load_shards(state, checkpoint)
    model.load_state_dict(state["model"], strict=False)
    if ema:
        model.load_state_dict(state["ema"], strict=False)
    return model.eval()


def is_lora(model: torch.nn.Module) -> bool:
    return bool(getattr(model, "peft_config", None))


def save_adapter(model: torch.nn.Module, folder: Path, family: ModelFamily) -> None:
    """diffusers' LoRA file: peft weights prefixed with the family's component name
    (`transformer.`, `unet.`) with the adapter config, as its pipeline class writes it. A
    network of several components writes one file per adapted component, in its folder."""
    from peft.utils import get_peft_model_state_dict

    component = family.component
    writer = getattr(diffusers, family.pipeline)
    if not hasattr(writer, "save_lora_weights"):
        raise ValueError(f"--adapter-only: diffusers' {family.pipeline} has no LoRA loader (save_lora_weights) to "
                         "write or load an adapter file with; export without --adapter-only for the merged weights")
    layers, metadata = get_peft_model_state_dict(model), model.peft_config["default"].to_dict()
    parts = family.components(model)
    if len(parts) > 1:  # each file adapts one component: the others' frozen modules are not in it
        metadata["exclude_modules"] = None
    names = {id(module): name for name, module in model.named_modules()}
    for name, part in parts.items():
        prefix = f"{names[id(part)]}." if len(parts) > 1 else ""
        own = {key[len(prefix):]: value for key, value in layers.items() if key.startswith(prefix)}
        if own:
            writer.save_lora_weights(folder / name if len(parts) > 1 else folder,
                                     **{f"{component}_lora_layers": own, f"{component}_lora_adapter_metadata": metadata})


def copy_base_components(base: Path, output: Path, trained: set[str]) -> None:
    """Everything of the base pipeline but its `trained` components."""
    if not (base / "model_index.json").is_file():
        raise FileNotFoundError(f"--base-model {base}: no model_index.json; expected a diffusers pipeline folder")
    for entry in base.iterdir():
        if entry.name in trained or entry.name.startswith("."):
            continue
        target = output / entry.name
        if entry.is_dir():
            shutil.copytree(entry, target, dirs_exist_ok=True)
        else:
            shutil.copy2(entry, target)


EXPORT_MARKER = "fastvideo_grpo_export.json"


def siblings(output: Path) -> tuple[Path, Path]:
    """The hidden folders beside `output` that an export writes to (temp) and moves an
    earlier export to (old) while replacing it."""
    return output.with_name(f".{output.name}.export-tmp"), output.with_name(f".{output.name}.export-old")


def recover(output: Path) -> None:
    """Finish what a killed export left beside `output`: a half-written temp folder is
    removed; an earlier export moved aside goes back to `output` if the new one never
    arrived, else it is removed."""
    tmp, old = siblings(output)
    shutil.rmtree(tmp, ignore_errors=True)
    if old.is_dir():
        if output.exists():
            shutil.rmtree(old)
        else:
            old.rename(output)
            logger.warning("%s: an export was killed while replacing it; the earlier export is back", output)


def _within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_output(output: Path, checkpoint: Path, base_model: Path | None) -> None:
    """Refuse an output folder whose replacement would delete what export did not write."""
    out = output.resolve()
    run = checkpoint.parent.parent if checkpoint.parent.name == CHECKPOINTS else checkpoint
    if out == Path.cwd().resolve() or _within(Path.cwd().resolve(), out):
        raise ValueError(f"--output {output} is the current directory or holds it; name a new folder for the export")
    for folder, what in ((run.resolve(), "the run folder of the checkpoint"), (checkpoint.resolve(), "the checkpoint"),
                         (base_model.resolve() if base_model else None, "the --base-model folder")):
        if folder is not None and (_within(out, folder) or _within(folder, out)):
            raise ValueError(f"--output {output} is, holds or lies inside {what} ({folder}); export never writes "
                             "there: name a folder outside it")
    if out.exists() and not out.is_dir():
        raise ValueError(f"--output {output} is a file; name a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / EXPORT_MARKER).is_file():
        raise ValueError(f"--output {output} is a non-empty folder that is not an earlier export (it has no "
                         f"{EXPORT_MARKER}); export replaces only its own exports. To overwrite it, delete it "
                         "yourself first, or name another folder")


def export(checkpoint: str | Path, output: str | Path, ema: bool = False, dtype: str = "fp32",
           base_model: str | Path | None = None, max_shard_size: str = "5GB", adapter_only: bool = False) -> Path:
    output = Path(output)
    checkpoint = resolve_checkpoint(checkpoint)
    transformer_config(checkpoint)
    check_output(output, checkpoint, Path(base_model) if base_model is not None else None)
    recover(output)
    model = load_trained_transformer(checkpoint, ema)
    family = checkpoint_family(checkpoint, run_config(checkpoint))
    if adapter_only and not is_lora(model):
        raise ValueError(f"--adapter-only: {checkpoint} is not from a LoRA run (model.lora_rank = 0)")
    tmp, old = siblings(output)
    tmp.mkdir(parents=True)
    try:
        if adapter_only:
            save_adapter(model.to(DTYPES[dtype]), tmp, family)
        else:
            if is_lora(model):
                model.fuse_lora()
                model.unload_lora()
            for name, part in family.components(model.to(DTYPES[dtype])).items():
                part.save_pretrained(tmp / name, safe_serialization=True, max_shard_size=max_shard_size)
        if base_model is not None:
            copy_base_components(Path(base_model), tmp, set(family.components(model)))
        # Written last: a folder holding it is a complete export, which a later export may replace.
        (tmp / EXPORT_MARKER).write_text(json.dumps({"checkpoint": str(checkpoint), "ema": ema, "dtype": dtype,
                                                     "adapter_only": adapter_only}, indent=1) + "\n")
        honour_umask(tmp)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError) and e.errno is not None:  # a full disk names no folder
            raise OSError(e.errno, f"exporting to {output} failed ({e.strerror}); removed the partial export "
                                   f"{tmp}") from e
        raise
    replace_folder(tmp, output, old)
    logger.info("exported %s%s as %s to %s", checkpoint, " (EMA)" if ema else "", dtype, output)
    return output


def replace_folder(new: Path, output: Path, old: Path) -> None:
    """Put the folder `new` at `output`, moving what is there (an earlier export or an empty
    folder) to `old` first and removing it last."""
    if output.exists():
        output.rename(old)
    new.rename(output)
    shutil.rmtree(old, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Export a training checkpoint as a diffusers folder")
    parser.add_argument("--checkpoint", required=True,
                        help="a RUN/checkpoints/step_N folder, RUN/checkpoints/latest or RUN (its latest checkpoint)")
    parser.add_argument("--output", required=True,
                        help="a new or empty folder, or an earlier export (replaced); never the run or base model")
    parser.add_argument("--ema", action="store_true", help="export the EMA weights")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    parser.add_argument("--base-model", help="diffusers pipeline folder to take the other components from")
    parser.add_argument("--max-shard-size", default="5GB")
    parser.add_argument("--adapter-only", action="store_true", help="LoRA runs: write only the adapter file")
    parser.add_argument("--best", action="store_true",
                        help="export the run's best checkpoint (--checkpoint is then RUN or RUN/checkpoints)")
    args = parser.parse_args(argv)
    silence_library_noise()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    checkpoint = args.checkpoint
    if args.best:
        run = Path(checkpoint).parent if Path(checkpoint).name == CHECKPOINTS else Path(checkpoint)
        checkpoint = best_checkpoint(run)
    export(checkpoint, args.output, args.ema, args.dtype, args.base_model, args.max_shard_size,
           args.adapter_only)
    return 0


def command() -> int:
    """`fastvideo-grpo-export` and `python -m fastvideo_grpo.export`: main on sys.argv, a user error as one
    line and exit status 2."""
    return run_cli(main)


if __name__ == "__main__":
    sys.exit(command())
