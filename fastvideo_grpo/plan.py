"""`python -m fastvideo_grpo.plan`: the planner's command line, fastvideo_grpo/cli/plan.py."""

import sys

from fastvideo_grpo.cli.plan import command

if __name__ == "__main__":
    sys.exit(command())
