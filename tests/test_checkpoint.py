import os
import signal
import subprocess
import sys

import pytest
import torch

from conftest import ROOT
from helpers import TIMING, read_jsonl, rewound_copy, run, wait_for_lines
from fastvideo_grpo.checkpoint import latest_checkpoint, load_checkpoint
from fastvideo_grpo.config import load_config
from fastvideo_grpo.parallel import World
from fastvideo_grpo.training.preemption import PREEMPTED_EXIT_CODE
from fastvideo_grpo.training.trainer import train

SMALL = ["sampling.group_size=4", "sampling.rollout_batch_size=4", "sampling.decode_batch_size=4",
         "train.sample_every=0", "train.progress_bar=false", "checkpoint.every=0"]


def small_cfg(out, *overrides):
    return load_config(ROOT / "assets/configs/tiny_t2v.yaml",
                       SMALL + ["train.prompts_per_iteration=2", f"train.output_dir={out}", *overrides])


def rows(out):
    return read_jsonl(out / "metrics.jsonl")


def assert_metrics_equal(a, b, rel=0.0):
    assert [r["iteration"] for r in a] == [r["iteration"] for r in b]
    for ra, rb in zip(a, b):
        for key, value in ra.items():
            if key.startswith(TIMING):
                continue
            if rel == 0.0:
                assert rb[key] == value, (ra["iteration"], key)
            else:
                assert rb[key] == pytest.approx(value, rel=rel, abs=1e-7), (ra["iteration"], key)


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("straight")
    train(small_cfg(out, "train.iterations=4", "train.ema_decay=0.9"))
    return out


def test_stop_and_resume_gives_identical_metrics(straight_run, tmp_path):
    train(small_cfg(tmp_path, "train.iterations=2", "train.ema_decay=0.9"))
    assert latest_checkpoint(tmp_path).name == "step_2"
    train(small_cfg(tmp_path, "train.iterations=4", "train.ema_decay=0.9"))
    assert_metrics_equal(rows(straight_run), rows(tmp_path))
    a = torch.load(straight_run / "checkpoints/step_4/rng_rank0.pt", weights_only=True)
    b = torch.load(tmp_path / "checkpoints/step_4/rng_rank0.pt", weights_only=True)
    assert torch.equal(a["torch"], b["torch"])


def test_keep_last_prunes_old_checkpoints(tmp_path):
    train(small_cfg(tmp_path, "train.iterations=4", "checkpoint.every=1", "checkpoint.keep_last=2"))
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["latest", "step_3", "step_4"]


def test_sigkill_while_writing_leaves_latest_on_the_previous_checkpoint(straight_run, tmp_path):
    args = [str(a) for a in SMALL] + ["train.prompts_per_iteration=2", "train.iterations=4", "checkpoint.every=1",
                                      f"train.output_dir={tmp_path}"]
    result = subprocess.run([sys.executable, str(ROOT / "tests/dist/kill_during_save.py"), "3", *args],
                            capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == -signal.SIGKILL
    assert (tmp_path / "checkpoints/.tmp-step_3").is_dir()  # the partial one is there...
    assert latest_checkpoint(tmp_path).name == "step_2"  # ...but latest names the complete one
    train(small_cfg(tmp_path, "train.iterations=4", "checkpoint.every=1"))
    assert_metrics_equal(rows(straight_run), rows(tmp_path))
    assert not (tmp_path / "checkpoints/.tmp-step_3").exists()


def test_sigusr1_checkpoints_and_exits_with_the_preemption_code(tmp_path):
    marker = tmp_path / "preempted"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "FVGRPO_PREEMPT_MARKER": str(marker)}
    proc = subprocess.Popen([sys.executable, "-m", "fastvideo_grpo.train", "--config",
                             str(ROOT / "assets/configs/tiny_t2v.yaml"), *SMALL, "train.iterations=1000",
                             f"train.output_dir={tmp_path}"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "metrics.jsonl"
    wait_for_lines(metrics, 2, timeout_s=120, poll_s=0.2)
    proc.send_signal(signal.SIGUSR1)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == PREEMPTED_EXIT_CODE, stderr[-3000:]
    assert marker.exists()
    done = len(rows(tmp_path))
    assert 2 <= done < 1000
    assert latest_checkpoint(tmp_path).name == f"step_{done}"


class RunsCodeWhenUnpickled:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_loading_refuses_pickled_objects(tmp_path):
    train(small_cfg(tmp_path, "train.iterations=1"))
    path = latest_checkpoint(tmp_path)
    torch.save({"torch": torch.zeros(3), "payload": RunsCodeWhenUnpickled()}, path / "rng_rank0.pt")
    from fastvideo_grpo.training.trainer import setup

    c = setup(small_cfg(tmp_path, "train.iterations=1"))
    with pytest.raises(Exception, match="[Ww]eights only load failed"):
        load_checkpoint(path, c.policy.transformer, c.optimizer, World(0, 1, torch.device("cpu"), None))


def test_latest_naming_an_incomplete_checkpoint_is_an_error(tmp_path):
    (tmp_path / "checkpoints/step_7").mkdir(parents=True)
    (tmp_path / "checkpoints/latest").write_text("step_7\n")
    with pytest.raises(FileNotFoundError, match="step_7.*incomplete"):
        latest_checkpoint(tmp_path)


# One optimizer step per iteration: the same whether the global batch is on 1 or 2 ranks.
DIST_COMMON = SMALL + ["train.adam_eps=1e-4", "train.gradient_accumulation_steps=1000"]


def test_two_rank_resume_and_resume_on_one_rank(tmp_path):
    straight, resharded = tmp_path / "straight", tmp_path / "resharded"
    two_ranks = [ROOT / "tests/dist/train_run.py", *DIST_COMMON, "train.prompts_per_iteration=1", "train.iterations=4",
                 "checkpoint.every=2"]
    run([*two_ranks, f"train.output_dir={straight}"], nproc=2)
    resumed = rewound_copy(straight, tmp_path / "resumed", 2)
    run([*two_ranks, f"train.output_dir={resumed}"], nproc=2)
    assert_metrics_equal(rows(straight), rows(resumed))

    # The 2-rank checkpoint after iteration 2, resumed on one rank with the same global
    # batch (two prompts per iteration) in another folder: it runs iterations 2 and 3.
    result = run([ROOT / "tests/dist/train_run.py", *DIST_COMMON, "train.prompts_per_iteration=2",
                  "train.iterations=4", f"train.output_dir={resharded}",
                  f"train.resume={resumed / 'checkpoints' / 'step_2'}"])
    assert "written by 2 ranks on 1 ranks" in result.stderr
    assert_metrics_equal(rows(straight)[2:], rows(resharded), rel=1e-4)
