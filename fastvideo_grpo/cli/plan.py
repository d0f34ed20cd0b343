"""CLI: will a config fit? Its per-rank memory and time, planned on a CPU (fastvideo_grpo/planning/).

    python -m fastvideo_grpo.plan --config C [section.key=value ...] --nodes N --gpus-per-node G \\
        --gpu-memory-gb M [--ranks-per-node P] [--host-memory-gb H] [--peak-tflops T] [--mfu F] \\
        [--reserve-gb R] [--json]

Prints the plan as a table, or with --json one object (its keys: fastvideo_grpo/planning/plan.py)."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from fastvideo_grpo.cli.args import number
from fastvideo_grpo.cli.errors import run_cli
from fastvideo_grpo.config import ConfigError
from fastvideo_grpo.planning.cluster import Cluster
from fastvideo_grpo.planning.plan import plan
from fastvideo_grpo.planning.report import render
from fastvideo_grpo.quiet import silence_library_noise

logger = logging.getLogger(__name__)

# The largest cluster `plan` accepts (--nodes x --gpus-per-node): planning time grows with it.
MAX_GPUS = 16384


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Per-rank memory and time of a training config, planned on CPU "
                                                 "with fake tensors and a fake process group")
    parser.add_argument("--config", required=True, help="YAML config file (assets/configs/*.yaml)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. parallel.sp_size=4")
    parser.add_argument("--nodes", type=number(int, 1, MAX_GPUS), default=1)
    parser.add_argument("--gpus-per-node", type=number(int, 1, MAX_GPUS), default=8)
    parser.add_argument("--gpu-memory-gb", type=number(float, 0, low_open=True), default=80.0)
    parser.add_argument("--peak-tflops", type=number(float, 0, low_open=True), default=989.0,
                        help="dense bf16 peak (H100/H800 SXM: 989)")
    parser.add_argument("--mfu", type=number(float, 0, 1, low_open=True), default=0.35,
                        help="model FLOPs utilisation assumed for the time, in (0, 1]")
    parser.add_argument("--reserve-gb", type=number(float, 0), default=None,
                        help="per GPU, for the CUDA context, NCCL and allocator fragmentation (default: an itemised "
                             "estimate of each)")
    parser.add_argument("--ranks-per-node", type=number(int, 0, MAX_GPUS), default=0,
                        help="training processes per node (torchrun --nproc_per_node; default: one per GPU)")
    parser.add_argument("--host-memory-gb", type=number(float, 0, low_open=True), default=1024.0,
                        help="host memory per node")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    if args.nodes * args.gpus_per_node > MAX_GPUS:
        parser.error(f"--nodes {args.nodes} x --gpus-per-node {args.gpus_per_node} = "
                     f"{args.nodes * args.gpus_per_node} GPUs; at most {MAX_GPUS} are planned (the fake process "
                     "group costs about a millisecond of CPU a rank)")
    if args.reserve_gb is not None and args.reserve_gb >= args.gpu_memory_gb:
        parser.error(f"--reserve-gb {args.reserve_gb:g} leaves nothing of --gpu-memory-gb {args.gpu_memory_gb:g}")
    if args.ranks_per_node > args.gpus_per_node:
        parser.error(f"--ranks-per-node {args.ranks_per_node}: expected at most --gpus-per-node ({args.gpus_per_node})")
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    silence_library_noise()
    logging.getLogger("diffusers").setLevel(logging.ERROR)
    for name in (__name__, "fastvideo_grpo.planning"):  # progress: a plan takes a minute at full size
        logging.getLogger(name).setLevel(logging.INFO)
    cluster = Cluster(args.nodes, args.gpus_per_node, args.gpu_memory_gb, args.peak_tflops, args.mfu, args.reserve_gb,
                      args.ranks_per_node, args.host_memory_gb)
    logger.info("planning %s on %d nodes x %d GPUs: one training micro-batch traced on fake tensors (about a "
                "minute at full size, again for each knob if it does not fit)", args.config, args.nodes,
                args.gpus_per_node)
    try:
        result = plan(args.config, args.overrides, cluster)
    except (ConfigError, ValueError, FileNotFoundError) as e:
        logger.error("config error: %s", e)
        return 2
    sys.stdout.write((json.dumps(result) if args.json else render(result)) + "\n")
    return 0


def command() -> int:
    """`fastvideo-grpo-plan` and `python -m fastvideo_grpo.plan`: main on sys.argv, a user error as one
    line and exit status 2."""
    return run_cli(main)


if __name__ == "__main__":
    sys.exit(command())
