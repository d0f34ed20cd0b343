import json
import logging
import math
import re
import statistics

import pytest

from fastvideo_grpo.config import load_config
from fastvideo_grpo.cli.evaluate import compare, evaluate, main
from fastvideo_grpo.stats import delta_ci, mean_ci, t95
from fastvideo_grpo.cli.export import export
from fastvideo_grpo.training.trainer import train

from conftest import ROOT
from helpers import read_jsonl, read_png
from fastvideo_grpo.video_io import read_video

EVAL_PROMPTS = str(ROOT / "assets/prompts/tiny_eval.txt")


def read_rows(folder):
    return read_jsonl(folder / "scores.jsonl")


def test_base_model_rows_per_prompt_and_seed_deterministic(tiny_cfg, tmp_path, caplog):
    tiny_cfg.sampling.height = tiny_cfg.sampling.width = 16
    tiny_cfg.eval.batch_size = 4
    for name in ("a", "b"):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="fastvideo_grpo.training.evaluation"):
            evaluate(tiny_cfg, tmp_path / name, prompts=EVAL_PROMPTS, num_prompts=3, seeds=[0, 5], grid_prompts=2)
    # A line at the start and one per batch of 4 of the 6 samples: done/total, seconds, ETA.
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("evaluat")]
    assert len(lines) == 3, lines
    assert lines[0] == "evaluating 6 samples, 6 on each of 1 data-parallel ranks, in batches of 4"
    first = re.fullmatch(r"evaluated 4/6 samples in (\d+\.\d) s, ETA (\d+):(\d\d):(\d\d)", lines[1])
    assert first, lines[1]
    hours, minutes, seconds = map(int, first.groups()[1:])
    # The 2 samples left at the 4 done's pace (the logged seconds are rounded to 0.1).
    assert abs(3600 * hours + 60 * minutes + seconds - float(first[1]) / 4 * 2) <= 1
    assert re.fullmatch(r"evaluated 6/6 samples in \d+\.\d s, ETA 0:00:00", lines[2]), lines[2]
    rows = read_rows(tmp_path / "a")
    assert [(r["prompt_index"], r["seed"]) for r in rows] == [(p, s) for p in range(3) for s in (0, 5)]
    assert rows == read_rows(tmp_path / "b")
    assert len({r["color"] for r in rows}) == len(rows)  # seeds and prompts give different samples
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    color = summary["rewards"]["color"]
    assert color["n"] == 6
    assert color["mean"] == pytest.approx(sum(r["color"] for r in rows) / 6)
    # The grid: the first 2 prompts' seed-0 videos side by side (16 x 16 each, under
    # eval.grid_max_side), grid.png its middle frame.
    grid = read_video(tmp_path / "a" / "grid.mp4")
    assert grid.shape == (tiny_cfg.sampling.num_frames, 16, 32, 3)
    image = read_png(tmp_path / "a" / "grid.png")
    assert image.shape == (16, 32, 3)
    left, right = image[:, :16].astype(int), image[:, 16:].astype(int)
    assert abs(left - right).mean() > 1  # two prompts, two different samples
    # mp4 is lossy: its middle frame is near the PNG, not equal.
    assert abs(grid[grid.shape[0] // 2].numpy().astype(int) - image).mean() < 12


def test_mean_ci_is_the_normal_interval():
    values = [0.3, -0.1, 0.25, 0.7, 0.05, 0.41, -0.2]
    z = statistics.NormalDist().inv_cdf(0.975)
    assert z == pytest.approx(1.959963984540054)
    half = z * statistics.stdev(values) / math.sqrt(len(values))
    stats = mean_ci(values)
    assert stats["mean"] == pytest.approx(statistics.fmean(values))
    assert stats["std"] == pytest.approx(statistics.stdev(values))
    assert stats["ci95_low"] == pytest.approx(statistics.fmean(values) - half)
    assert stats["ci95_high"] == pytest.approx(statistics.fmean(values) + half)
    assert mean_ci([2.0])["ci95"] == 0.0


# Student's t_0.975 to 6 decimals (R: qt(0.975, df)).
T975 = {1: 12.706205, 2: 4.302653, 3: 3.182446, 5: 2.570582, 6: 2.446912, 7: 2.364624, 11: 2.200985, 30: 2.042272, 100: 1.983972}


def test_student_interval_of_a_few_seeds_uses_the_t_quantile():
    for df, quantile in T975.items():
        assert t95(df) == pytest.approx(quantile, abs=1e-4), df
    values = [0.1, 0.4, 0.25]
    stats = mean_ci(values, student=True)
    half = T975[2] * statistics.stdev(values) / math.sqrt(3)
    assert stats["ci95"] == pytest.approx(half, rel=1e-5)
    assert stats["ci95_high"] - stats["ci95_low"] == pytest.approx(2 * half, rel=1e-5)
    # 2.2 times the normal interval with 3 values; none with 1.
    assert stats["ci95"] / mean_ci(values)["ci95"] == pytest.approx(T975[2] / 1.959964, rel=1e-5)
    assert mean_ci([2.0], student=True)["ci95"] == 0.0


def test_compare_pairs_rows_of_the_same_prompts_and_seeds(tmp_path):
    base = [{"prompt_index": p, "seed": 0, "prompt": "x", "color": 0.1 * p} for p in range(4)]
    tuned = [{**r, "color": r["color"] + d} for r, d in zip(base, (0.2, 0.3, 0.1, 0.2))]
    for name, rows in (("base", base), ("tuned", tuned)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "scores.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    delta, paired = delta_ci(base, tuned, "color")
    assert paired
    assert delta["mean"] == pytest.approx(0.2)
    assert delta["ci95"] == pytest.approx(1.959963984540054 * statistics.stdev([0.2, 0.3, 0.1, 0.2]) / 2)
    _, paired = delta_ci(base, tuned[:3], "color")
    assert not paired
    table = compare([tmp_path / "base", tmp_path / "tuned"])
    assert "| color | tuned |" in table and "+0.2000" in table


def test_eval_in_loop_matches_checkpoint_and_diffusers_evaluation(tiny_cfg, tmp_path, caplog):
    """The in-loop evaluation after the last iteration scores the weights the final
    checkpoint holds: the CLI on that checkpoint, and on its diffusers export, gives the same numbers."""
    tiny_cfg.sampling.height = tiny_cfg.sampling.width = 16
    tiny_cfg.train.iterations = 2
    tiny_cfg.train.sample_every = 0
    tiny_cfg.eval.every = 1
    tiny_cfg.eval.prompts_file = EVAL_PROMPTS
    tiny_cfg.eval.num_prompts = 2
    tiny_cfg.eval.num_seeds = 2
    with caplog.at_level(logging.INFO, logger="fastvideo_grpo.training.evaluation"):
        out = train(tiny_cfg)
    assert not [r for r in caplog.records if r.getMessage().startswith("evaluat")]  # short: no progress lines
    logged = read_jsonl(out / "eval.jsonl")
    assert [r["iteration"] for r in logged] == [1, 2]
    assert logged[0]["eval/color_mean"] != logged[1]["eval/color_mean"]
    main(["--checkpoint", str(out / "checkpoints" / "step_2"), "--prompts", EVAL_PROMPTS, "--num-prompts", "2",
          "--seeds", "0", "1", "--name", "final"])
    summary = json.loads((out / "eval" / "final" / "summary.json").read_text())  # in the run folder by default
    assert summary["rewards"]["color"]["mean"] == pytest.approx(logged[1]["eval/color_mean"], abs=1e-6)
    assert summary["rewards"]["color"]["ci95"] == pytest.approx(logged[1]["eval/color_ci95"], abs=1e-6)
    export(out / "checkpoints" / "step_2", tmp_path / "exported")
    main(["--config", str(out / "config.yaml"), "--diffusers", str(tmp_path / "exported"), "--prompts", EVAL_PROMPTS,
          "--num-prompts", "2", "--seeds", "0", "1", "--output-dir", str(tmp_path / "eval")])
    assert read_rows(tmp_path / "eval" / "exported") == read_rows(out / "eval" / "final")


def test_two_ranks_split_prompts_in_loop_and_standalone(tmp_path):
    """In-loop evaluation under 2-rank FSDP (3 prompts: one rank pads) and the CLI on 2
    ranks both give the 1-rank CLI's scores for the same checkpoint."""
    from helpers import run

    out = tmp_path / "run"
    common = ["--config", ROOT / "assets/configs/tiny_t2v.yaml"]
    run(["-m", "fastvideo_grpo.train", *common, f"train.output_dir={out}", "train.iterations=1",
         "train.sample_every=0", "train.progress_bar=false", "sampling.height=16", "sampling.width=16",
         "train.prompts_per_iteration=1", "eval.every=1", f"eval.prompts_file={EVAL_PROMPTS}", "eval.num_prompts=3"],
        nproc=2)
    in_loop = json.loads((out / "eval.jsonl").read_text())
    args = ["-m", "fastvideo_grpo.evaluate", "--checkpoint", out / "checkpoints" / "step_1", "--prompts", EVAL_PROMPTS,
            "--num-prompts", "3", "--output-dir", tmp_path / "eval"]
    run([*args, "--name", "two"], nproc=2)
    evaluate(load_config(out / "config.yaml"), tmp_path / "eval" / "one", checkpoint=str(out / "checkpoints" / "step_1"),
             prompts=EVAL_PROMPTS, num_prompts=3)
    one, two = read_rows(tmp_path / "eval" / "one"), read_rows(tmp_path / "eval" / "two")
    assert [r["prompt_index"] for r in two] == [0, 1, 2]
    assert two == one
    assert in_loop["eval/color_mean"] == pytest.approx(sum(r["color"] for r in one) / 3, abs=1e-5)


def test_shrunk_grid_video_is_the_mean_of_pixel_blocks():
    import torch

    from fastvideo_grpo.training.outputs import shrink_video

    video = torch.randint(0, 256, (2, 7, 10, 3), dtype=torch.uint8)
    assert shrink_video(video, 10) is video and shrink_video(video, 0) is video
    shrunk = shrink_video(video, 4)  # 10 / 4 -> a factor of 3: 7 x 10 -> 2 x 3, the rest cropped
    blocks = video[:, :6, :9].double().reshape(2, 2, 3, 3, 3, 3).mean(dim=(2, 4))
    assert shrunk.dtype == torch.uint8 and shrunk.shape == (2, 2, 3, 3)
    assert torch.equal(shrunk, blocks.round().to(torch.uint8))


def test_two_rank_evaluation_writes_the_one_rank_grid_and_only_the_writer_gets_videos(tmp_path):
    """Rank 1 samples prompt 1 of the grid; it sends that video to rank 0, which writes the
    grid, and receives no video of any other rank."""
    import imageio.v3 as iio
    import numpy as np

    from helpers import DIST, run

    args = ["--config", ROOT / "assets/configs/tiny_t2v.yaml", "--prompts", EVAL_PROMPTS, "--num-prompts", "3",
            "--grid", "3", "--output-dir", tmp_path, "sampling.height=32", "sampling.width=32", "eval.grid_max_side=16"]
    for name, nproc in (("one", None), ("two", 2)):
        run([DIST / "eval_grid.py", tmp_path / f"{name}_report", *args, "--name", name], nproc=nproc)
    received = {rank: read_jsonl(tmp_path / "two_report" / f"rank{rank}.json")[0]["videos_received"] for rank in (0, 1)}
    assert received == {0: 1, 1: 0}
    assert read_rows(tmp_path / "one") == read_rows(tmp_path / "two")
    one, two = (iio.imread(tmp_path / name / "grid.mp4", index=None) for name in ("one", "two"))
    assert one.shape[1:] == (2 * 16, 2 * 16, 3)  # 3 prompts tile 2 x 2, each shrunk from 32 to 16 pixels
    np.testing.assert_array_equal(one, two)
    np.testing.assert_array_equal(iio.imread(tmp_path / "one" / "grid.png"), iio.imread(tmp_path / "two" / "grid.png"))
