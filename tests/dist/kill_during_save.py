"""Train with a checkpoint every iteration and SIGKILL this process in the middle of
writing the checkpoint after `argv[1]` iterations: its shards are on disk, the rename and
the `latest` update are not."""

import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import ROOT  # noqa: E402
from fastvideo_grpo.checkpoint import sharded  # noqa: E402
from fastvideo_grpo.config import load_config  # noqa: E402
from fastvideo_grpo.training.trainer import train  # noqa: E402


def main():
    kill_at = int(sys.argv[1])
    cfg = load_config(ROOT / "assets/configs/tiny_t2v.yaml", sys.argv[2:])
    original = sharded.dcp.save

    def save_then_die(state, checkpoint_id, **kwargs):
        original(state, checkpoint_id=checkpoint_id, **kwargs)
        if Path(checkpoint_id).name == f".tmp-step_{kill_at}":
            os.kill(os.getpid(), signal.SIGKILL)

    sharded.dcp.save = save_then_die
    train(cfg)


if __name__ == "__main__":
    main()
