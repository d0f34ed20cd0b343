"""CLI: a standalone reward server, e.g. on a dedicated node.

    python -m fastvideo_grpo.rewards.serve --config CONFIG.yaml --host 0.0.0.0 --port 7000 [k=v ...]

Trainers connect with reward.mode=remote reward.address=HOST:PORT. A request carries a
video's frames, or the path of a video file that this server reads (ServiceScorer.submit_paths;
`python -m fastvideo_grpo.evaluate --videos ... --send-paths`): a path as this node sees it.
"""

from __future__ import annotations

import argparse
import logging
import socket
import sys

from fastvideo_grpo.config import load_config
from fastvideo_grpo.rewards import check_reward_config
from fastvideo_grpo.rewards.server import serve


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Serve the configured rewards to trainer ranks")
    parser.add_argument("--config", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        cfg = load_config(args.config, args.overrides)
        check_reward_config(cfg.reward)  # imports reward.plugins
    except ValueError as e:  # ConfigError is one too
        logging.getLogger("fastvideo_grpo.rewards").error("config error: %s", e)
        return 2
    listener = socket.create_server((args.host, args.port))
    logging.getLogger("fastvideo_grpo.rewards").info("serving %s on %s:%d", sorted(cfg.reward.weights),
                                                     args.host, args.port)
    serve(cfg.reward, listener)
    return 0


if __name__ == "__main__":
    sys.exit(main())
