"""The training CLI under torchrun, with rank 1 given extra overrides (after `--rank1`):
ranks started with different configs."""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fastvideo_grpo.cli.errors import run_cli  # noqa: E402
from fastvideo_grpo.cli.train import main  # noqa: E402

if __name__ == "__main__":
    args = sys.argv[1:]
    split = args.index("--rank1")
    common, rank1 = args[:split], args[split + 1:]
    sys.exit(run_cli(main, common + (rank1 if os.environ["RANK"] == "1" else [])))
