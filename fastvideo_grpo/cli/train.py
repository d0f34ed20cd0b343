"""CLI: python -m fastvideo_grpo.train --config FILE [section.key=value ...]

Torch, diffusers and the trainer are imported only once the config is known to be good, so
`--help`, `--check`, `--print-config` and a config error answer in about a second."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import signal
import sys

from fastvideo_grpo.cli.errors import run_cli
from fastvideo_grpo.config import Config, ConfigError, load_config

EPILOG = """config sections (each key is documented beside its default in fastvideo_grpo/config.py,
in the dataclass named after the section, e.g. sampling -> SamplingConfig; reward models'
sections reward.models.<name> in fastvideo_grpo/rewards/<name>.py):
  {sections}
--print-config shows every key of a config with its value after the overrides."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    sections = ", ".join(f.name for f in dataclasses.fields(Config))
    parser = argparse.ArgumentParser(description="GRPO training of a video/image generator",
                                     epilog=EPILOG.format(sections=sections),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="YAML config file (assets/configs/*.yaml)")
    parser.add_argument("--check", action="store_true",
                        help="check the config, its paths and the job's GPU count, report every problem, build nothing")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.lr=2e-5")
    return parser.parse_args(argv)


def check(args: argparse.Namespace, log: logging.Logger) -> int:
    from fastvideo_grpo.preflight import job_shape_from_env, preflight

    problems = preflight(args.config, args.overrides, *job_shape_from_env())
    if problems:
        log.error("preflight of %s found %d problem(s):\n%s", args.config, len(problems),
                  "\n".join(f"  - {p}" for p in problems))
        return 2
    log.info("preflight of %s: no problems", args.config)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rank = int(os.environ.get("RANK", 0))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format=f"%(asctime)s [rank{rank}] %(name)s: %(message)s")
    log = logging.getLogger("fastvideo_grpo")
    if args.check:
        return check(args, log)
    try:
        cfg = load_config(args.config, args.overrides)
        if args.print_config:
            import yaml

            from fastvideo_grpo.config import to_dict

            sys.stdout.write(yaml.safe_dump(to_dict(cfg), sort_keys=False))
            return 0
        from fastvideo_grpo.algorithms.registry import algorithm_of
        from fastvideo_grpo.models import check_model_config
        from fastvideo_grpo.rewards import check_reward_config

        check_reward_config(cfg.reward)  # a reward section's typo exits 2 too, before anything is built
        check_model_config(cfg)  # model.family, and whether it supports parallel.sp_size
        algorithm_of(cfg)  # train.algorithm is in the table
    except ConfigError as e:
        if rank == 0:  # every rank reads the same config: one message, not one per rank
            log.error("config error: %s", e)
        return 2
    from fastvideo_grpo.training.preemption import PREEMPTED_EXIT_CODE, Preempted, mark_preempted
    from fastvideo_grpo.quiet import silence_library_noise
    from fastvideo_grpo.training.trainer import train

    silence_library_noise()
    try:
        out = train(cfg)
    except Preempted as e:
        if e.exit_code == PREEMPTED_EXIT_CODE:
            mark_preempted()
            log.warning("preempted: checkpoint written in %s", e.args[0])
        else:
            log.warning("stopped by %s: checkpoint written in %s; the same command resumes",
                        signal.Signals(e.signal).name, e.args[0])
        return e.exit_code
    log.info("done: outputs in %s", out)
    return 0


def command() -> int:
    """`fastvideo-grpo-train` and `python -m fastvideo_grpo.train`: main on sys.argv, a user error as one
    line and exit status 2."""
    return run_cli(main)


if __name__ == "__main__":
    sys.exit(command())
