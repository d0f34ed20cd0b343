"""bench/gpu_smoke.sh --dry-run: the GPU smoke test's whole path on the CPU (gloo, tiny
sizes), so that it still runs when a GPU is there. About 45 s of CPU time: two trainer
launches under torchrun, each with its reward process."""

import json
import os
import subprocess
import sys

from conftest import ROOT


def test_gpu_smoke_dry_run_trains_resumes_and_reports_against_the_plan(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(["bash", "bench/gpu_smoke.sh", "--dry-run", "--out", str(tmp_path)], capture_output=True,
                            text=True, cwd=ROOT, env=env, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["failures"] == report["warnings"] == [] and report["dry_run"]
    assert report["environment"]["torch"] and "flash_attn" in report["environment"]
    # 2 x 2 x 2 video tokens (32x32 x 5 frames) + 8 text tokens, each backend named by its kernel.
    attention = {row["backend"]: row for row in report["attention"]}
    assert set(attention) == {"sdpa", "sdpa_masked"}
    for row in attention.values():
        assert row["tokens"] == 16 and row["ms"] > 0 and row["kernels"][0].startswith("aten::_scaled_dot_product")
    # Two iterations, then one more resumed from the checkpoint after the second.
    assert report["run"]["iterations"] == [0, 1, 2]
    assert "resumed from" in (tmp_path / "resume.log").read_text()
    assert report["run"]["videos_decoded"] == [2, 2, 2]  # 1 prompt x G=2
    comparison = report["comparison"]
    assert comparison["ratio_drift_first_update"] == 0.0
    assert {"time_rollout", "time_decode", "time_reward", "time_train", "time_iteration"} <= set(
        comparison["phase_seconds"])
    assert comparison["peak_memory_gb"]["measured_allocated"] > 0
    assert comparison["peak_memory_gb"]["planned"] == report["plan"]["peak_gb"] > 0
    assert report["plan"]["parameters"] > 0 and report["plan"]["fits"]
