import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


@pytest.fixture
def tiny_cfg(tmp_path):
    """The tiny CPU config, pointed at a temporary output folder and shortened."""
    from fastvideo_grpo.config import load_config

    return load_config(ROOT / "assets/configs/tiny_t2v.yaml", [
        f"train.output_dir={tmp_path / 'run'}", "train.progress_bar=false", f"data.prompts_file={ROOT / 'assets/prompts/tiny.txt'}",
    ])
