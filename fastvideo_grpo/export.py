"""`python -m fastvideo_grpo.export`: the export command line, fastvideo_grpo/cli/export.py."""

import sys

from fastvideo_grpo.cli.errors import run_cli
from fastvideo_grpo.cli.export import main

if __name__ == "__main__":
    sys.exit(run_cli(main))
