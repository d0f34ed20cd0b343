import os
import sys
from pathlib import Path

# One thread in this process and in every subprocess: float reductions then run in the same
# order everywhere, so runs split over processes can be compared bit for bit.
os.environ["OMP_NUM_THREADS"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# The test rewards (test_echo, test_fail, test_sleep), for reward.plugins.
REWARD_PLUGINS = str(ROOT / "tests" / "reward_plugins.py")


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


@pytest.fixture(scope="session")
def one_rank_run(tmp_path_factory):
    """(config file, *overrides) -> the output folder of tests/dist/train_run.py run in one
    process with them: the reference of the 2-rank comparisons, run once per session
    (test_distributed and test_families compare against the same tiny T2V run)."""
    from helpers import DIST, run

    runs = {}

    def get(config, *overrides):
        key = (str(config), overrides)
        if key not in runs:
            out = tmp_path_factory.mktemp("one_rank")
            run([DIST / "train_run.py", "--config", config, *overrides, f"train.output_dir={out}"])
            runs[key] = out
        return runs[key]

    return get


def pytest_collection_modifyitems(items):
    # xdist groups run first: the real-SLURM tests spend minutes waiting on SLURM itself, and
    # test_families (one worker, its runs shared) is the longest single share; both then
    # overlap the other worker's tests instead of trailing the suite.
    items.sort(key=lambda item: 0 if item.get_closest_marker("xdist_group") else 1)
