"""Faults injected into the reward process: kills, stops, preemption signals, bad configs."""

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import REWARD_PLUGINS, ROOT
from fastvideo_grpo.checkpoint import latest_checkpoint
from fastvideo_grpo.config import RewardConfig
from fastvideo_grpo.training.preemption import PREEMPTED_EXIT_CODE
from fastvideo_grpo.rewards import REGISTRY, RewardError, RewardModel, check_reward_config
from fastvideo_grpo.rewards import process as reward_process
from fastvideo_grpo.rewards.client import RewardClient, RewardTimeout
from fastvideo_grpo.rewards.process import start_reward_process
from fastvideo_grpo.rewards.scorers import ServiceScorer
from fastvideo_grpo.rewards.serve import main as serve_main
from test_reward_service import videos_with_means


def running(pid: int) -> bool:
    """True while `pid` exists and is not a zombie (an orphan's reaper may be slow)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def wait_until(condition, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def reward_children() -> list[int]:
    """Reward processes spawned by this process's main thread (not the resource tracker)."""
    main = threading.main_thread().native_id
    pids = []
    for pid in Path(f"/proc/{os.getpid()}/task/{main}/children").read_text().split():
        try:
            if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes():
                pids.append(int(pid))
        except FileNotFoundError:
            pass
    return pids


def test_a_restart_resends_every_batch_in_flight_not_only_the_awaited_one(monkeypatch, caplog):
    monkeypatch.setenv("FVGRPO_TEST_SLEEP", "0.3")
    # timeout_s also bounds the restarted process's start-up, seconds on loaded cores.
    cfg = RewardConfig(weights={"test_sleep": 1.0}, plugins=[REWARD_PLUGINS], timeout_s=30.0, max_restarts=1)
    process, address = start_reward_process(cfg)
    scorer = ServiceScorer(cfg, address, process)
    batches = [[10 * b + i for i in range(2)] for b in range(3)]
    handles = [scorer.submit(videos_with_means(values), ["a", "b"]) for values in batches]
    process.kill()  # before the first batch's 0.3 s of scoring is over: all six requests are pending
    with caplog.at_level(logging.WARNING, logger="fastvideo_grpo.rewards.client"):
        scores = [scorer.result(ids)["test_sleep"].tolist() for ids in handles]
    assert scores == [[float(v) for v in values] for values in batches]
    assert scorer.client.restarts == 1
    assert "resending requests [0, 1, 2, 3, 4, 5]" in caplog.text
    assert f"(the reward process (pid {process.pid}) was killed by SIGKILL); restarting" in caplog.text
    scorer.close()


def test_a_stopped_reward_process_times_out_and_is_killed():
    process, address = start_reward_process(RewardConfig(weights={"test_echo": 1.0}, plugins=[REWARD_PLUGINS],
                                                         timeout_s=30))
    cfg = RewardConfig(weights={"test_echo": 1.0}, plugins=[REWARD_PLUGINS], timeout_s=1.0)
    scorer = ServiceScorer(cfg, address, process)
    os.kill(process.pid, signal.SIGSTOP)  # a hung reward model
    start = time.monotonic()
    with pytest.raises(RewardTimeout, match=r"requests \[0, 1\] got no reply within reward.timeout_s=1.0s"):
        scorer.result(scorer.submit(videos_with_means([1, 2]), ["a", "b"]))
    assert process.exitcode == -signal.SIGKILL  # killed with the error, not left stopped for close to join
    assert time.monotonic() - start < 1.0 + 3
    scorer.close()


class Unkillable:
    """Stands for a process stuck in the kernel (a hung GPU driver call): SIGKILL does not end it."""

    pid = 4242
    exitcode = None

    def kill(self):
        pass

    def is_alive(self):
        return True

    def join(self, timeout=None):
        threading.Event().wait(timeout)


def test_close_does_not_hang_on_a_process_that_survives_sigkill(monkeypatch, caplog):
    monkeypatch.setattr(reward_process, "KILL_WAIT_S", 0.2)
    with socket.create_server(("127.0.0.1", 0)) as listener:  # connects; never answers
        scorer = ServiceScorer(RewardConfig(timeout_s=5.0), f"127.0.0.1:{listener.getsockname()[1]}", Unkillable())
        closing = threading.Thread(target=scorer.close, daemon=True)
        closing.start()
        closing.join(timeout=5)
    assert not closing.is_alive()
    assert "reward process (pid 4242) did not exit within 0.2s of SIGKILL" in caplog.text


# What stops a run after a checkpoint, as the trainer's whole process group gets it:
# SIGTERM, SIGUSR1 (preemption), SIGINT (Ctrl-C), SIGHUP (a closed terminal).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT, signal.SIGHUP)


def test_the_reward_process_outlives_stop_signals_while_starting_and_serving():
    cfg = RewardConfig(weights={"test_echo": 1.0}, plugins=[REWARD_PLUGINS], timeout_s=30)
    signalled, started, earlier = set(), threading.Event(), set(reward_children())

    def signal_as_soon_as_spawned():  # while the child imports, before it can install anything
        while not started.is_set():
            for pid in set(reward_children()) - earlier:
                for sig in STOP_SIGNALS:
                    os.kill(pid, sig)
                signalled.add(pid)
            time.sleep(0.02)

    signaller = threading.Thread(target=signal_as_soon_as_spawned)
    signaller.start()
    try:
        process, address = start_reward_process(cfg)
    finally:
        started.set()
        signaller.join()
    assert signalled == {process.pid}
    for sig in STOP_SIGNALS:
        os.kill(process.pid, sig)
    client = RewardClient(address, timeout_s=5.0)
    assert client.result(client.submit(videos_with_means([3, 4]), ["a", "b"]))["test_echo"].tolist() == [3.0, 4.0]
    assert process.is_alive()
    client.close()
    reward_process.stop_process(process)


START_AND_WAIT = f"""
import sys, time
from fastvideo_grpo.config import RewardConfig
from fastvideo_grpo.rewards.process import start_reward_process
process, _ = start_reward_process(RewardConfig(weights={{"test_echo": 1.0}}, plugins=[{REWARD_PLUGINS!r}], timeout_s=30))
print(process.pid, flush=True)
time.sleep(120)
"""


def test_the_reward_process_exits_when_its_trainer_is_sigkilled():
    trainer = subprocess.Popen([sys.executable, "-c", START_AND_WAIT], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        child = int(trainer.stdout.readline())
        assert running(child)
    finally:
        trainer.kill()
        trainer.wait()
    assert wait_until(lambda: not running(child), timeout_s=5), f"reward process {child} outlived its trainer"


def test_an_unknown_reward_fails_the_start_at_once_with_the_childs_error():
    cfg = RewardConfig(weights={"test_echo": 1.0, "tyop": 1.0}, plugins=[REWARD_PLUGINS], timeout_s=60)
    start = time.monotonic()
    # The child imported the plugin: its rewards are among the available ones.
    with pytest.raises(RewardError, match=r"could not start: ConfigError: reward.weights.tyop: unknown reward; "
                                          r"available: \[.*'test_echo'"):
        start_reward_process(cfg)
    assert time.monotonic() - start < 30  # the child's import time, not reward.timeout_s


def test_check_reward_config_names_the_unknown_key_without_building_anything(monkeypatch):
    monkeypatch.setitem(REGISTRY, "color", RewardModel("color", ("color",),
                                                       lambda cfg, section: pytest.fail("check_reward_config built it")))
    check_reward_config(RewardConfig(weights={"color": 1.0}))
    with pytest.raises(ValueError, match=r"^reward.weights.hsp: unknown reward; available: \['clip', 'color', "
                                         r".*'videoalign_vq'.*\]$"):
        check_reward_config(RewardConfig(weights={"color": 1.0, "hsp": 1.0}))


def test_the_standalone_server_refuses_an_unknown_reward_with_exit_code_2(caplog):
    config = str(ROOT / "assets/configs/tiny_t2v.yaml")
    assert serve_main(["--config", config, "--port", "0", "reward.weights={tyop: 1.0}"]) == 2
    assert "reward.weights.tyop: unknown reward" in caplog.text


def group_members(pgid: int) -> list[int]:
    """Live processes in process group `pgid`."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            members.append(int(stat.parent.name))
    return members


def test_sigterm_to_the_process_group_checkpoints_exits_75_and_leaves_no_reward_process(tmp_path):
    out = tmp_path / "run"
    # max_restarts=0: a reward process killed by the signal fails the iteration at once.
    args = ["reward.mode=process", "reward.timeout_s=30", "reward.max_restarts=0", "train.iterations=1000",
            "train.progress_bar=false", "train.sample_every=0", "sampling.group_size=2",
            "train.prompts_per_iteration=1", "checkpoint.every=0", f"train.output_dir={out}"]
    log = tmp_path / "stderr.txt"
    with log.open("w") as stderr:
        trainer = subprocess.Popen([sys.executable, "-m", "fastvideo_grpo.train", "--config",
                                    str(ROOT / "assets/configs/tiny_t2v.yaml"), *args], cwd=ROOT,
                                   stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True)
    metrics = out / "metrics.jsonl"
    try:
        assert wait_until(lambda: trainer.poll() is not None or (metrics.exists() and metrics.read_text()), 120)
        assert trainer.poll() is None, log.read_text()[-3000:]
        os.killpg(trainer.pid, signal.SIGTERM)  # what scancel and SLURM preemption do
        assert trainer.wait(timeout=60) == PREEMPTED_EXIT_CODE, log.read_text()[-3000:]
    finally:
        if trainer.poll() is None:
            os.killpg(trainer.pid, signal.SIGKILL)
            trainer.wait()
    done = len(metrics.read_text().splitlines())
    assert done >= 1
    assert latest_checkpoint(out).name == f"step_{done}"
    assert json.loads(metrics.read_text().splitlines()[-1])["iteration"] == done - 1
    assert wait_until(lambda: not group_members(trainer.pid), timeout_s=5), group_members(trainer.pid)


KILLS_ITSELF = """
import multiprocessing, os, signal

if multiprocessing.parent_process() is not None:  # in the reward process, not the trainer
    os.kill(os.getpid(), signal.SIGSEGV)
"""


def test_a_reward_process_killed_while_starting_names_the_signal(tmp_path):
    plugin = tmp_path / "segfaults.py"
    plugin.write_text(KILLS_ITSELF)
    cfg = RewardConfig(weights={"test_echo": 1.0}, plugins=[REWARD_PLUGINS, str(plugin)], timeout_s=60)
    with pytest.raises(RewardError, match=r"^the reward process \(pid \d+\) was killed by SIGSEGV before it was ready$"):
        start_reward_process(cfg)


def test_remote_mode_with_nothing_listening_names_the_address():
    from helpers import free_port

    address = f"127.0.0.1:{free_port()}"
    cfg = RewardConfig(weights={"test_echo": 1.0}, plugins=[REWARD_PLUGINS], mode="remote", address=address)
    with pytest.raises(RewardError, match=rf"^reward.address: could not connect to the reward server at {address}: "
                                          r".*Connection refused.*; is a reward server .* listening there\?$"):
        ServiceScorer(cfg, address)
