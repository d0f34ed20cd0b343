"""`python -m fastvideo_grpo.ablate`: the ablation command line, fastvideo_grpo/cli/ablate.py."""

import sys

from fastvideo_grpo.cli.ablate import command

if __name__ == "__main__":
    sys.exit(command())
