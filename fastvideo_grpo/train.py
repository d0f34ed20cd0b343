"""`python -m fastvideo_grpo.train`: the training command line, fastvideo_grpo/cli/train.py."""

import sys

from fastvideo_grpo.cli.errors import run_cli
from fastvideo_grpo.cli.train import main

if __name__ == "__main__":
    sys.exit(run_cli(main))
