"""The export CLI's refusals, and that it never deletes what it did not write: a full disk or
a kill at any point of replacing an earlier export leaves the old export or the new one.
Export of every family's trained, EMA and LoRA checkpoints into diffusers' network and
pipeline classes: test_families.py."""

import errno
import json
from pathlib import Path

import diffusers
import pytest

from conftest import ROOT
from fastvideo_grpo.cli import export as export_module
from fastvideo_grpo.config import load_config
from fastvideo_grpo.cli.export import EXPORT_MARKER, export, main, recover, siblings
from fastvideo_grpo.training.trainer import train

SMALL = ["sampling.group_size=4", "sampling.rollout_batch_size=4", "sampling.decode_batch_size=4",
         "train.sample_every=0", "train.progress_bar=false", "train.prompts_per_iteration=1", "checkpoint.every=1",
         "train.iterations=2", "reward.mode=inline"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run folder with checkpoints after iterations 1 and 2."""
    out = tmp_path_factory.mktemp("run")
    train(load_config(ROOT / "assets/configs/tiny_t2v.yaml", [*SMALL, f"train.output_dir={out}"]))
    return out


@pytest.fixture(scope="module")
def reference(run, tmp_path_factory):
    """The files of each checkpoint's export: step name -> {relative path: bytes}."""
    folder = tmp_path_factory.mktemp("reference")
    return {step: files(export(run / "checkpoints" / step, folder / step)) for step in ("step_1", "step_2")}


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_export_of_a_folder_that_is_no_checkpoint_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        export(tmp_path, tmp_path / "out")


def test_an_export_is_marked_and_replaces_an_earlier_one(run, reference, tmp_path):
    out = tmp_path / "out"
    export(run / "checkpoints/step_1", out)
    assert files(out) == reference["step_1"]
    marker = json.loads((out / EXPORT_MARKER).read_text())
    assert marker["checkpoint"] == str(run / "checkpoints/step_1") and marker["dtype"] == "fp32"
    export(run / "checkpoints/step_2", out)
    assert files(out) == reference["step_2"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temp or old folder left
    empty = tmp_path / "empty"
    empty.mkdir()
    export(run / "checkpoints/step_2", empty)
    assert files(empty) == reference["step_2"]


def test_outputs_export_did_not_write_are_refused_untouched(run, tmp_path, monkeypatch):
    base = tmp_path / "base"
    (base / "vae").mkdir(parents=True)
    (base / "model_index.json").write_text("{}")
    (base / "vae" / "weights.bin").write_bytes(b"base weights")
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    checkpoint = str(run / "checkpoints/step_2")
    before = {folder: files(folder) for folder in (run, base, other)}
    cases = [(run, "the run folder"), (run / "checkpoints", "the run folder"), (run / "exported", "the run folder"),
             (run / "checkpoints/step_2", "the run folder"), (base, "the --base-model folder"),
             (base / "vae", "the --base-model folder"), (other, "not an earlier export"), (tmp_path, "holds")]
    for output, message in cases:
        with pytest.raises(ValueError, match=message):
            export(checkpoint, output, base_model=base)
    monkeypatch.chdir(other)
    with pytest.raises(ValueError, match=r"--output \. is the current directory"):
        main(["--checkpoint", checkpoint, "--output", "."])
    assert {folder: files(folder) for folder in (run, base, other)} == before
    assert not (run / "exported").exists()


def test_a_full_disk_removes_the_temp_folder_and_keeps_the_earlier_export(run, reference, tmp_path, monkeypatch):
    out = tmp_path / "out"
    export(run / "checkpoints/step_1", out)

    def full_disk(self, folder, **kwargs):
        Path(folder).mkdir(parents=True)
        (Path(folder) / "diffusion_pytorch_model.safetensors").write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(diffusers.ModelMixin, "save_pretrained", full_disk)
    with pytest.raises(OSError, match=rf"exporting to {out} failed \(No space left on device\); removed the partial"):
        export(run / "checkpoints/step_2", out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert files(out) == reference["step_1"]


class Killed(BaseException):
    pass


@pytest.mark.parametrize("point", ["before moving the old export", "between the renames", "before removing the old"])
def test_a_kill_while_replacing_leaves_the_old_export_or_the_new_one(run, reference, tmp_path, monkeypatch, point):
    out = tmp_path / "out"
    export(run / "checkpoints/step_1", out)
    tmp, old = siblings(out)
    renames = {"before moving the old export": 0, "between the renames": 1, "before removing the old": 2}[point]
    real_rename, real_rmtree = Path.rename, export_module.shutil.rmtree
    done = []

    def rename(self, target):
        if len(done) == renames:
            raise Killed(point)
        done.append(target)
        return real_rename(self, target)

    def rmtree(path, *args, **kwargs):
        if Path(path) == old:
            raise Killed(point)
        return real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(Path, "rename", rename)
    monkeypatch.setattr(export_module.shutil, "rmtree", rmtree)
    with pytest.raises(Killed):
        export(run / "checkpoints/step_2", out)
    monkeypatch.undo()
    # One complete export is on disk: at `out`, or (killed between the renames) moved aside.
    survivors = [files(folder) for folder in (out, old) if folder.is_dir()]
    assert reference["step_1"] in survivors or reference["step_2"] in survivors
    recover(out)
    assert files(out) in (reference["step_1"], reference["step_2"])
    assert not tmp.exists() and not old.exists()
    export(run / "checkpoints/step_2", out)  # and the next export goes through
    assert files(out) == reference["step_2"]
