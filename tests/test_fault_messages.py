"""Faults outside checkpoint writes (a full disk, a damaged manifest, shard or pointer file,
nonsense flags): each ends in one line that names the file or flag and leaves nothing
half-written behind."""

import errno
import os
import time

import pytest

from fastvideo_grpo.tracking import Tracker


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

    from fastvideo_grpo.trainer import train
    from helpers import read_jsonl

    monkeypatch.setattr(gfile.LocalFileSystem, "append", disk_full)  # the event file's header goes in, nothing more
    tiny_cfg.sampling.height = tiny_cfg.sampling.width = 16
    tiny_cfg.train.iterations = 2
    out = train(tiny_cfg)
    assert [r["iteration"] for r in read_jsonl(out / "metrics.jsonl")] == [0, 1]
    assert sum("TensorBoard stopped" in r.getMessage() for r in caplog.records) == 1
