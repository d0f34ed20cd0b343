import json

from fastvideo_grpo.ablate import EXPERIMENTS, main

from conftest import ROOT


def test_quick_grid_writes_table_and_curves(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    assert main(["--quick", "--output", str(tmp_path)]) == 0
    table = (tmp_path / "results.md").read_text()
    for experiment, (_, settings) in EXPERIMENTS.items():
        for setting in settings:
            assert f"| {experiment} | {setting.name} |" in table
    results = json.loads((tmp_path / "results.json").read_text())
    assert all(len(s["runs"]) == 1 for s in results["settings"].values())
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"
