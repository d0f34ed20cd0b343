"""The train_*.sh scripts each set their config and paths and exec train_scripts/launch.sh,
which runs the preflight and torchrun: here both are stand-ins that record their arguments."""

import os
import subprocess

import pytest
from conftest import ROOT

RECORDER = """#!/usr/bin/env bash
printf '%s\\n' "$@" > "$RECORD.$(basename "$0")"
"""

# Each script, its config, and the environment of its own paths with the overrides they set.
SCRIPTS = {
    "train_hunyuan_t2v.sh": ("hunyuan_t2v.yaml", {"VIDEOALIGN_PATH": "reward.models.videoalign.path",
                                                  "VIDEOALIGN_BASE": "reward.models.videoalign.base"}),
    "train_hunyuan_i2v.sh": ("hunyuan_i2v.yaml", {"VIDEOALIGN_PATH": "reward.models.videoalign.path",
                                                  "VIDEOALIGN_BASE": "reward.models.videoalign.base",
                                                  "LATENTS_DIR": "data.image_latents_dir"}),
    "train_hunyuan_t2i.sh": ("hunyuan_t2i.yaml", {"HPS_PATH": "reward.models.hps.path"}),
    "train_flux_t2i.sh": ("flux_t2i.yaml", {"HPS_PATH": "reward.models.hps.path", "CLIP_PATH": "reward.models.clip.path"}),
    "train_sd_t2i.sh": ("sd_t2i.yaml", {"HPS_PATH": "reward.models.hps.path"}),
    "train_hunyuan_video_15_t2v.sh": ("hunyuan_video_15_t2v.yaml", {"VIDEOALIGN_PATH": "reward.models.videoalign.path",
                                                                    "VIDEOALIGN_BASE": "reward.models.videoalign.base"}),
    "train_wan21_t2v.sh": ("wan21_t2v_1_3b.yaml", {"VIDEOALIGN_PATH": "reward.models.videoalign.path",
                                                   "VIDEOALIGN_BASE": "reward.models.videoalign.base"}),
    "train_wan22_ti2v.sh": ("wan22_ti2v_5b.yaml", {"VIDEOALIGN_PATH": "reward.models.videoalign.path",
                                                   "VIDEOALIGN_BASE": "reward.models.videoalign.base"}),
    "train_wan22_t2v_a14b.sh": ("wan22_t2v_a14b.yaml", {"VIDEOALIGN_PATH": "reward.models.videoalign.path",
                                                        "VIDEOALIGN_BASE": "reward.models.videoalign.base"}),
}
# What launch.sh itself turns into overrides, for every script.
LAUNCH_PATHS = {"MODEL_PATH": "model.path", "EMBEDDINGS_DIR": "data.embeddings_dir", "OUTPUT_DIR": "train.output_dir"}


def run_script(tmp_path, script, **variables):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("python", "torchrun"):
        (bin_dir / name).write_text(RECORDER)
        (bin_dir / name).chmod(0o755)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLURM_", "VIDEOALIGN_")) and k not in ("CONFIG", "HPS_PATH", "CLIP_PATH", "LATENTS_DIR",
                                                                        "PYTHON", "TORCHRUN", *LAUNCH_PATHS)}
    env.update(PATH=f"{bin_dir}:{os.environ['PATH']}", RECORD=str(tmp_path / "record"), NPROC_PER_NODE="1", **variables)
    return subprocess.run(["bash", str(ROOT / "train_scripts" / script), "train.lr=1e-5"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)


def recorded(tmp_path, name):
    return (tmp_path / f"record.{name}").read_text().splitlines()


@pytest.mark.parametrize("script", SCRIPTS)
def test_each_train_script_launches_its_config_with_its_paths(tmp_path, script):
    config, own_paths = SCRIPTS[script]
    paths = {**LAUNCH_PATHS, **own_paths}
    result = run_script(tmp_path, script, **{variable: f"/given/{variable}" for variable in paths})
    assert result.returncode == 0, result.stderr
    overrides = sorted(f"{key}=/given/{variable}" for variable, key in paths.items()) + ["train.lr=1e-5"]
    config_path = str(ROOT / "train_scripts" / ".." / "assets" / "configs" / config)
    preflight, torchrun = recorded(tmp_path, "python"), recorded(tmp_path, "torchrun")
    assert preflight[:5] == ["-m", "fastvideo_grpo.train", "--check", "--config", config_path]
    assert sorted(preflight[5:-1]) + preflight[-1:] == overrides
    assert torchrun[:5] == ["--standalone", "--nproc_per_node", "1", "--module", "fastvideo_grpo.train"]
    assert torchrun[5:7] == ["--config", config_path] and torchrun[7:] == preflight[5:]


def test_launch_without_a_config_says_so_and_starts_nothing(tmp_path):
    result = run_script(tmp_path, "launch.sh")
    assert result.returncode != 0 and "CONFIG" in result.stderr
    assert not list(tmp_path.glob("record.*"))
