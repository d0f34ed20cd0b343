"""Faults around a run's folder and process: stray step_* folders beside the checkpoints,
and the signals a user sends (Ctrl-C, a closed terminal)."""

import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT
from fastvideo_grpo.checkpoint import latest_checkpoint
from fastvideo_grpo.config import load_config
from fastvideo_grpo.training.trainer import train
from helpers import read_jsonl, wait_for_lines

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


def start_training(out, *overrides) -> tuple[subprocess.Popen, Path]:
    """The tiny trainer for 1000 iterations in a subprocess, once it has logged an iteration;
    SIGINT and SIGHUP at their defaults in it (this process may run where they are ignored)."""
    def default_signals():
        for sig in (signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)

    log = out.parent / "stderr.txt"
    with log.open("w") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "fastvideo_grpo.train", "--config",
                                 str(ROOT / "assets/configs/tiny_t2v.yaml"), *SMALL, "train.iterations=1000",
                                 "checkpoint.every=0", f"train.output_dir={out}", *overrides],
                                cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL,
                                stderr=stderr, preexec_fn=default_signals)
    wait_for_lines(out / "metrics.jsonl", 1, timeout_s=120)
    assert proc.poll() is None, log.read_text()[-3000:]
    return proc, log


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGHUP], ids=["SIGINT", "SIGHUP"])
def test_ctrl_c_and_hangup_checkpoint_then_stop_and_the_run_resumes(tmp_path, sig):
    """Slow: the trainer's start in a subprocess."""
    out = tmp_path / "run"
    proc, log = start_training(out)
    proc.send_signal(sig)
    assert proc.wait(timeout=120) == 128 + sig, log.read_text()[-3000:]
    assert f"stopped by {sig.name}: checkpoint written in {out}; the same command resumes" in log.read_text()
    done = len(read_jsonl(out / "metrics.jsonl"))
    assert latest_checkpoint(out).name == f"step_{done}"
    if sig == signal.SIGHUP:
        return  # resumed like any checkpoint: once is enough
    train(small_cfg(out, f"train.iterations={done + 1}"))
    assert [row["iteration"] for row in read_jsonl(out / "metrics.jsonl")] == list(range(done + 1))


def test_a_second_ctrl_c_stops_at_once(tmp_path):
    """Slow: the trainer's start in a subprocess."""
    out = tmp_path / "run"
    proc, log = start_training(out, "train.prompts_per_iteration=4")  # iterations of seconds
    proc.send_signal(signal.SIGINT)
    deadline = time.monotonic() + 30
    while "Ctrl-C again stops at once" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "Ctrl-C: stopping after this iteration's checkpoint" in log.read_text(), log.read_text()[-3000:]
    proc.send_signal(signal.SIGINT)
    start = time.monotonic()
    assert proc.wait(timeout=30) == -signal.SIGINT
    assert time.monotonic() - start < 2
    assert latest_checkpoint(out) is None


def test_sigint_and_sighup_ignored_at_start_stay_ignored():
    """nohup (SIGHUP) and a shell's background job (SIGINT) ask for a process that outlives them."""
    from fastvideo_grpo.training.preemption import PreemptionFlag

    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM)}
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    # As in a terminal's foreground process (pytest-xdist's workers start with SIGINT ignored).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    flag = PreemptionFlag()
    try:
        flag.install()
        assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN
        assert signal.getsignal(signal.SIGINT) == flag._handle
        flag.restore()
        assert signal.getsignal(signal.SIGINT) == signal.default_int_handler
    finally:
        flag.restore()
        signal.signal(signal.SIGHUP, before[signal.SIGHUP])
        signal.signal(signal.SIGINT, before[signal.SIGINT])
    assert {sig: signal.getsignal(sig) for sig in before} == before
