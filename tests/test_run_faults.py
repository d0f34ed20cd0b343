"""Faults around a run's folder and process: stray step_* folders beside the checkpoints,
and the signals a user sends (Ctrl-C, a closed terminal)."""

import logging
import shutil

from conftest import ROOT
from fastvideo_grpo.checkpoint import latest_checkpoint
from fastvideo_grpo.config import load_config
from fastvideo_grpo.trainer import train
from helpers import read_jsonl

SMALL = ["sampling.group_size=4", "sampling.rollout_batch_size=4", "sampling.decode_batch_size=4",
         "train.sample_every=0", "train.progress_bar=false", "train.prompts_per_iteration=1"]


def small_cfg(out, *overrides):
    return load_config(ROOT / "assets/configs/tiny_t2v.yaml", SMALL + [f"train.output_dir={out}", *overrides])


def test_step_folders_not_named_by_a_number_are_left_alone_on_resume_and_pruning(tmp_path, caplog):
    train(small_cfg(tmp_path, "train.iterations=2", "checkpoint.every=1"))
    checkpoints = tmp_path / "checkpoints"
    # A user's backup copy (complete, manifest and all) and a folder of their own.
    shutil.copytree(checkpoints / "step_2", checkpoints / "step_6.bak")
    (checkpoints / "step_best").mkdir()
    (checkpoints / "step_best" / "notes.txt").write_text("mine")
    (checkpoints / "latest").unlink()  # resume then looks for the newest complete step_<N>
    with caplog.at_level(logging.INFO):
        assert latest_checkpoint(tmp_path).name == "step_2"
        train(small_cfg(tmp_path, "train.iterations=4", "checkpoint.every=1", "checkpoint.keep_last=1"))
    assert [row["iteration"] for row in read_jsonl(tmp_path / "metrics.jsonl")] == [0, 1, 2, 3]
    assert sorted(p.name for p in checkpoints.iterdir()) == ["latest", "step_4", "step_6.bak", "step_best"]
    assert (checkpoints / "step_best" / "notes.txt").read_text() == "mine"
    for stray in ("step_6.bak", "step_best"):
        assert f"{checkpoints / stray} is not a checkpoint of this run" in caplog.text


def test_a_stray_step_folder_alone_is_no_earlier_run(tmp_path):
    (tmp_path / "checkpoints" / "step_best").mkdir(parents=True)
    train(small_cfg(tmp_path, "train.iterations=1", "train.resume=never"))
    assert latest_checkpoint(tmp_path).name == "step_1"
    assert (tmp_path / "checkpoints" / "step_best").is_dir()
