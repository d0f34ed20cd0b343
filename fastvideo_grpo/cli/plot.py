"""CLI: smoothed reward curves of one or several runs in one PNG.

    python -m fastvideo_grpo.plot RUN [RUN ...] [--output FILE.png] [--key reward_mean] [--window 10]

RUN is a training output folder (or its metrics.jsonl). Each run is drawn raw (faint) and
as a trailing moving average over `--window` iterations, as the paper plots rewards.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from fastvideo_grpo.cli.errors import run_cli
from fastvideo_grpo.training.outputs import plot_reward_curve, read_metrics

logger = logging.getLogger(__name__)


def metrics_path(run: str) -> Path:
    path = Path(run)
    path = path / "metrics.jsonl" if path.is_dir() else path
    if not path.is_file():
        raise FileNotFoundError(f"{run}: no metrics.jsonl; expected a training output folder")
    return path


def labels(runs: list[str]) -> list[str]:
    """Folder names, or whole paths where two names clash."""
    names = [metrics_path(r).parent.name for r in runs]
    return [name if names.count(name) == 1 else str(metrics_path(r).parent) for name, r in zip(names, runs)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Smoothed reward curves of training runs")
    parser.add_argument("runs", nargs="+", help="training output folders (or metrics.jsonl files)")
    parser.add_argument("--output", help="the PNG to write; default RUN/reward_curves.png for one run, required "
                        "for several")
    parser.add_argument("--key", default="reward_mean", help="metrics.jsonl key, e.g. reward/color")
    parser.add_argument("--window", type=int, default=10, help="moving-average window in iterations")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    runs = {label: read_metrics(metrics_path(run)) for label, run in zip(labels(args.runs), args.runs)}
    for label, records in runs.items():
        if not any(args.key in r for r in records):
            raise KeyError(f"{label}: metrics.jsonl has no {args.key!r}; it has {sorted(records[0]) if records else []}")
    if args.output is None and len(args.runs) > 1:
        parser.error("--output is required with several runs (where should their plot go?)")
    output = Path(args.output) if args.output else metrics_path(args.runs[0]).parent / "reward_curves.png"
    plot_reward_curve(runs, output, args.key, args.window)
    logger.info("wrote %s", output)
    return 0


def command() -> int:
    """`fastvideo-grpo-plot` and `python -m fastvideo_grpo.plot`: main on sys.argv, a user error as one
    line and exit status 2."""
    return run_cli(main)


if __name__ == "__main__":
    sys.exit(command())
