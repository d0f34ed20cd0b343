import json

from fastvideo_grpo.cli.ablate import EXPERIMENTS, main, wall_time_table

from conftest import ROOT
from helpers import curve_pixels, read_png


def test_quick_grid_writes_table_and_curves(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    assert main(["--quick", "--output", str(tmp_path)]) == 0
    table = (tmp_path / "results.md").read_text()
    for experiment, (_, settings) in EXPERIMENTS.items():
        for setting in settings:
            assert f"| {experiment} | {setting.name} |" in table
    results = json.loads((tmp_path / "results.json").read_text())
    assert all(len(s["runs"]) == 1 for s in results["settings"].values())
    # One panel per experiment, three a row (5 x 3.6 inches each at 90 dpi); each shows its
    # settings' curves (the last drawn, never covered, in the cycle's colour of its index),
    # and the cells no experiment fills stay blank.
    image = read_png(tmp_path / "curves.png")
    columns = min(3, len(EXPERIMENTS))
    rows = -(-len(EXPERIMENTS) // columns)
    assert image.shape == (324 * rows, 450 * columns, 3)
    for index, (experiment, (_, settings)) in enumerate(EXPERIMENTS.items()):
        row, column = divmod(index, columns)
        panel = image[324 * row:324 * (row + 1), 450 * column:450 * (column + 1)]
        assert len(curve_pixels(panel, len(settings) - 1)[0]) > 0, experiment
    for index in range(len(EXPERIMENTS), rows * columns):
        row, column = divmod(index, columns)
        assert (image[324 * row:324 * (row + 1), 450 * column:450 * (column + 1)] == 255).all()


def test_wall_time_table_times_each_seed_and_the_seed_averaged_curve():
    reference, fast = EXPERIMENTS["algorithm"][1][0], EXPERIMENTS["algorithm"][1][1]
    others = EXPERIMENTS["algorithm"][1][2:]
    # Reference: seed 0 ends at 0.4 after 100 s, seed 1 at 0.0 after 80 s; averaged final 0.2 at 90 s.
    ref_runs = [{"eval_curve": [[50.0, 0.1], [100.0, 0.4]]}, {"eval_curve": [[40.0, 0.3], [80.0, 0.0]]}]
    # Seed 0 never reaches 0.4; seed 1 reaches 0.0 at 10 s; averaged (0.05 at 10 s, 0.25 at 20 s) reaches 0.2 at 20 s.
    fast_runs = [{"eval_curve": [[10.0, 0.1], [20.0, 0.3]]}, {"eval_curve": [[10.0, 0.0], [20.0, 0.2]]}]
    never = [{"eval_curve": [[10.0, -0.1], [20.0, -0.1]]}] * 2
    results = {reference.key: ref_runs, fast.key: fast_runs, **{s.key: never for s in others}}
    lines = wall_time_table(results, ["algorithm"])
    assert "averaged final +0.200 in 90 s" in lines[1]
    row = {line.split(" | ")[0].lstrip("| "): line for line in lines if line.startswith("| ")}
    # Reference: seed 0 reaches its own 0.4 at 100 s (1.00), seed 1 its 0.0 at 40 s (0.50); averaged
    # (0.2 at 45 s) reaches 0.2 at 45 s = 0.50 of 90 s.
    assert row[reference.name].endswith("| +0.200 +- 0.283 | 70 | 0.75 | 2/2 | 45 | 0.50 |")
    assert row[fast.name].endswith("| +0.250 +- 0.071 | 10 | 0.12 | 1/2 | 20 | 0.22 |")
    assert row[others[0].name].endswith("| never | - | 0/2 | never | - |")


def test_every_run_folder_name_fits_a_file_name_and_stays_distinct():
    settings = {s for _, group in EXPERIMENTS.values() for s in group}
    keys = {s.key for s in settings}
    assert all(len(key) <= 200 for key in keys)
    assert len(keys) == len({s.overrides for s in settings})
