"""The model-family registry is the single source of families; models/tiny/ writes their folders."""

import json
import subprocess
import sys

import pytest
import torch

from conftest import ROOT
from fastvideo_grpo.config import Config, ConfigError, ModelConfig
from fastvideo_grpo.models import FAMILIES, build_policy, check_model_config
from fastvideo_grpo.models.tiny.__main__ import main as tiny_main
from fastvideo_grpo.models.tiny.text_encoders import COLOR_WORDS
from fastvideo_grpo.rewards.rules import COLORS

WITH_FOLDER = [name for name, family in FAMILIES.items() if family.write_tiny_folder is not None]


@pytest.mark.parametrize("name", WITH_FOLDER)
def test_every_tiny_folder_loads_as_its_family(tmp_path, capsys, name):
    assert tiny_main([name, str(tmp_path / name)]) == 0
    folder = capsys.readouterr().out.strip()
    assert json.loads((tmp_path / name / "model_index.json").read_text())["_class_name"] == FAMILIES[name].pipeline
    policy = build_policy(ModelConfig(family=name, path=folder, dtype="fp32"), torch.device("cpu"), 0, 0)
    assert all(p.dtype == torch.float32 for p in policy.transformer.parameters())
    # The blocks are the network's own block lists, found by name, and together hold every
    # parameter under them.
    names = block_names(policy)
    assert None not in names and len(set(names)) == len(names)
    assert {n.split(".")[0] for n in names} == {n.split(".")[0] for n in BLOCKS[name]}
    in_blocks = {id(p) for block in policy.blocks for p in block.parameters()}
    prefixes = tuple(f"{n.split('.')[0]}." for n in names)
    under = [n for n, p in policy.transformer.named_parameters() if n.startswith(prefixes)]
    assert under and all(id(p) in in_blocks for n, p in policy.transformer.named_parameters() if n in under)


# The units FSDP shards and activation checkpointing wraps, by their names in the network, for
# tiny_layers=2 and tiny_single_layers=3: the transformers' double blocks then their single
# blocks, as many as asked; Wan's one kind of block, tiny_layers of them; the tiny UNet's two
# levels of down and up blocks around its middle.
TRANSFORMER_BLOCKS = [f"transformer_blocks.{i}" for i in range(2)] + [f"single_transformer_blocks.{i}" for i in range(3)]
BLOCKS = {"hunyuan_video": TRANSFORMER_BLOCKS, "hunyuan_video_i2v": TRANSFORMER_BLOCKS, "flux": TRANSFORMER_BLOCKS,
          "stable_diffusion": ["down_blocks.0", "down_blocks.1", "mid_block", "up_blocks.0", "up_blocks.1"],
          "wan": ["blocks.0", "blocks.1"], "wan_ti2v": ["blocks.0", "blocks.1"],
          "wan_ti2v_i2v": ["blocks.0", "blocks.1"],
          "hunyuan_video_15": [f"transformer_blocks.{i}" for i in range(2)],
          "hunyuan_video_15_i2v": [f"transformer_blocks.{i}" for i in range(2)]}


def block_names(policy) -> list[str | None]:
    names = {id(module): name for name, module in policy.transformer.named_modules()}
    return [names.get(id(block)) for block in policy.blocks]


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_every_family_builds_its_tiny_model_with_the_blocks_its_config_asks_for(name):
    policy = build_policy(ModelConfig(family=name, size="tiny", tiny_heads=4, tiny_head_dim=16, tiny_layers=2,
                                      tiny_single_layers=3), torch.device("cpu"), 16, 8)
    assert block_names(policy) == BLOCKS[name]


def test_the_tiny_cli_offers_the_families_with_a_folder(capsys, tmp_path):
    with pytest.raises(SystemExit) as info:
        tiny_main(["no_such_family", str(tmp_path / "unused")])
    assert info.value.code == 2
    error = capsys.readouterr().err
    assert "argument family: invalid choice: 'no_such_family'" in error
    offered = error.split("choose from", 1)[1]
    assert [name for name in FAMILIES if name in offered.replace("'", " ").split()] == WITH_FOLDER
    # A family without a tiny folder writer (its tiny model is built in process) is refused too.
    for name in (n for n, family in FAMILIES.items() if family.write_tiny_folder is None):
        with pytest.raises(SystemExit):
            tiny_main([name, str(tmp_path / name)])
    assert not any(tmp_path.iterdir())


def test_an_unknown_family_names_model_family_before_anything_is_built():
    cfg = Config()
    cfg.model.family = "sdxl"
    expected = f"model.family: 'sdxl' is not one of {list(FAMILIES)}"
    with pytest.raises(ConfigError) as info:
        check_model_config(cfg)
    assert str(info.value) == expected
    with pytest.raises(ConfigError, match="model.family: 'sdxl'"):
        build_policy(cfg.model, torch.device("cpu"), 16, 8)


def test_the_train_cli_refuses_an_unknown_family_as_a_config_error(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "fastvideo_grpo.train", "--config", str(ROOT / "assets/configs/tiny_t2v.yaml"),
         "model.family=sdxl", f"train.output_dir={tmp_path}"], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 2
    assert "model.family: 'sdxl' is not one of" in result.stderr
    assert not any(tmp_path.iterdir())


def test_sequence_parallel_needs_a_family_that_declares_it():
    cfg = Config()
    cfg.parallel.sp_size = 2
    check_model_config(cfg)  # hunyuan_video
    for name in (n for n, family in FAMILIES.items() if not family.sequence_parallel):
        cfg.model.family = name
        with pytest.raises(ConfigError, match=f"parallel.sp_size: 2 is invalid; expected 1 for model.family '{name}'"):
            check_model_config(cfg)


def test_what_a_family_needs_of_the_config_is_checked_by_its_entry(tmp_path):
    """First-frame latents for an image-conditioned family; a pretrained tiny folder only for
    a family that loads one; the family's own rules (HunyuanVideo: the sp token split)."""
    (tmp_path / "text_encoder.json").write_text("{}")
    cfg = Config()
    cfg.model.family = "hunyuan_video_i2v"
    with pytest.raises(ConfigError, match=r"data.image_latents_dir: '' is invalid; expected first-frame latents"):
        check_model_config(cfg)
    cfg.data.image_latents_dir = "/latents"
    check_model_config(cfg)
    cfg.model.size, cfg.model.path = "tiny", str(tmp_path)
    for name in ("hunyuan_video_i2v", "flux", "stable_diffusion"):
        cfg.model.family = name
        with pytest.raises(ConfigError, match=rf"model.path: '{tmp_path}' is invalid; expected empty with "
                                              rf"model.size: tiny: model.family '{name}' builds its tiny model"):
            check_model_config(cfg)
    cfg.model.family = "hunyuan_video"  # loads it (assets/shapes_model)
    check_model_config(cfg)
    cfg.model.path, cfg.parallel.sp_size = "", 2
    cfg.sampling.num_frames, cfg.sampling.height, cfg.sampling.width = 1, 48, 48  # 3 x 3 tokens: 2 does not split them
    with pytest.raises(ConfigError, match="parallel.sp_size: 2 is invalid for sampling.height=48"):
        check_model_config(cfg)


def test_the_tiny_vocabulary_holds_the_color_rewards_words():
    assert set(COLOR_WORDS) == set(COLORS)


def test_models_do_not_import_rewards():
    code = "import sys, fastvideo_grpo.models; print([m for m in sys.modules if m.startswith('fastvideo_grpo.rewards')])"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert result.stdout.strip() == "[]"
