"""A stopped rank ends the job within parallel.watchdog_seconds, and no worker outlives
torchrun: 2-rank gloo runs of the tiny config, a fault injected mid-run."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT
from fastvideo_grpo.config import ConfigError, load_config
from fastvideo_grpo.parallel.watchdog import WATCHDOG_EXIT_CODE
from test_reward_faults import running as alive
from test_reward_faults import wait_until

ARGS = ["sampling.group_size=2", "sampling.rollout_batch_size=2", "sampling.decode_batch_size=2",
        "train.prompts_per_iteration=1", "train.sample_every=0", "train.progress_bar=false", "checkpoint.every=0",
        "train.iterations=1000"]


def workers(launcher: int) -> dict[int, int]:
    """The launcher's worker processes: rank -> pid."""
    ranks = {}
    for task in Path(f"/proc/{launcher}/task").iterdir():
        for pid in (task / "children").read_text().split():
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            rank = next((int(v[5:]) for v in env if v.startswith(b"RANK=")), None)
            if rank is not None:
                ranks[rank] = int(pid)
    return ranks


@pytest.fixture
def two_ranks(tmp_path):
    """(command, ready file) -> torchrun of 2 workers running it, in their own session, once
    `ready` exists: (launcher, {rank: pid}, stderr file). All is SIGKILLed after the test
    (the workers apart: torchrun starts each in its own session)."""
    stderr = tmp_path / "stderr.txt"
    launched, pids = [], []

    def start(command, ready: Path):
        with stderr.open("w") as err:
            launcher = subprocess.Popen(
                [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *command],
                cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL, stderr=err,
                start_new_session=True)
        launched.append(launcher)
        assert wait_until(lambda: launcher.poll() is not None or ready.exists(), 180)
        assert launcher.poll() is None, stderr.read_text()[-3000:]
        ranks = workers(launcher.pid)
        pids.extend(ranks.values())
        assert sorted(ranks) == [0, 1], ranks
        return launcher, ranks, stderr

    yield start
    for launcher in launched:
        try:
            os.killpg(launcher.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        launcher.wait()
    for pid in pids:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


def training(out: Path, *overrides) -> list[str]:
    return ["-m", "fastvideo_grpo.train", "--config", str(ROOT / "assets/configs/tiny_t2v.yaml"), *ARGS, *overrides,
            f"train.output_dir={out}"]


def collective_loop(ready: Path, seconds: float) -> list[str]:
    return [str(ROOT / "tests/dist/collective_loop.py"), str(seconds), str(ready)]


def assert_ends_within_the_bound(launcher, ranks, stderr, stopped: int) -> None:
    os.kill(ranks[stopped], signal.SIGSTOP)
    start = time.monotonic()
    # The bound, a beat interval (a quarter of it) late at most, and torchrun's reaction (~1 s).
    assert wait_until(lambda: launcher.poll() is not None, 3 + 1 + 6), "the job did not end"
    # No sooner than the bound after the stopped rank's last beat, which came up to a beat
    # interval before it was stopped.
    assert time.monotonic() - start >= 3 - 3 / 4
    assert launcher.returncode != 0
    log = stderr.read_text()
    assert (f"watchdog: rank {stopped} (pid {ranks[stopped]} on {os.uname().nodename}) sent no heartbeat for "
            f"3s (parallel.watchdog_seconds=3): it is stopped, frozen or dead; killed it; ending the job") in log, log
    assert f"exitcode  : {WATCHDOG_EXIT_CODE}" in log, log
    assert not any(alive(pid) for pid in ranks.values())


def test_a_stopped_rank_ends_the_training_job_within_the_watchdog_bound(two_ranks, tmp_path):
    """Slow (a 2-rank start of the tiny trainer), then the 3 s bound. Rank 0 catches rank 1."""
    out = tmp_path / "run"
    launcher, ranks, stderr = two_ranks(training(out, "parallel.watchdog_seconds=3"), out / "metrics.jsonl")
    assert_ends_within_the_bound(launcher, ranks, stderr, stopped=1)


def test_a_busy_job_runs_past_the_bound_and_a_stopped_rank_0_is_caught_by_the_others(two_ranks, tmp_path):
    """Slow (a 2-rank start). The heartbeat is a thread's: ranks busy in collectives (or anything) beat on."""
    ready = tmp_path / "ready"
    launcher, ranks, stderr = two_ranks(collective_loop(ready, 3), ready)
    time.sleep(7)
    assert launcher.poll() is None, stderr.read_text()[-3000:]
    assert_ends_within_the_bound(launcher, ranks, stderr, stopped=0)


def test_workers_end_with_a_killed_launcher(two_ranks, tmp_path):
    """Slow: a 2-rank start."""
    ready = tmp_path / "ready"
    launcher, ranks, _ = two_ranks(collective_loop(ready, 0), ready)  # the watchdog off: the kernel ends them
    launcher.kill()
    assert wait_until(lambda: not any(alive(pid) for pid in ranks.values()), 5), \
        [pid for pid in ranks.values() if alive(pid)]


def test_a_negative_watchdog_bound_is_refused():
    with pytest.raises(ConfigError, match=r"^parallel.watchdog_seconds: -1.0 is invalid; expected seconds > 0, or 0"):
        load_config(ROOT / "assets/configs/tiny_t2v.yaml", ["parallel.watchdog_seconds=-1"])
