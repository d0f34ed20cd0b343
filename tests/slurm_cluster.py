"""A real single-node SLURM cluster on localhost for launch-script tests (Debian packages).

Needs root: installs slurmctld, slurmd, slurm-client and munge with apt-get when missing,
starts munged, slurmctld and slurmd by hand (no systemd), and stops them afterwards.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

from helpers import free_port

PACKAGES = ["slurmctld", "slurmd", "slurm-client", "munge"]

CONF = """ClusterName=fvgrpo
SlurmctldHost={host}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# A requeued job waits cred_expire seconds before it starts again (default 120).
AuthInfo=cred_expire=10
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
StateSaveLocation={dir}/spool/ctld
SlurmdSpoolDir={dir}/spool/d
SlurmctldPidFile={dir}/run/slurmctld.pid
SlurmdPidFile={dir}/run/slurmd.pid
SlurmctldLogFile={dir}/log/slurmctld.log
SlurmdLogFile={dir}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
SlurmctldTimeout=30
SlurmdTimeout=60
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory=2000 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""


class Unavailable(Exception):
    """SLURM cannot be had here (not root, or no package source)."""


def ensure_installed() -> None:
    if all(shutil.which(tool) for tool in ("sbatch", "slurmctld", "slurmd", "munged")):
        return
    if os.geteuid() != 0:
        raise Unavailable("SLURM is not installed and installing it needs root")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"],
                ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *PACKAGES]):
        result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
        if result.returncode != 0:
            raise Unavailable(f"{' '.join(cmd)} failed: {result.stderr.strip()[-500:]}")


class Cluster:
    def __init__(self, folder: Path):
        self.dir = folder
        self.conf = folder / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}

    def run(self, *cmd: str, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
        kwargs.setdefault("env", self.env)
        result = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
        if check and result.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)}: {result.stderr.strip()}\n{self.logs()}")
        return result

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-2000:]}" for p in sorted((self.dir / "log").glob("*.log")))

    def _wait(self, what: str, probe) -> None:
        for _ in range(60):
            if probe():
                return
            time.sleep(0.5)
        raise RuntimeError(f"SLURM {what} did not come up\n{self.logs()}")

    def start(self) -> None:
        if os.geteuid() != 0:
            raise Unavailable("starting slurmd and munged needs root")
        for sub in ("spool/ctld", "spool/d", "log", "run"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        host = socket.gethostname().split(".")[0]
        self.conf.write_text(CONF.format(host=host, dir=self.dir, cpus=os.cpu_count(),
                                         ctld_port=free_port(), d_port=free_port()))
        Path("/run/munge").mkdir(exist_ok=True)
        shutil.chown("/run/munge", "munge", "munge")
        if subprocess.run(["pgrep", "-x", "munged"], capture_output=True).returncode != 0:
            subprocess.run(["su", "-s", "/bin/sh", "munge", "-c", "/usr/sbin/munged"], check=True)
        self.run("slurmctld", "-f", str(self.conf))
        self._wait("controller", lambda: "UP" in self.run("scontrol", "ping", check=False).stdout)
        self.run("slurmd", "-f", str(self.conf))
        self._wait("node", lambda: "idle" in self.run("sinfo", "-h", "-o", "%T", check=False).stdout)

    def stop(self) -> None:
        self.run("scancel", "--user=root", check=False)
        for name in ("slurmd", "slurmctld"):
            pid_file = self.dir / "run" / f"{name}.pid"
            if pid_file.exists():
                subprocess.run(["kill", pid_file.read_text().strip()], capture_output=True)
