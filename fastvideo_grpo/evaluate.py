"""`python -m fastvideo_grpo.evaluate`: the evaluate command line, in fastvideo_grpo/cli/evaluate.py."""

from fastvideo_grpo.cli.evaluate import main

if __name__ == "__main__":
    import sys

    from fastvideo_grpo.cli.errors import run_cli

    sys.exit(run_cli(main))
