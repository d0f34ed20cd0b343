"""`python -m fastvideo_grpo.plot`: the reward-curve plot command line, fastvideo_grpo/cli/plot.py."""

import sys

from fastvideo_grpo.cli.errors import run_cli
from fastvideo_grpo.cli.plot import main

if __name__ == "__main__":
    sys.exit(run_cli(main))
