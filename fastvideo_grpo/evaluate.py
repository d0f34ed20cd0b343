"""`python -m fastvideo_grpo.evaluate`: the evaluate command line, in fastvideo_grpo/cli/evaluate.py."""

import sys

from fastvideo_grpo.cli.evaluate import command

if __name__ == "__main__":
    sys.exit(command())
