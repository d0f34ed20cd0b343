import json

import numpy as np

from fastvideo_grpo.cli.plot import main
from helpers import curve_pixels, read_png


def test_plot_cli_draws_several_runs(tmp_path):
    for name, slope in (("a", 0.01), ("b", 0.02)):
        run = tmp_path / "runs" / name
        run.mkdir(parents=True)
        rows = [{"iteration": i, "reward_mean": slope * i, "reward/color": -slope * i} for i in range(30)]
        (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    output = tmp_path / "curves.png"
    main([str(tmp_path / "runs" / "a"), str(tmp_path / "runs" / "b" / "metrics.jsonl"), "--output", str(output),
          "--key", "reward/color", "--window", "5"])
    image = read_png(output)
    assert image.shape == (400, 600, 3)  # 6 x 4 inches at 100 dpi
    # Each run is one colour of the cycle; with --key reward/color run b (slope -0.02) ends
    # below run a (-0.01): at the right end its pixels sit lower in the image.
    (a_rows, a_cols), (b_rows, b_cols) = curve_pixels(image, 0), curve_pixels(image, 1)
    assert len(a_rows) > 100 and len(b_rows) > 100
    assert len(curve_pixels(image, 2)[0]) == 0  # two runs, two curves
    right = max(a_cols.max(), b_cols.max()) - 20
    assert np.mean(b_rows[b_cols >= right]) > np.mean(a_rows[a_cols >= right])
    # The same runs on reward_mean (a rises, b falls faster) give another picture.
    other = tmp_path / "mean.png"
    main([str(tmp_path / "runs" / "a"), str(tmp_path / "runs" / "b"), "--output", str(other), "--window", "5"])
    assert not np.array_equal(read_png(other), image)
