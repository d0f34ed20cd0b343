import json

import pytest
import torch

from fastvideo_grpo.algorithms.advantages import advantages_of
from fastvideo_grpo.cli.ablate import (EXPERIMENTS, SHAPES_EXPERIMENTS, SUITES, main, monitor_table, plot_curves,
                                      wall_time_table)
from fastvideo_grpo.config import load_config
from fastvideo_grpo.shapes.detect import SCORES

from conftest import ROOT
from helpers import curve_pixels, read_png

SHAPES_CONFIG = str(ROOT / "assets" / "configs" / "shapes_t2v.yaml")


# Real runs for two experiments (one of them evaluating during training); the layout of
# every experiment's panel is drawn from written metrics below.
QUICK_EXPERIMENTS = ("timesteps", "algorithm")


def test_quick_grid_writes_table_and_curves(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    assert main(["--quick", "--output", str(tmp_path), "--experiments", *QUICK_EXPERIMENTS]) == 0
    table = (tmp_path / "results.md").read_text()
    for experiment in QUICK_EXPERIMENTS:
        for setting in EXPERIMENTS[experiment][1]:
            assert f"| {experiment} | {setting.name} |" in table
    assert not any(f"| {experiment} |" in table for experiment in EXPERIMENTS if experiment not in QUICK_EXPERIMENTS)
    results = json.loads((tmp_path / "results.json").read_text())
    assert all(len(s["runs"]) == 1 for s in results["settings"].values())
    assert read_png(tmp_path / "curves.png").shape == (324, 450 * len(QUICK_EXPERIMENTS), 3)
    assert (tmp_path / "eval_curves.png").is_file()


def test_curves_draw_a_panel_per_experiment_three_a_row(tmp_path):
    """Each panel shows its settings' curves (the last drawn, never covered, in the cycle's
    colour of its index); the cells no experiment fills stay blank. 5 x 3.6 inches at 90 dpi."""
    for _, settings in EXPERIMENTS.values():
        for index, setting in enumerate(settings):
            folder = tmp_path / "runs" / setting.key / "seed_0"
            folder.mkdir(parents=True, exist_ok=True)
            rows = [{"iteration": i, "reward/color": (index + 1) * i / 10} for i in range(12)]
            (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    plot_curves(tmp_path, EXPERIMENTS, [0], 3, "color")
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
    lines = wall_time_table(results, {"algorithm": EXPERIMENTS["algorithm"]}, "color")
    assert "averaged final +0.200 in 90 s" in lines[1]
    row = {line.split(" | ")[0].lstrip("| "): line for line in lines if line.startswith("| ")}
    # Reference: seed 0 reaches its own 0.4 at 100 s (1.00), seed 1 its 0.0 at 40 s (0.50); averaged
    # (0.2 at 45 s) reaches 0.2 at 45 s = 0.50 of 90 s. The final's 95% CI over 2 seeds is
    # t_0.975(1) * std / sqrt(2) = 12.7062 * |a - b| / 2.
    assert row[reference.name].endswith("| +0.200 +- 2.541 | 70 | 0.75 | 2/2 | 45 | 0.50 |")
    assert row[fast.name].endswith("| +0.250 +- 0.635 | 10 | 0.12 | 1/2 | 20 | 0.22 |")
    assert row[others[0].name].endswith("| never | - | 0/2 | never | - |")


def test_every_run_folder_name_fits_a_file_name_and_stays_distinct():
    for suite in SUITES.values():
        settings = {s for _, group in suite.experiments.values() for s in group}
        keys = {s.key for s in settings}
        assert all(len(key) <= 200 for key in keys)
        assert len(keys) == len({s.overrides for s in settings})


def test_shapes_grid_tables_every_attribute_and_what_the_monitor_saw(tmp_path, monkeypatch):
    """The hacking experiment on the shapes model, one iteration per run, 2 held-out captions."""
    monkeypatch.chdir(ROOT)
    assert main(["--config", SHAPES_CONFIG, "--seeds", "1", "--iterations", "1", "--eval-prompts", "2",
                 "--eval-seeds", "1", "--jobs", "1", "--output", str(tmp_path), "eval.num_prompts=2",
                 "train.prompts_per_iteration=1", "--experiments", "hacking"]) == 0
    table = (tmp_path / "results.md").read_text()
    lines = table.splitlines()
    header = next(line for line in lines if line.startswith("| experiment |"))
    assert "| ODE shapes_all, held-out | delta vs reference | ODE shapes_all, train prompts |" in header
    assert all(f"| ODE {name}, held-out (delta) |" in header for name in SCORES[:-1])
    rows = [line for line in lines if line.startswith("| hacking |")]
    assert [row.split(" | ")[1] for row in rows] == ["all attributes", "shape only"]
    assert all(row.count("|") == header.count("|") for row in rows)
    # The monitor's table: every attribute of the in-loop evaluation, for the single-attribute
    # runs too (their other scores are weighted 0), and what the health monitor kept.
    monitor = next(line for line in lines if line.startswith("| setting | trained on |"))
    assert all(f"| in-loop {name} |" in monitor for name in SCORES)
    assert monitor.endswith("| best evaluation: iteration | shapes_all there | warnings |")
    trained = {line.split(" | ")[0][2:]: line.split(" | ")[1] for line in lines
               if line.startswith("| ") and line.count("|") == monitor.count("|") and "trained on" not in line}
    assert trained == {"all attributes": " + ".join(SCORES), "shape only": "shapes_shape"}
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["metric"] == "shapes_all"
    assert set(results["base"]["held_out"]) == set(SCORES)
    for setting in results["settings"].values():
        run, = setting["runs"]
        assert set(run["eval"]["held_out"]) == set(run["eval"]["train"]) == set(SCORES)
        # The untrained policy's evaluation first: the monitor's baseline, never the best.
        assert [e["iteration"] for e in run["evals"]] == [0, 1] and run["health"]["best_iteration"] == 1
        assert all(f"eval/{name}_mean" in run["evals"][0] for name in SCORES)
    assert (tmp_path / "curves.png").is_file() and (tmp_path / "eval_curves.png").is_file()


def test_a_zero_weighted_score_changes_no_advantage():
    """The single-attribute settings weight the other scores 0 to have them evaluated: the
    update must be the one of the attribute alone."""
    only, = (s for s in SHAPES_EXPERIMENTS["hacking"][1] if s.name == "shape only")
    weighted = load_config(SHAPES_CONFIG, list(only.overrides))
    alone = load_config(SHAPES_CONFIG, ["reward.weights={shapes_shape: 1.0}"])
    assert weighted.reward.weights == {name: float(name == "shapes_shape") for name in SCORES}
    generator = torch.Generator().manual_seed(0)
    rewards = {name: torch.randint(0, 2, (32,), generator=generator).float() for name in SCORES}
    rewards["shapes_shape"][:8] = 1.0  # a flat group
    a = advantages_of(rewards, weighted, None)
    b = advantages_of({"shapes_shape": rewards["shapes_shape"]}, alone, None)
    assert torch.equal(a.advantages, b.advantages) and a.zero_std_frac == b.zero_std_frac == 0.25


def test_monitor_table_averages_the_in_loop_evaluations_and_counts_warnings():
    reference, hacked = SHAPES_EXPERIMENTS["hacking"][1][:2]

    def run(first, last, best, fired=(), early_stop=None):
        evals = [{"iteration": 4, "eval/shapes_shape_mean": first[0], "eval/shapes_all_mean": first[1]},
                 {"iteration": 8, "eval/shapes_shape_mean": last[0], "eval/shapes_all_mean": last[1]}]
        return {"evals": evals, "trained_on": ["shapes_shape"],
                "health": {"fired": {w: {} for w in fired}, "early_stop": early_stop, "best_iteration": best}}

    results = {reference.key: [run((0.5, 0.1), (0.6, 0.2), 8)] * 2,
               hacked.key: [run((0.5, 0.1), (1.0, 0.0), 8, ["reward_hacking"]),
                            run((0.7, 0.3), (0.9, 0.1), 4, ["reward_hacking", "flat_groups"], {"iteration": 6})]}
    experiment = {"hacking": (SHAPES_EXPERIMENTS["hacking"][0], [reference, hacked])}
    lines = monitor_table(results, experiment, "shapes_all")
    assert lines[3] == ("| setting | trained on | in-loop shapes_shape | in-loop shapes_all | best evaluation: "
                        "iteration | shapes_all there | warnings |")
    assert lines[5] == "| all attributes | shapes_shape | 0.500 -> 0.600 | 0.100 -> 0.200 | 8, 8 | 0.200 | none |"
    # Seed 1's best is its first evaluation (shapes_all 0.3), seed 0's its last (0.0).
    assert lines[6] == ("| shape only | shapes_shape | 0.600 -> 0.950 | 0.200 -> 0.050 | 8, 4 | 0.150 "
                        "| flat_groups (1/2), reward_hacking (2/2), stopped early (1/2) |")


def test_the_world_comes_from_the_reward_and_its_names_are_checked(tmp_path):
    config = str(ROOT / "assets" / "configs" / "tiny_ablation.yaml")
    with pytest.raises(ValueError, match=r"--metric shapes_all: .*\['color', 'motion'\]"):
        main(["--config", config, "--metric", "shapes_all", "--output", str(tmp_path)])
    with pytest.raises(ValueError, match=r"--experiments hacking: .*'initial_noise'"):
        main(["--config", config, "--experiments", "hacking", "--output", str(tmp_path)])
    with pytest.raises(ValueError, match=r"reward.weights \['motion'\] use no reward model with ablations"):
        main(["--config", config, "--output", str(tmp_path), "reward.weights={motion: 1.0}"])
    assert not list(tmp_path.iterdir())
