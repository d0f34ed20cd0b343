import itertools

import numpy as np
import pytest
import torch

from fastvideo_grpo.config import RewardConfig
from fastvideo_grpo.rewards import REGISTRY, RewardError, build_scorer, with_all_scores
from fastvideo_grpo.shapes.detect import SCORES, detect, score_scene, shapes_scores
from fastvideo_grpo.shapes.vae import pool_latents, shapes_vae
from fastvideo_grpo.shapes.world import (COLORS, DIRECTIONS, HELD_OUT, NUM_FRAMES, POSITIONS, SHAPES, SIZE, Scene,
                                         all_scenes, parse_caption, render, sample_scenes, split_scenes)


def test_every_caption_parses_back_to_its_scene():
    scenes = all_scenes()
    # 3 counts x 6 colours x 3 shapes x (4 moving + 5 still + 20 placed and moving) forms
    assert len(scenes) == len(set(scenes)) == 54 * 29
    for scene in scenes:
        assert parse_caption(scene.caption()) == scene
    assert Scene(2, "red", "square", None, "left").caption() == "two red squares moving left"
    assert Scene(1, "blue", "circle", "top", None).caption() == "a blue circle at the top, still"
    assert Scene(3, "white", "triangle", "center", "up").caption() == "three white triangles at the center moving up"


@pytest.mark.parametrize("caption, problem", [
    ("a red squares moving left", "'a' takes the singular shape"),
    ("two red square moving left", "'two' takes the plural shape"),
    ("a red box moving left", "shape 'box'"),
    ("an orange circle moving up", "in none of the forms"),
    ("a orange circle moving up", "colour 'orange'"),
    ("a red circle at the top", "in none of the forms"),
    ("a red circle, still", "a still group needs 'at the {position}'"),
    ("a red circle at the middle, still", "position 'middle'"),
    ("a red circle moving sideways", "direction 'sideways'"),
])
def test_a_caption_outside_the_forms_is_named_with_what_is_wrong(caption, problem):
    with pytest.raises(ValueError) as e:
        parse_caption(caption)
    message = str(e.value)
    assert "\n" not in message and repr(caption) in message and problem in message


def test_held_out_triples_never_reach_pretraining_but_their_pairs_do():
    train, held = split_scenes(held_out=False), split_scenes(held_out=True)
    assert {s.triple for s in held} == HELD_OUT and not {s.triple for s in train} & HELD_OUT
    assert len(train) + len(held) == len(all_scenes())
    seen = {s.triple for s in train}
    for color, shape, count in HELD_OUT:
        assert any(c == color and s == shape for c, s, _ in seen)
        assert any(c == color and n == count for c, _, n in seen)
        assert any(s == shape and n == count for _, s, n in seen)


def test_rendering_is_seeded():
    scene = Scene(3, "green", "triangle", None, "down")
    video = render(scene, 7)
    assert video.shape == (NUM_FRAMES, SIZE, SIZE, 3) and video.dtype == np.uint8
    assert np.array_equal(video, render(scene, 7)) and not np.array_equal(video, render(scene, 8))


def detector_accuracy(videos, scenes):
    totals = dict.fromkeys(SCORES, 0.0)
    for video, scene in zip(videos, scenes):
        for name, value in score_scene(detect(video), scene).items():
            totals[name] += value
    return {name: total / len(scenes) for name, total in totals.items()}


def test_detector_reads_generated_videos_at_least_98_percent_right():
    """300 seeded scenes of every form (3 s on idle cores, 20 s on busy ones)."""
    scenes = sample_scenes(all_scenes(), 300, seed=0)
    videos = [torch.from_numpy(render(s, i)) for i, s in enumerate(scenes)]
    accuracy = detector_accuracy(videos, scenes)
    assert all(value >= 0.98 for value in accuracy.values()), accuracy


def wrong(scene: Scene, attribute: str) -> Scene:
    """The scene with one attribute changed to another value."""
    options = {"color": list(COLORS), "shape": list(SHAPES), "count": [1, 2, 3], "position": list(POSITIONS),
               "direction": [None, *DIRECTIONS]}[attribute]
    value = getattr(scene, attribute)
    return Scene(**{**scene.__dict__, attribute: options[(options.index(value) + 1) % len(options)]})


@pytest.mark.parametrize("attribute, score", [("color", "shapes_color"), ("shape", "shapes_shape"),
                                              ("count", "shapes_count"), ("position", "shapes_position"),
                                              ("direction", "shapes_motion")])
def test_a_video_with_one_attribute_wrong_scores_0_there_and_1_elsewhere(attribute, score):
    scenes = [Scene(c, col, sh, pos, d) for (c, col, sh), pos, d in zip(
        itertools.product([1, 2, 3], ["red", "blue", "white"], SHAPES), itertools.cycle(POSITIONS),
        itertools.cycle([None, "left", "up", "right", "down"]))]
    videos = torch.stack([torch.from_numpy(render(wrong(s, attribute), i)) for i, s in enumerate(scenes)])
    scores = shapes_scores(videos, [s.caption() for s in scenes])
    assert scores[score].tolist() == [0.0] * len(scenes)
    assert scores["shapes_all"].tolist() == [0.0] * len(scenes)
    for other in set(SCORES) - {score, "shapes_all"}:
        assert scores[other].mean().item() >= 0.95, other


def test_an_empty_video_scores_0():
    video = torch.from_numpy(render(Scene(1, "red", "circle", "top", None), 0))
    video[:] = video[0, 0, 0]  # the background alone
    scores = shapes_scores(video[None], ["a red circle at the top, still"])
    assert {name: value.tolist() for name, value in scores.items()} == {name: [0.0] for name in SCORES}


def test_one_registry_entry_gives_all_six_scores_and_names_a_caption_it_cannot_parse():
    assert REGISTRY["shapes"].scores == SCORES
    cfg = with_all_scores(RewardConfig(weights={"shapes_all": 1.0}))
    assert cfg.weights == {"shapes_all": 1.0, **{s: 0.0 for s in SCORES if s != "shapes_all"}}
    scorer = build_scorer(cfg)
    scene = Scene(2, "yellow", "square", "left", "down")
    videos = torch.from_numpy(render(scene, 3))[None]
    assert {k: v.tolist() for k, v in scorer(videos, [scene.caption()]).items()} == {s: [1.0] for s in SCORES}
    with pytest.raises(RewardError) as e:
        scorer(videos, ["a yellow squares moving down"])
    assert "\n" not in str(e.value) and "'a yellow squares moving down'" in str(e.value)


def test_the_vae_encodes_by_pooling_and_decodes_what_the_detector_reads():
    scenes = [Scene(1, "purple", "triangle", "right", None), Scene(3, "green", "square", None, "left"),
              Scene(2, "white", "circle", "bottom", "up")]
    videos = torch.stack([torch.from_numpy(render(s, i)) for i, s in enumerate(scenes)])
    vae = shapes_vae()
    pixels = videos.permute(0, 4, 1, 2, 3).float() / 127.5 - 1.0
    with torch.no_grad():
        latents = vae.encode(pixels).latent_dist.sample()
        decoded = vae.decode(latents).sample
    assert latents.shape == (3, 3, 3, SIZE // 2, SIZE // 2)
    torch.testing.assert_close(latents, pool_latents(videos), atol=1e-3, rtol=0)
    # Frame 0 is only pooled over 2x2 pixels: a still object's interior comes back exactly.
    assert (decoded[0] - pixels[0]).abs().amax(dim=0)[0].median() < 1e-2
    frames = ((decoded.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 4, 1)
    assert detector_accuracy(frames, scenes)["shapes_all"] == 1.0


def test_the_reward_process_gives_the_same_six_scores_as_inline():
    from fastvideo_grpo.rewards.process import start_reward_process
    from fastvideo_grpo.rewards.scorers import ServiceScorer

    cfg = with_all_scores(RewardConfig(weights={"shapes_color": 1.0}, timeout_s=60))
    scenes = [Scene(1, "red", "circle", "top", None), Scene(2, "blue", "triangle", None, "up")]
    videos = torch.stack([torch.from_numpy(render(s, 0)) for s in scenes])
    videos[1] = torch.from_numpy(render(wrong(scenes[1], "count"), 0))
    captions = [s.caption() for s in scenes]
    process, address = start_reward_process(cfg)
    scorer = ServiceScorer(cfg, address, process)
    try:
        served = scorer.result(scorer.submit(videos, captions))
    finally:
        scorer.close()
    inline = build_scorer(cfg)(videos, captions)
    assert {k: v.tolist() for k, v in served.items()} == {k: v.tolist() for k, v in inline.items()}
    assert served["shapes_count"].tolist() == [1.0, 0.0] and served["shapes_all"].tolist() == [1.0, 0.0]


def test_the_shipped_model_loads_and_scores_what_its_card_says(tmp_path):
    """assets/shapes_model/heldout_check.json: the first held-out prompts' scores, as
    assets/shapes_model/README.md reports them (8 samples, a few seconds)."""
    import json

    from conftest import ROOT
    from fastvideo_grpo.config import load_config
    from fastvideo_grpo.cli.evaluate import evaluate

    folder = ROOT / "assets/shapes_model"
    check = json.loads((folder / "heldout_check.json").read_text())
    cfg = load_config(ROOT / "assets/configs/shapes_t2v.yaml", [
        f"model.path={folder}", "reward.weights={shapes_all: 1.0}", f"train.output_dir={tmp_path / 'run'}"])
    summary = evaluate(cfg, tmp_path / "eval", diffusers_path=str(folder), prompts=str(ROOT / check["prompts"]),
                       num_prompts=check["num_prompts"], seeds=check["seeds"], grid_prompts=0)
    assert {name: summary["rewards"][name]["mean"] for name in SCORES} == check["means"]


def test_before_after_stacks_the_two_grids_and_reports_both_accuracies(tmp_path):
    import json

    import imageio

    from fastvideo_grpo.shapes.before_after import GAP, SCALE, before_after

    for name, value, mean in (("before", 10, 0.25), ("after", 200, 0.5)):
        folder = tmp_path / "eval" / name
        folder.mkdir(parents=True)
        imageio.imwrite(folder / "grid.png", np.full((8, 16, 3), value, dtype=np.uint8))
        (folder / "summary.json").write_text(json.dumps({"rewards": {"shapes_all": {"mean": mean}}}))
    assert before_after(tmp_path) == {"shapes_all": (0.25, 0.5)}
    picture = imageio.imread(tmp_path / "before_after.png")[::SCALE, ::SCALE]
    assert picture.shape == (16 + GAP, 16, 3)
    assert (picture[:8] == 10).all() and (picture[8 + GAP:] == 200).all()
    (tmp_path / "eval" / "after" / "grid.png").unlink()
    with pytest.raises(FileNotFoundError, match="after/grid.png does not exist"):
        before_after(tmp_path)


def test_a_run_whose_text_encoder_differs_from_the_shipped_models_is_refused():
    from conftest import ROOT
    from fastvideo_grpo.config import ConfigError, load_config
    from fastvideo_grpo.data.sources import build_prompt_source
    from fastvideo_grpo.models.hunyuan_video.policy import build_hunyuan_video

    overrides = [f"model.path={ROOT / 'assets/shapes_model'}",
                 f"data.prompts_file={ROOT / 'assets/prompts/shapes_rl.txt'}"]
    cfg = load_config(ROOT / "assets/configs/shapes_t2v.yaml", overrides)
    assert len(build_prompt_source(cfg)) == 48
    for key, value in (("data.max_text_tokens", 16), ("model.init_seed", 1), ("model.tiny_text_dim", 16)):
        bad = load_config(ROOT / "assets/configs/shapes_t2v.yaml", [*overrides, f"{key}={value}"])
        with pytest.raises(ConfigError, match=rf"{key}={value} does not match .*text_encoder.json"):
            build_prompt_source(bad)
    with pytest.raises(ConfigError, match=r"model.tiny_pooled_dim=8 does not match .*takes 32-dim"):
        build_hunyuan_video(cfg.model, torch.device("cpu"), 32, 8)


def test_the_demo_script_evaluates_trains_with_nft_and_compares_and_a_rerun_reuses_the_run(tmp_path):
    """`make demo`'s script, shortened: before, one NFT iteration, after, the before/after grid;
    run again, it resumes the finished run (nothing to train) instead of refusing the folder."""
    import json
    import os
    import subprocess
    import sys

    from conftest import ROOT
    from fastvideo_grpo.config import load_config

    held_out = tmp_path / "held_out.txt"
    held_out.write_text("".join(line + "\n" for line in (ROOT / "assets/prompts/shapes_heldout.txt")
                                .read_text().splitlines()[:2]))
    out = tmp_path / "demo"
    env = {**os.environ, "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}",
           "OUTPUT_DIR": str(out), "HELD_OUT": str(held_out), "OMP_NUM_THREADS": "1"}
    short = ["train.iterations=1", "train.prompts_per_iteration=1", "sampling.group_size=2", "policy_update.best_of=2",
             "sampling.rollout_batch_size=2", "eval.every=0", "train.progress_bar=false"]
    for _ in range(2):
        result = subprocess.run(["bash", "train_scripts/train_shapes_cpu.sh", *short], cwd=ROOT, env=env,
                                capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        assert "shapes_all:" in result.stdout + result.stderr
    assert load_config(out / "config.yaml").train.algorithm == "nft"
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1
    for name in ("before", "after"):
        summary = json.loads((out / "eval" / name / "summary.json").read_text())
        assert set(summary["rewards"]) == set(SCORES) and summary["rewards"]["shapes_all"]["n"] == 4
    assert (out / "before_after.png").is_file() and (out / "reward_curve.png").is_file()
