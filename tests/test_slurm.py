"""The flagship script (train_hunyuan_t2v.sh, which execs launch.sh) under a real SLURM: sbatch
--wait on a single-node cluster."""

import os
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT
from helpers import free_port, read_jsonl, wait_for_lines
from slurm_cluster import Cluster, Unavailable, ensure_installed

# One cluster for the file: under pytest-xdist its tests run on one worker.
pytestmark = pytest.mark.xdist_group("slurm")

@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    try:
        ensure_installed()
        slurm = Cluster(tmp_path_factory.mktemp("slurm"))
        slurm.start()
    except Unavailable as e:
        pytest.skip(f"no SLURM here: {e}")
    yield slurm
    slurm.stop()


def job_env(cluster, out):
    """The flagship script on the tiny config with 2 local processes."""
    return {**cluster.env, "CONFIG": "assets/configs/tiny_t2v.yaml", "NPROC_PER_NODE": "2",
            "OUTPUT_DIR": str(out), "OMP_NUM_THREADS": "1",
            # the suite's other torchrun jobs share this machine: no fixed rendezvous port
            "MASTER_PORT": str(free_port()),
            # torchrun sits beside this interpreter
            "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}


def test_sbatch_runs_the_flagship_script_on_the_tiny_config(cluster, tmp_path):
    out = tmp_path / "run"
    env = job_env(cluster, out)
    # The script's header asks for 8 GPU nodes; this cluster has one CPU node.
    result = cluster.run(
        "sbatch", "--wait", "--nodes=1", "--gpus-per-node=0", f"--cpus-per-task={os.cpu_count()}",
        "--time=10", f"--output={tmp_path}/slurm-%j.out",
        "train_scripts/train_hunyuan_t2v.sh",
        "train.iterations=2", "sampling.group_size=4", "sampling.rollout_batch_size=4", "train.progress_bar=false",
        check=False, cwd=ROOT, env=env, timeout=600)
    logs = "\n".join(p.read_text() for p in tmp_path.glob("slurm-*.out"))
    assert result.returncode == 0, result.stderr + logs + cluster.logs()
    assert "rendezvous" in logs and "1 node(s) x 2" in logs
    rows = read_jsonl(out / "metrics.jsonl")
    assert [r["iteration"] for r in rows] == [0, 1]


# The signal goes out once 2 iterations are logged; the other 6 (seconds each, on 2 ranks)
# leave it time to arrive before the run would end.
ITERATIONS = 8


def test_usr1_under_slurm_checkpoints_requeues_and_resumes(cluster, tmp_path):
    out = tmp_path / "run"
    env = job_env(cluster, out)
    submitted = cluster.run(
        "sbatch", "--parsable", "--nodes=1", "--gpus-per-node=0", f"--cpus-per-task={os.cpu_count()}",
        "--time=10", f"--output={tmp_path}/slurm-%j.out", "--open-mode=append",
        "train_scripts/train_hunyuan_t2v.sh", f"train.iterations={ITERATIONS}", "sampling.group_size=4",
        "sampling.rollout_batch_size=4", "train.progress_bar=false", "checkpoint.every=0",
        cwd=ROOT, env=env, timeout=60)
    job = submitted.stdout.strip().split(";")[0]
    metrics = out / "metrics.jsonl"
    wait_for_lines(metrics, 2, timeout_s=300, poll_s=0.5)
    state = cluster.run("squeue", "-h", "-j", job, "-o", "%T", check=False).stdout.strip()
    log = "\n".join(p.read_text() for p in tmp_path.glob("slurm-*.out"))
    assert state == "RUNNING", f"job {job} is {state or 'gone'} before the signal:\n{log}{cluster.logs()}"
    cluster.run("scancel", "--signal=USR1", job)
    # SLURM holds a requeued job back for AuthInfo's cred_expire (10 s on this cluster, 120 s
    # by default); this test waits for the real restart.
    deadline = time.time() + 300
    while time.time() < deadline:
        state = cluster.run("squeue", "-h", "-j", job, "-o", "%T", check=False).stdout.strip()
        log = "\n".join(p.read_text() for p in tmp_path.glob("slurm-*.out"))
        if not state and "resumed from" in log:
            break
        time.sleep(2)
    log = "\n".join(p.read_text() for p in tmp_path.glob("slurm-*.out"))
    assert "preempted after a checkpoint: requeueing" in log, log + cluster.logs()
    assert "resumed from" in log, log
    rows = read_jsonl(metrics)
    assert [r["iteration"] for r in rows] == list(range(ITERATIONS))
