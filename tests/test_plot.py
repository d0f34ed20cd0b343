import json

from fastvideo_grpo.plot import main


def test_plot_cli_draws_several_runs(tmp_path):
    for name, slope in (("a", 0.01), ("b", 0.02)):
        run = tmp_path / "runs" / name
        run.mkdir(parents=True)
        rows = [{"iteration": i, "reward_mean": slope * i, "reward/color": -slope * i} for i in range(30)]
        (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    output = tmp_path / "curves.png"
    main([str(tmp_path / "runs" / "a"), str(tmp_path / "runs" / "b" / "metrics.jsonl"), "--output", str(output),
          "--key", "reward/color", "--window", "5"])
    assert output.read_bytes()[:4] == b"\x89PNG"
