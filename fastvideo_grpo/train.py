"""CLI: python -m fastvideo_grpo.train --config FILE [section.key=value ...]"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from fastvideo_grpo.config import ConfigError, load_config
from fastvideo_grpo.models import check_model_config
from fastvideo_grpo.preemption import PREEMPTED_EXIT_CODE, Preempted, mark_preempted
from fastvideo_grpo.quiet import silence_library_noise
from fastvideo_grpo.rewards import check_reward_config
from fastvideo_grpo.trainer import train


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="GRPO training of a video/image generator")
    parser.add_argument("--config", required=True, help="YAML config file (assets/configs/*.yaml)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.lr=2e-5")
    args = parser.parse_args(argv)
    silence_library_noise()
    rank = int(os.environ.get("RANK", 0))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format=f"%(asctime)s [rank{rank}] %(name)s: %(message)s")
    try:
        cfg = load_config(args.config, args.overrides)
        check_reward_config(cfg.reward)  # a reward section's typo exits 2 too, before anything is built
        check_model_config(cfg)  # model.family, and whether it supports parallel.sp_size
    except ConfigError as e:
        logging.getLogger("fastvideo_grpo").error("config error: %s", e)
        return 2
    try:
        out = train(cfg)
    except Preempted as e:
        mark_preempted()
        logging.getLogger("fastvideo_grpo").warning("preempted: checkpoint written in %s", e.args[0])
        return PREEMPTED_EXIT_CODE
    logging.getLogger("fastvideo_grpo").info("done: outputs in %s", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
