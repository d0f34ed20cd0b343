"""`python -m fastvideo_grpo.export`: the export command line, fastvideo_grpo/cli/export.py."""

import sys

from fastvideo_grpo.cli.export import command

if __name__ == "__main__":
    sys.exit(command())
