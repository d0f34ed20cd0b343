"""`python -m fastvideo_grpo.plot`: the reward-curve plot command line, fastvideo_grpo/cli/plot.py."""

import sys

from fastvideo_grpo.cli.plot import command

if __name__ == "__main__":
    sys.exit(command())
