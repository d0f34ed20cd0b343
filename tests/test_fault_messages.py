"""Faults outside checkpoint writes (a full disk, a damaged manifest, shard or pointer file,
nonsense flags): each ends in one line that names the file or flag and leaves nothing
half-written behind."""

import errno
import json
import logging
import os
import struct
import time

import pytest
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from fastvideo_grpo.data import embeddings
from fastvideo_grpo.data.embeddings import EmbeddingDataset
from fastvideo_grpo.data.preprocess import preprocess, text_shard_tensors
from fastvideo_grpo.parallel import World
from fastvideo_grpo.training.tracking import Tracker

ONE_PROCESS = World(rank=0, world_size=1, device=torch.device("cpu"), mesh=None)
PROMPTS = ["a red ball", "a blue wave", "a green frog", "a cyan kite", "a yellow taxi"]


def disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_tensorboard_on_a_full_disk_warns_once_and_training_goes_on(tiny_cfg, tmp_path, monkeypatch, caplog, capfd):
    from tensorboard.compat.tensorflow_stub.io import gfile

    tracker = Tracker(tiny_cfg, tmp_path)
    tracker.scalars({"loss": 1.0}, 0)
    tracker.tb.flush()
    monkeypatch.setattr(gfile.LocalFileSystem, "append", disk_full)
    tracker.scalars({"loss": 2.0}, 1)  # the writer thread fails on this one, in the background
    worker = tracker.tb._get_file_writer().event_writer._async_writer._worker
    deadline = time.monotonic() + 10
    while worker.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    for step in range(2, 5):
        tracker.scalars({"loss": 3.0}, step)
    tracker.close()
    warnings = [r.getMessage() for r in caplog.records if "TensorBoard" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert str(tmp_path / "tb") in warnings[0] and "No space left on device" in warnings[0]
    assert "Traceback" not in capfd.readouterr().err


def test_training_on_a_full_tensorboard_disk_finishes_with_every_metrics_row(tiny_cfg, monkeypatch, caplog):
    from tensorboard.compat.tensorflow_stub.io import gfile

    from fastvideo_grpo.training.trainer import train
    from helpers import read_jsonl

    monkeypatch.setattr(gfile.LocalFileSystem, "append", disk_full)  # the event file's header goes in, nothing more
    tiny_cfg.sampling.height = tiny_cfg.sampling.width = 16
    tiny_cfg.train.iterations = 2
    out = train(tiny_cfg)
    assert [r["iteration"] for r in read_jsonl(out / "metrics.jsonl")] == [0, 1]
    assert sum("TensorBoard stopped" in r.getMessage() for r in caplog.records) == 1


def encode_text(prompts: list[str]):
    """A stand-in text encoder: [n, 4, 16] embeddings from the prompts' first characters."""
    codes = torch.tensor([[float(ord(c)) for c in (p + "    ")[:4]] for p in prompts])
    return text_shard_tensors((codes[:, :, None] + torch.arange(16.0)) / 100,
                              torch.ones(len(prompts), 4, dtype=torch.int64), codes[:, :2]), 0


def write_embeddings(out):
    preprocess(PROMPTS, encode_text, out, ONE_PROCESS, shard_size=2, dtype="fp32")
    return out


def test_full_disk_while_preprocessing_removes_the_partial_shard_and_names_it(tmp_path, monkeypatch):
    real_save = embeddings.save_file

    def fills_the_disk(tensors, path, metadata=None):
        if "shard_00001" not in str(path):
            return real_save(tensors, path, metadata=metadata)
        path.write_bytes(b"\0" * 100)  # what got out before the disk filled
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(embeddings, "save_file", fills_the_disk)
    with pytest.raises(OSError) as failed:
        preprocess(PROMPTS, encode_text, tmp_path, ONE_PROCESS, shard_size=2)
    assert str(tmp_path / "shard_00001.safetensors") in str(failed.value)
    assert "No space left on device" in str(failed.value) and "\n" not in str(failed.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shard_00000.safetensors"]


def test_full_disk_writing_the_manifest_leaves_no_partial_file(tmp_path, monkeypatch):
    preprocess(PROMPTS, encode_text, tmp_path, ONE_PROCESS, shard_size=2)
    before = (tmp_path / "manifest.jsonl").read_bytes()
    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space left on device") as failed:
        preprocess(PROMPTS + ["one more"], encode_text, tmp_path, ONE_PROCESS, shard_size=2)
    assert str(tmp_path / "manifest.jsonl") in str(failed.value)
    assert (tmp_path / "manifest.jsonl").read_bytes() == before
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("damage, expected", [
    (lambda line: line[:len(line) // 2], r"manifest.jsonl:3: not JSON \(.*\): truncated or damaged"),
    (lambda line: json.dumps({k: v for k, v in json.loads(line).items() if k != "shard"}),
     r"manifest.jsonl:3: the row has no 'shard'"),
])
def test_damaged_manifest_line_names_file_and_line(tmp_path, damage, expected):
    out = write_embeddings(tmp_path)
    lines = (out / "manifest.jsonl").read_text().splitlines()
    lines[2] = damage(lines[2])
    (out / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=expected) as failed:
        EmbeddingDataset(out)
    assert str(out / "manifest.jsonl") in str(failed.value)


def flip_bytes(path, key: str, count: int = 64) -> None:
    """XOR the lowest bit of `count` fp32 values of tensor `key` in the file: each stays a
    finite number, so only a checksum can tell."""
    data = bytearray(path.read_bytes())
    (length,) = struct.unpack("<Q", data[:8])
    begin, end = json.loads(data[8:8 + length])[key]["data_offsets"]
    start = 8 + length + begin
    assert (end - begin) // 4 >= count
    for i in range(count):
        data[start + 4 * i] ^= 1
    path.write_bytes(bytes(data))


def test_flipped_bytes_in_a_shard_are_refused_naming_the_shard(tmp_path):
    out = write_embeddings(tmp_path)
    flip_bytes(out / "shard_00001.safetensors", "prompt_embeds")
    dataset = EmbeddingDataset(out)
    dataset.conditioning([0, 1])  # shard 0 is intact
    with pytest.raises(ValueError, match="row 0 does not hold the bytes preprocessing wrote") as failed:
        dataset.conditioning([2])
    assert str(out / "shard_00001.safetensors") in str(failed.value)
    dataset.conditioning([3])  # the other row of that shard is intact


def test_flipped_bytes_in_the_negative_prompt_are_refused(tmp_path):
    out = write_embeddings(tmp_path)
    embeddings.write_shard(out / "negative.safetensors", encode_text([""])[0])
    flip_bytes(out / "negative.safetensors", "prompt_embeds")
    with pytest.raises(ValueError, match="negative.safetensors: row 0 does not hold the bytes"):
        EmbeddingDataset(out)


def test_shards_without_a_checksum_load_with_one_warning(tmp_path, caplog):
    out = write_embeddings(tmp_path)
    for shard in sorted(out.glob("shard_*.safetensors")):
        with safe_open(shard, framework="pt") as f:
            tensors = {key: f.get_tensor(key) for key in f.keys()}
        save_file(tensors, shard)  # as shards were written before they recorded a checksum
    with caplog.at_level(logging.WARNING):
        conditioning = EmbeddingDataset(out).conditioning(list(range(len(PROMPTS))))
    assert torch.equal(conditioning.prompt_embeds, encode_text(PROMPTS)[0]["prompt_embeds"])
    warnings = [r.getMessage() for r in caplog.records if "records no checksums" in r.getMessage()]
    assert len(warnings) == 1 and "re-run data_preprocess/" in warnings[0]
    # preprocessing again adds the checksums
    with caplog.at_level(logging.INFO):
        counts = preprocess(PROMPTS, encode_text, out, ONE_PROCESS, shard_size=2, dtype="fp32")
    assert counts["shards_reencoded"] == 3
    with safe_open(out / "shard_00000.safetensors", framework="pt") as f:
        assert embeddings.CHECKSUM in f.metadata()


def test_checksum_is_the_crc32_of_each_rows_bytes_in_key_order(tmp_path):
    import zlib

    tensors = {"b": torch.arange(6, dtype=torch.bfloat16).view(2, 3), "a": torch.tensor([1, 2], dtype=torch.int64)}
    embeddings.write_shard(tmp_path / "s.safetensors", tensors)
    rows = [tensors["a"][i].numpy().tobytes() + tensors["b"][i].view(torch.int16).numpy().tobytes() for i in range(2)]
    with safe_open(tmp_path / "s.safetensors", framework="pt") as f:
        assert f.metadata()[embeddings.CHECKSUM] == " ".join(f"{zlib.crc32(row):08x}" for row in rows)


def test_full_disk_at_start_names_config_yaml_and_leaves_no_empty_one(tiny_cfg, monkeypatch):
    from fastvideo_grpo.training.trainer import train

    real_fsync = os.fsync

    def config_fills_the_disk(fd):
        if os.readlink(f"/proc/self/fd/{fd}").endswith("config.yaml.tmp"):
            disk_full()
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", config_fills_the_disk)
    tiny_cfg.sampling.height = tiny_cfg.sampling.width = 16
    tiny_cfg.train.iterations = 1
    out = tiny_cfg.train.output_dir
    with pytest.raises(OSError, match="No space left on device") as failed:
        train(tiny_cfg)
    assert f"{out}/config.yaml" in str(failed.value)
    assert not [p.name for p in os.scandir(out) if "config" in p.name]


BINARY = b"\x00\x9f\xff\xfe garbage \x80\x81"


def fake_checkpoints(out, steps):
    root = out / "checkpoints"
    for step in steps:
        for name in (".metadata", "trainer_state.json", "manifest.json"):
            (root / f"step_{step}").mkdir(parents=True, exist_ok=True)
            (root / f"step_{step}" / name).write_text("{}")
    root.mkdir(parents=True, exist_ok=True)
    return root


def test_binary_latest_falls_back_to_the_newest_complete_checkpoint(tmp_path, caplog):
    from fastvideo_grpo.checkpoint import latest_checkpoint

    root = fake_checkpoints(tmp_path, [1, 2])
    (root / "latest").write_bytes(BINARY)
    with caplog.at_level(logging.WARNING):
        assert latest_checkpoint(tmp_path) == root / "step_2"
    assert f"{root / 'latest'} holds {BINARY!r}, not the name of a checkpoint folder (step_<N>): using " \
           f"{root / 'step_2'}" in caplog.text


def test_binary_latest_without_a_checkpoint_and_binary_pointers_given_by_hand_are_errors(tmp_path):
    from fastvideo_grpo.checkpoint import best_checkpoint, latest_checkpoint, resolve_checkpoint

    root = fake_checkpoints(tmp_path, [])
    (root / "latest").write_bytes(BINARY)
    with pytest.raises(FileNotFoundError, match=f"{root / 'latest'} holds .*, and {root} holds no complete"):
        latest_checkpoint(tmp_path)
    (root / "best").write_bytes(b"")
    for pointer in ("latest", "best"):
        with pytest.raises(FileNotFoundError, match=f"{root / pointer} holds .*not the name of a checkpoint"):
            resolve_checkpoint(root / pointer)
    with pytest.raises(FileNotFoundError, match=f"{root / 'best'} holds b'', not the name"):
        best_checkpoint(tmp_path)


def test_binary_best_prunes_nothing(tmp_path, caplog):
    from fastvideo_grpo.checkpoint.folders import prune

    root = fake_checkpoints(tmp_path, [1, 2, 3])
    (root / "best").write_bytes(BINARY)
    with caplog.at_level(logging.WARNING):
        prune(root, keep_last=1)
    assert sorted(p.name for p in root.glob("step_*")) == ["step_1", "step_2", "step_3"]
    assert f"{root / 'best'} holds" in caplog.text and "keeping every checkpoint" in caplog.text


def cli_error(main, argv, capsys) -> str:
    """The one-line message an argparse error ends with (exit status 2)."""
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


def test_evaluate_compare_of_an_empty_scores_file_names_it(tmp_path, capsys):
    from fastvideo_grpo.cli.evaluate import main

    for name in ("base", "tuned"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "scores.jsonl").write_text('{"prompt": 0, "seed": 0, "color": 0.5}\n')
    (tmp_path / "tuned" / "scores.jsonl").write_text("")
    error = cli_error(main, ["--compare", str(tmp_path / "base"), str(tmp_path / "tuned")], capsys)
    assert f"--compare: {tmp_path / 'tuned' / 'scores.jsonl'} holds no scores" in error
    (tmp_path / "tuned" / "scores.jsonl").write_text('{"prompt": 0, "seed": 0, "col')
    error = cli_error(main, ["--compare", str(tmp_path / "base"), str(tmp_path / "tuned")], capsys)
    assert f"{tmp_path / 'tuned' / 'scores.jsonl'}:1: not JSON" in error


@pytest.mark.parametrize("flag, value", [("--num-prompts", "-1"), ("--grid", "-2")])
def test_evaluate_refuses_negative_counts_naming_the_flag(flag, value, capsys):
    from fastvideo_grpo.cli.evaluate import main

    error = cli_error(main, ["--config", "unused.yaml", flag, value], capsys)
    assert f"argument {flag}: {value}: expected an integer >= 0" in error


@pytest.mark.parametrize("flag, value, expected", [
    ("--gpu-memory-gb", "nan", "expected a finite number > 0"),
    ("--gpu-memory-gb", "-80", "expected a finite number > 0"),
    ("--gpu-memory-gb", "inf", "expected a finite number > 0"),
    ("--peak-tflops", "0", "expected a finite number > 0"),
    ("--mfu", "0", "expected a finite number in (0, 1]"),
    ("--mfu", "1.5", "expected a finite number in (0, 1]"),
    ("--reserve-gb", "-1", "expected a finite number >= 0"),
    ("--nodes", "0", "expected an integer in [1, 16384]"),
    ("--nodes", "100000", "expected an integer in [1, 16384]"),
    ("--gpus-per-node", "eight", "'eight' is not a number"),
])
def test_plan_refuses_nonsense_numbers_naming_the_flag(flag, value, expected, capsys):
    from fastvideo_grpo.cli.plan import main

    error = cli_error(main, ["--config", "unused.yaml", flag, value], capsys)
    assert error.endswith(f"argument {flag}: {value}: {expected}" if "not a number" not in expected
                          else f"argument {flag}: {expected}; expected an integer in [1, 16384]")


@pytest.mark.parametrize("argv, expected", [
    (["--nodes", "4096", "--gpus-per-node", "8"], "--nodes 4096 x --gpus-per-node 8 = 32768 GPUs; at most 16384"),
    (["--gpu-memory-gb", "2", "--reserve-gb", "2"], "--reserve-gb 2 leaves nothing of --gpu-memory-gb 2"),
])
def test_plan_refuses_flags_that_disagree(argv, expected, capsys):
    from fastvideo_grpo.cli.plan import main

    assert expected in cli_error(main, ["--config", "unused.yaml", *argv], capsys)


def test_a_metrics_row_on_a_full_disk_names_metrics_jsonl(tmp_path, monkeypatch):
    import io
    from pathlib import Path

    from fastvideo_grpo.training.outputs import append_metrics

    class FullDisk(io.StringIO):
        def write(self, text):
            disk_full()

    original = Path.open
    monkeypatch.setattr(Path, "open", lambda self, mode="r", *args, **kwargs: FullDisk() if self.name == "metrics.jsonl"
                        else original(self, mode, *args, **kwargs))
    with pytest.raises(OSError) as failed:
        append_metrics(tmp_path / "metrics.jsonl", {"iteration": 0, "loss": 1.0})
    assert failed.value.errno == errno.ENOSPC and failed.value.filename == str(tmp_path / "metrics.jsonl")


@pytest.mark.parametrize("script, argv", [
    ("preprocess_hunyuan_embeddings", ["--model-path", "m", "--prompts", "p.txt", "--output", "o", "--shard-size", "0"]),
    ("preprocess_latents", ["--model-path", "m", "--inputs", "i.txt", "--output", "o", "--height", "32", "--width", "32",
                            "--shard-size", "0"]),
])
def test_preprocessing_refuses_a_zero_shard_size_naming_the_flag(script, argv, capsys):
    import importlib
    import sys

    from conftest import ROOT

    sys.path.insert(0, str(ROOT / "data_preprocess"))
    cli = importlib.import_module(script)
    main = getattr(cli, "run", None) or cli.main
    assert cli_error(main, argv, capsys).endswith("argument --shard-size: 0: expected an integer >= 1")
