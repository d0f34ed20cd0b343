"""Fault injection: flipped, truncated and unlisted checkpoint bytes, a full disk while
writing, a deleted `latest`, and the paths users pass to export and evaluate."""

import errno
import io
import json
import logging
import os
import shutil
import zlib
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import ROOT
from fastvideo_grpo.checkpoint import MANIFEST, CheckpointError, latest_checkpoint, load_checkpoint
from fastvideo_grpo.config import load_config
from fastvideo_grpo.cli.evaluate import main as evaluate_main
from fastvideo_grpo.cli.export import export
from fastvideo_grpo.cli.export import main as export_main
from fastvideo_grpo.parallel import World
from fastvideo_grpo.training.trainer import setup, train
from helpers import read_jsonl

SMALL = ["sampling.group_size=4", "sampling.rollout_batch_size=4", "sampling.decode_batch_size=4",
         "train.sample_every=0", "train.progress_bar=false", "train.prompts_per_iteration=1",
         "train.ema_decay=0.5", "checkpoint.every=1"]
CPU = World(0, 1, torch.device("cpu"), None)
WEIGHTS = "transformer/diffusion_pytorch_model.safetensors"


def small_cfg(out, *overrides):
    return load_config(ROOT / "assets/configs/tiny_t2v.yaml", SMALL + [f"train.output_dir={out}", *overrides])


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run folder with checkpoints after iterations 1 and 2."""
    out = tmp_path_factory.mktemp("run")
    train(small_cfg(out, "train.iterations=2"))
    return out


@pytest.fixture(scope="module")
def components(tmp_path_factory):
    """A model, optimizer and EMA to load checkpoints into."""
    return setup(small_cfg(tmp_path_factory.mktemp("other")))


def copy_of(checkpoint, folder):
    return Path(shutil.copytree(checkpoint, folder / checkpoint.name))


def load(path, c, **kwargs):
    return load_checkpoint(path, c.policy.transformer, c.optimizer, CPU, c.ema, **kwargs)


def truncate(file):
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])


def test_manifest_holds_size_and_crc32_of_every_file_as_written(run):
    path = run / "checkpoints/step_2"
    files = json.loads((path / MANIFEST).read_text())["files"]
    assert sorted(files) == sorted(p.name for p in path.iterdir() if p.name != MANIFEST)
    for name, entry in files.items():
        data = (path / name).read_bytes()
        assert entry == {"size": len(data), "crc32": f"{zlib.crc32(data):08x}"}, name


def test_flipped_bytes_in_a_shard_are_an_error_naming_file_and_checkpoint(run, components, tmp_path):
    path = copy_of(run / "checkpoints/step_2", tmp_path)
    shard = path / "__0_0.distcp"
    data = bytearray(shard.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 64] = bytes(255 - b for b in data[middle:middle + 64])
    shard.write_bytes(data)
    with pytest.raises(CheckpointError, match="CRC32") as error:
        load(path, components)
    assert f"{path}: __0_0.distcp does not hold the bytes written" in str(error.value)
    assert load(path, components, verify=False)["iteration"] == 2  # checkpoint.verify=false skips the CRC32s


def test_checkpoint_without_manifest_loads_with_a_warning(run, components, tmp_path, caplog):
    path = copy_of(run / "checkpoints/step_2", tmp_path)
    (path / MANIFEST).unlink()
    with caplog.at_level(logging.WARNING, logger="fastvideo_grpo.checkpoint"):
        assert load(path, components)["iteration"] == 2
    assert f"{path} has no {MANIFEST}" in caplog.text


@pytest.mark.parametrize("with_manifest", [True, False], ids=["manifest", "no-manifest"])
@pytest.mark.parametrize("name", ["__0_0.distcp", ".metadata", "rng_rank0.pt", "trainer_state.json"])
def test_a_truncated_file_is_an_error_naming_file_and_checkpoint(run, components, tmp_path, name, with_manifest):
    path = copy_of(run / "checkpoints/step_2", tmp_path)
    truncate(path / name)
    if not with_manifest:
        (path / MANIFEST).unlink()
    with pytest.raises(CheckpointError) as error:
        load(path, components)
    assert f"{path}: {name}" in str(error.value)
    if with_manifest:
        assert "truncated" in str(error.value)


def fill_disk(monkeypatch, folder_name, free):
    """Files written into folders named `folder_name` share `free` bytes; a write past them
    writes what fits and raises ENOSPC, as on a full disk."""
    left = [free]

    class FileOnFullDisk(io.FileIO):
        def write(self, data):
            data = memoryview(data).cast("B")
            if len(data) > left[0]:
                super().write(data[:left[0]])
                left[0] = 0
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            left[0] -= len(data)
            return super().write(data)

    original = Path.open

    def open_on_full_disk(self, mode="r", *args, **kwargs):
        if mode == "wb" and self.parent.name == folder_name:
            return io.BufferedWriter(FileOnFullDisk(self, "w"))
        return original(self, mode, *args, **kwargs)

    monkeypatch.setattr(Path, "open", open_on_full_disk)


def test_a_full_disk_while_writing_says_so_removes_the_partial_folder_and_keeps_latest(tmp_path, monkeypatch):
    fill_disk(monkeypatch, ".tmp-step_2", free=100_000)
    with pytest.raises(CheckpointError) as error:
        train(small_cfg(tmp_path, "train.iterations=2"))
    root = tmp_path / "checkpoints"
    assert f"no space left on device writing {root / '.tmp-step_2' / '__0_0.distcp'}" in str(error.value)
    assert f"{root / 'latest'} still names step_1" in str(error.value)
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step_1"]
    assert latest_checkpoint(tmp_path).name == "step_1"


def test_a_deleted_latest_resumes_from_the_newest_complete_checkpoint(run, tmp_path, caplog):
    out = Path(shutil.copytree(run, tmp_path / "run"))
    root = out / "checkpoints"
    (root / "latest").unlink()
    shutil.copytree(root / "step_2", root / ".tmp-step_4")  # a partial save is never complete
    shutil.copytree(root / "step_2", root / "step_3")
    (root / "step_3" / MANIFEST).unlink()  # nor is a folder without the manifest, written last
    with caplog.at_level(logging.INFO, logger="fastvideo_grpo.checkpoint"):
        assert latest_checkpoint(out) == root / "step_2"
        assert f"{root / 'latest'} is missing" in caplog.text
        train(small_cfg(out, "train.iterations=3"))
    assert f"resumed from {root / 'step_2'} (iteration 2)" in caplog.text
    assert [r["iteration"] for r in read_jsonl(out / "metrics.jsonl")] == [0, 1, 2]


def test_export_takes_the_latest_file_and_the_run_folder(run, tmp_path):
    export(run / "checkpoints/step_2", tmp_path / "step_2")
    expected = load_file(tmp_path / "step_2" / WEIGHTS)
    for name, given in [("latest", run / "checkpoints/latest"), ("run", run)]:
        assert export_main(["--checkpoint", str(given), "--output", str(tmp_path / name)]) == 0
        weights = load_file(tmp_path / name / WEIGHTS)
        assert weights.keys() == expected.keys()
        assert all(torch.equal(weights[k], expected[k]) for k in expected), name


@pytest.mark.parametrize("with_manifest", [True, False], ids=["manifest", "no-manifest"])
def test_export_of_a_truncated_shard_names_file_and_checkpoint(run, tmp_path, with_manifest):
    path = copy_of(run / "checkpoints/step_2", tmp_path)
    truncate(path / "__0_0.distcp")
    if not with_manifest:
        (path / MANIFEST).unlink()
    with pytest.raises(CheckpointError) as error:
        export(path, tmp_path / "out", ema=True)
    assert f"{path}: __0_0.distcp" in str(error.value)
    assert not (tmp_path / "out").exists()


def test_evaluate_of_a_checkpoint_outside_a_run_folder_says_where_it_looked_for_the_config(run, tmp_path, capsys):
    path = copy_of(run / "checkpoints/step_2", tmp_path / "checkpoints")
    with pytest.raises(SystemExit) as exit_:
        evaluate_main(["--checkpoint", str(path)])
    assert exit_.value.code == 2
    assert f"found no run config; looked for {tmp_path / 'config.yaml'}" in capsys.readouterr().err
