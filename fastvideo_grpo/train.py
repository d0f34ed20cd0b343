"""`python -m fastvideo_grpo.train`: the training command line, fastvideo_grpo/cli/train.py."""

import sys

from fastvideo_grpo.cli.train import command

if __name__ == "__main__":
    sys.exit(command())
