"""One run per folder, and logs that agree with the checkpoint a run resumes from."""

import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REWARD_PLUGINS, ROOT
from helpers import wait_for_lines
from fastvideo_grpo.config import ConfigError, load_config
from fastvideo_grpo.training.outputs import read_metrics
from fastvideo_grpo.training.run_folder import RunFolderBusy, run_folder_lock
from fastvideo_grpo.training.trainer import train

SMALL = ["sampling.group_size=4", "sampling.rollout_batch_size=4", "sampling.decode_batch_size=4",
         "train.progress_bar=false", "checkpoint.every=2", "train.prompts_per_iteration=1", "reward.mode=inline"]


def small_cfg(out, *overrides):
    return load_config(ROOT / "assets/configs/tiny_t2v.yaml", [*SMALL, f"train.output_dir={out}", *overrides])


def iterations(path):
    return [r["iteration"] for r in read_metrics(path)]


def test_a_second_run_on_a_busy_folder_is_refused(tmp_path):
    with run_folder_lock(tmp_path):
        with pytest.raises(RunFolderBusy, match=rf"train.output_dir={tmp_path} is in use by a running job "
                                                rf"\(pid {os.getpid()} on"):
            train(small_cfg(tmp_path, "train.iterations=1"))
    assert not (tmp_path / "metrics.jsonl").exists()
    train(small_cfg(tmp_path, "train.iterations=1"))  # released: the folder is free again
    assert iterations(tmp_path / "metrics.jsonl") == [0]


def test_a_lock_left_by_a_killed_run_is_not_stale(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from pathlib import Path; "
                               "from fastvideo_grpo.training.run_folder import run_folder_lock\n"
                               f"with run_folder_lock(Path({str(tmp_path)!r})):\n"
                               "    print('locked', flush=True); time.sleep(60)"],
                              cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(RunFolderBusy):
        with run_folder_lock(tmp_path):
            pass
    holder.kill()
    holder.wait()
    with run_folder_lock(tmp_path):  # the kernel released it with its holder
        pass


def test_resume_trims_every_log_and_survives_a_cut_last_line(tmp_path, caplog):
    evaluating = ("eval.every=1", "eval.num_prompts=1", "eval.num_seeds=2", "eval.at_start=true")
    train(small_cfg(tmp_path, "train.iterations=3", "train.sample_every=1", *evaluating))
    assert iterations(tmp_path / "metrics.jsonl") == [0, 1, 2]
    assert iterations(tmp_path / "eval.jsonl") == [0, 1, 2, 3]
    assert iterations(tmp_path / "eval_scores.jsonl") == [0, 0, 1, 1, 2, 2, 3, 3]  # a row per prompt and seed
    # A crash after iteration 2 was logged, before its checkpoint (every 2): step_2 is the
    # newest, and metrics.jsonl ends in a line cut short mid-write.
    (tmp_path / "checkpoints/step_3").rename(tmp_path / "checkpoints/.tmp-step_3")
    (tmp_path / "checkpoints/latest").write_text("step_2\n")
    with (tmp_path / "metrics.jsonl").open("a") as f:
        f.write('{"iteration": 3, "rew')
    with caplog.at_level(logging.WARNING):
        train(small_cfg(tmp_path, "train.iterations=4", "train.sample_every=1", *evaluating))
    assert "dropping its last line, cut short" in caplog.text
    assert iterations(tmp_path / "metrics.jsonl") == [0, 1, 2, 3]
    assert iterations(tmp_path / "eval.jsonl") == [0, 1, 2, 3, 4]  # the resumed run does not evaluate at start
    assert iterations(tmp_path / "eval_scores.jsonl") == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    samples = iterations(tmp_path / "samples" / "index.jsonl")
    assert samples == sorted(samples) and len(samples) == len(set((r["iteration"], r["file"]) for r in
                                                                   read_metrics(tmp_path / "samples/index.jsonl")))
    assert sorted(set(samples)) == [0, 1, 2, 3]


def test_a_bad_line_inside_metrics_names_file_and_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"iteration": 0}\nnot json\n{"iteration": 1}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl, line 2: not valid JSON"):
        read_metrics(path)


def test_never_starts_from_scratch_over_earlier_checkpoints(tmp_path):
    train(small_cfg(tmp_path, "train.iterations=2"))
    before = (tmp_path / "metrics.jsonl").read_text()
    with pytest.raises(ValueError, match=r"holds checkpoints of an earlier run \(step_2\) but train.resume='never'.*"
                                         r"to start fresh, delete"):
        train(small_cfg(tmp_path, "train.iterations=2", "train.resume=never"))
    assert (tmp_path / "metrics.jsonl").read_text() == before


def test_resuming_with_another_group_size_is_refused(tmp_path):
    train(small_cfg(tmp_path, "train.iterations=2"))
    with pytest.raises(ConfigError, match=r"sampling.group_size: 4 -> 2.*which a resumed run must keep"):
        train(small_cfg(tmp_path, "train.iterations=3", "sampling.group_size=2"))
    assert iterations(tmp_path / "metrics.jsonl") == [0, 1]


def test_a_fresh_start_moves_an_earlier_runs_logs_aside(tmp_path, caplog):
    """The checkpoints are gone but the logs hold rows: a fresh start keeps them, renamed."""
    train(small_cfg(tmp_path, "train.iterations=2", "train.sample_every=1", "eval.every=1", "eval.num_prompts=1"))
    earlier = {name: (tmp_path / name).read_text()
               for name in ("metrics.jsonl", "eval.jsonl", "eval_scores.jsonl", "samples/index.jsonl")}
    shutil.rmtree(tmp_path / "checkpoints")
    with caplog.at_level(logging.WARNING):
        train(small_cfg(tmp_path, "train.iterations=1"))
    assert iterations(tmp_path / "metrics.jsonl") == [0]
    for name, text in earlier.items():
        moved = list((tmp_path / name).parent.glob(f"{Path(name).name}.prev-*"))
        assert len(moved) == 1 and moved[0].read_text() == text, name
        assert f"{tmp_path / name} holds an earlier run's records but there is no checkpoint to resume from: this " \
               f"fresh start moved it to {moved[0]}" in caplog.text
    assert not (tmp_path / "eval.jsonl").exists() and not (tmp_path / "eval_scores.jsonl").exists()  # no evaluation


def test_sigterm_during_the_last_iteration_ends_the_completed_run_with_0(tmp_path):
    """The signal arrives while the last iteration runs: the run is complete, exit 0."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "FVGRPO_TEST_SLEEP": "3"}
    proc = subprocess.Popen([sys.executable, "-m", "fastvideo_grpo.train", "--config",
                             str(ROOT / "assets/configs/tiny_t2v.yaml"), *SMALL, "train.iterations=2",
                             "reward.weights={test_sleep: 1.0}", f"reward.plugins=[{REWARD_PLUGINS}]",
                             "sampling.rollout_batch_size=1",
                             f"train.output_dir={tmp_path}"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "metrics.jsonl"
    wait_for_lines(metrics, 1, timeout_s=120, poll_s=0.1)
    # Past iteration 0's bookkeeping after its metrics line (health, logs, the preemption
    # check); iteration 1, the last, is scoring (3 s per reward call).
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr[-3000:]
    assert iterations(metrics) == [0, 1]
    assert (tmp_path / "checkpoints/latest").read_text().strip() == "step_2"
