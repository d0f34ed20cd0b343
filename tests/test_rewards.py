import sys

import numpy as np
import pytest
import torch

from conftest import ROOT
from fastvideo_grpo.config import ConfigError, RewardConfig, load_config
from fastvideo_grpo.rewards import (REGISTRY, RewardError, RewardModel, build_scorer, check_reward_config,
                                    register_reward, rule_reward)
from fastvideo_grpo.rewards.rules import color_reward, motion_reward


def solid_video(rgb, frames=3, size=4):
    return torch.tensor(rgb, dtype=torch.uint8).view(1, 1, 1, 1, 3).expand(1, frames, size, size, 3).clone()


def test_color_reward_depends_on_the_prompt():
    red = solid_video([230, 20, 20])
    assert color_reward(red, ["a red car"]).item() == pytest.approx(1.0, abs=1e-3)
    assert color_reward(red, ["a cyan car"]).item() == pytest.approx(-1.0, abs=1e-3)
    # chroma of (0.9, 0.5, 0.5) vs red's: cosine of identical directions
    pinkish = solid_video([230, 128, 128])
    assert color_reward(pinkish, ["a red car"]).item() == pytest.approx(1.0, abs=1e-3)
    # green vs red: chroma (-1/3, 2/3, -1/3) . (2/3, -1/3, -1/3) / (|.|^2 = 2/3) = -1/2
    green = solid_video([0, 255, 0])
    assert color_reward(green, ["a red car"]).item() == pytest.approx(-0.5, abs=1e-3)


def test_color_reward_without_colour_word_is_an_error():
    with pytest.raises(ValueError, match="a plain car"):
        color_reward(solid_video([1, 2, 3]), ["a plain car"])


def test_motion_reward_counts_frame_differences_and_still_prompts():
    video = torch.zeros(2, 3, 4, 4, 3, dtype=torch.uint8)
    video[:, 1] = 255  # frame 0 -> 1 changes fully, 1 -> 2 changes fully
    scores = motion_reward(video, ["a car racing", "a still lake"])
    assert scores.tolist() == [1.0, -1.0]


def test_scorer_applies_binary_threshold_and_checks_input():
    scorer = build_scorer(RewardConfig(weights={"color": 1.0, "motion": 0.5}, binary_thresholds={"color": 0.5}))
    videos = torch.cat([solid_video([230, 20, 20]), solid_video([20, 20, 230])])
    scores = scorer(videos, ["a red car", "a red car"])
    assert scores["color"].tolist() == [1.0, 0.0]
    assert scores["motion"].tolist() == [0.0, 0.0]
    with pytest.raises(ValueError, match="uint8"):
        scorer(videos.float(), ["a", "b"])
    with pytest.raises(ValueError, match="2 videos but 1 prompts"):
        scorer(videos, ["a red car"])


def test_unknown_reward_is_named():
    with pytest.raises(ConfigError, match=r"reward.weights.aesthetic: unknown reward; available: \[.*'hps'.*"
                                          r"'videoalign_vq'"):
        build_scorer(RewardConfig(weights={"aesthetic": 1.0}))


def reward_cfg(*overrides) -> RewardConfig:
    return load_config(ROOT / "assets/configs/tiny_t2v.yaml", list(overrides)).reward


def test_a_reward_section_names_its_unknown_keys_and_bad_values():
    cfg = reward_cfg("reward.weights={videoalign_vq: 1.0}", "reward.models.videoalign={path: /v, base: /b, foo: 1}")
    with pytest.raises(ConfigError, match=r"^unknown config key 'reward.models.videoalign.foo'; "
                                          r"allowed: \['base', 'dtype', 'path', 'use_norm'\]$"):
        check_reward_config(cfg)
    with pytest.raises(ConfigError, match=r"reward.models.videoalign.dtype: 'fp16' is not one of \['bf16', 'fp32'\]"):
        check_reward_config(reward_cfg("reward.models.videoalign.dtype=fp16"))
    with pytest.raises(ConfigError, match=r"^reward.models.colour: no reward model of that name takes a section; "
                                          r"those that do: \['clip', 'hps', 'pickscore', 'videoalign', 'vlm_judge', 'vlm_pairwise'\]$"):
        check_reward_config(reward_cfg("reward.models.colour.path=/x"))


def test_a_required_path_is_named_when_its_reward_is_used():
    with pytest.raises(ConfigError, match=r"^reward.models.hps.path: '' is invalid; expected a value, required when "
                                          r"reward.weights uses \['hps'\]$"):
        check_reward_config(reward_cfg("reward.weights={hps: 1.0}"))
    with pytest.raises(ConfigError, match=r"^reward.models.videoalign.base: .*uses \['videoalign_mq'\]$"):
        check_reward_config(reward_cfg("reward.weights={videoalign_mq: 1.0}", "reward.models.videoalign.path=/v"))
    # The tiny config scores colour: a placeholder section of an unused model is fine, its keys still checked.
    check_reward_config(reward_cfg("reward.models.hps.path=''"))
    with pytest.raises(ConfigError, match="'reward.models.hps.modle'"):
        check_reward_config(reward_cfg("reward.models.hps.modle=ViT-H-14"))


def test_a_name_or_score_is_registered_once():
    with pytest.raises(ValueError, match="reward model 'color' is already registered"):
        register_reward(rule_reward("color", color_reward))
    with pytest.raises(ValueError, match=r"'my_videoalign': scores \['videoalign_mq'\] are already provided by "
                                         r"\['videoalign'\]"):
        register_reward(RewardModel("my_videoalign", ("videoalign_mq",), lambda cfg, section: None))
    assert "my_videoalign" not in REGISTRY


EXPECTED = r"; expected a torch.Tensor of shape \[2\], one score per sample$"


@pytest.mark.parametrize("returned, error", [
    (torch.zeros(3), r"score 'bad' has shape \[3\]" + EXPECTED),
    (torch.zeros(2, 1), r"score 'bad' has shape \[2, 1\]" + EXPECTED),
    (torch.zeros(()), r"score 'bad' has shape \[\]" + EXPECTED),
    (np.zeros(2), r"score 'bad' is a numpy.ndarray \(torch.from_numpy converts an array\)" + EXPECTED),
    ([0.0, 1.0], r"score 'bad' is a list" + EXPECTED),
    (torch.zeros(2, dtype=torch.complex64), r"score 'bad' is torch.complex64; expected real numbers$"),
])
def test_a_score_of_the_wrong_type_or_shape_is_one_line_naming_the_reward(monkeypatch, returned, error):
    monkeypatch.setitem(REGISTRY, "bad", rule_reward("bad", lambda videos, prompts: returned))
    scorer = build_scorer(RewardConfig(weights={"bad": 1.0}))
    with pytest.raises(RewardError, match=r"^reward 'bad' on a batch: " + error) as e:
        scorer(torch.zeros(2, 1, 4, 4, 3, dtype=torch.uint8), ["a", "b"])
    assert "\n" not in str(e.value)


def test_a_model_returning_no_dict_or_not_its_score_names_the_model(monkeypatch):
    monkeypatch.setitem(REGISTRY, "bad", RewardModel("bad", ("bad",), lambda cfg, section: lambda v, p: 1.0))
    with pytest.raises(RewardError, match=r"^reward 'bad' on a batch: returned a float; expected a dict"):
        build_scorer(RewardConfig(weights={"bad": 1.0}))(torch.zeros(2, 1, 4, 4, 3, dtype=torch.uint8), ["a", "b"])
    monkeypatch.setitem(REGISTRY, "bad", RewardModel("bad", ("bad",), lambda cfg, section: lambda v, p: {"b": 1}))
    with pytest.raises(RewardError, match=r"^reward 'bad' on a batch: returned no score 'bad' \(it returned \['b'\]\)"):
        build_scorer(RewardConfig(weights={"bad": 1.0}))(torch.zeros(2, 1, 4, 4, 3, dtype=torch.uint8), ["a", "b"])


def test_a_score_that_requires_grad_is_detached_and_integers_become_floats(monkeypatch):
    weight = torch.ones((), requires_grad=True)
    monkeypatch.setitem(REGISTRY, "grad", rule_reward("grad", lambda videos, prompts: videos.float().mean((1, 2, 3, 4)) * weight))
    monkeypatch.setitem(REGISTRY, "count", rule_reward("count", lambda videos, prompts: torch.tensor([1, 2])))
    scores = build_scorer(RewardConfig(weights={"grad": 1.0, "count": 1.0}))(
        torch.full((2, 1, 4, 4, 3), 7, dtype=torch.uint8), ["a", "b"])
    assert not scores["grad"].requires_grad and scores["grad"].tolist() == [7.0, 7.0]
    assert scores["count"].dtype == torch.float32 and scores["count"].tolist() == [1.0, 2.0]


PLUGIN = """
from dataclasses import dataclass

from fastvideo_grpo.rewards import RewardModel, register_reward


@dataclass
class BrightnessConfig:
    scale: float
    offset: float = 0.0


def build(cfg, section):
    def score(videos, prompts):
        mean = videos.float().mean(dim=(1, 2, 3, 4)) / 255
        return {"bright": section.scale * mean + section.offset, "dark": 1 - mean}
    return score


register_reward(RewardModel("brightness", ("bright", "dark"), build, BrightnessConfig))
"""


@pytest.fixture
def registry_restored():
    """The registry as it was, and plugin files forgotten: a test's plugin leaves nothing behind."""
    saved = dict(REGISTRY)
    yield
    REGISTRY.clear()
    REGISTRY.update(saved)
    for name in [n for n in sys.modules if n.startswith("reward_plugin:")]:
        del sys.modules[name]


def test_a_plugin_file_registers_a_reward_the_scorer_uses(tmp_path, registry_restored):
    plugin = tmp_path / "brightness.py"
    plugin.write_text(PLUGIN)
    cfg = reward_cfg(f"reward.plugins=[{plugin}]", "reward.weights={bright: 1.0, color: 1.0}",
                     "reward.models.brightness={scale: 2, offset: 0.5}")
    check_reward_config(cfg)  # imports the plugin; the scorer finds it imported
    videos = torch.cat([solid_video([0, 0, 0]), solid_video([255, 255, 255])])
    scores = build_scorer(cfg)(videos, ["a red car", "a red car"])
    assert list(scores) == ["bright", "color"]  # 'dark' is not in reward.weights
    assert scores["bright"].tolist() == [0.5, 2.5]
    with pytest.raises(ConfigError, match=r"^reward.models.brightness.scale: '' is invalid; .*\['dark'\]$"):
        check_reward_config(RewardConfig(weights={"dark": 1.0}, plugins=[str(plugin)]))


def test_a_missing_plugin_is_named(tmp_path):
    missing = tmp_path / "nowhere.py"
    with pytest.raises(ConfigError, match=rf"^reward.plugins\[1\]: importing '{missing}' failed: FileNotFoundError: "
                                          r".*does not exist"):
        check_reward_config(RewardConfig(weights={"color": 1.0}, plugins=["fastvideo_grpo.rewards.rules", str(missing)]))
    with pytest.raises(ConfigError, match=r"^reward.plugins\[0\]: importing 'no_such_rewards' failed: "
                                          r"ModuleNotFoundError: No module named 'no_such_rewards'$"):
        check_reward_config(RewardConfig(weights={"color": 1.0}, plugins=["no_such_rewards"]))


def test_clip_score_is_the_cosine_of_normalised_features(tmp_path):
    import numpy as np

    from helpers import CLIP_MEAN, CLIP_STD, tiny_clip

    model, tok = tiny_clip(tmp_path, tmp_path)
    scorer = build_scorer(RewardConfig(weights={"clip": 1.0}, models={"clip": {"path": str(tmp_path)}}, frame_stride=2))
    videos = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (2, 4, 32, 32, 3), dtype=np.uint8))
    prompts = ["a red ball", "a blue wave"]
    scores = scorer(videos, prompts)["clip"]

    # By hand: frames 0 and 2, scaled to [0, 1] and standardised (32x32 needs no resize).
    frames = videos[:, ::2].float() / 255
    pixels = ((frames - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)).permute(0, 1, 4, 2, 3).flatten(0, 1)
    with torch.no_grad():
        image = model.get_image_features(pixel_values=pixels).pooler_output
        ids = tok(prompts, padding=True, return_tensors="pt")
        text = model.get_text_features(**ids).pooler_output
    image = image / image.norm(dim=-1, keepdim=True)
    text = text / text.norm(dim=-1, keepdim=True)
    expected = torch.stack([(image[2 * b:2 * b + 2] @ text[b]).mean() for b in range(2)])
    torch.testing.assert_close(scores, expected, rtol=1e-4, atol=1e-5)
    assert scores.abs().max() <= 1.0


@pytest.fixture
def tiny_hps(tmp_path):
    import json

    import open_clip

    config = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 8,
                                              "patch_size": 8},
              "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 4, "layers": 1}}
    (tmp_path / "tiny-hps-test.json").write_text(json.dumps(config))
    open_clip.add_model_config(tmp_path / "tiny-hps-test.json")
    torch.manual_seed(0)
    model = open_clip.create_model("tiny-hps-test", pretrained=None)
    torch.save({"state_dict": model.state_dict()}, tmp_path / "HPS_v2.1_compressed.pt")
    return model, tmp_path / "HPS_v2.1_compressed.pt"


def test_hps_pads_a_wide_image_instead_of_cropping(tiny_hps):
    from fastvideo_grpo.rewards.hps import OPENAI_MEAN, OPENAI_STD, pad_to_square

    frame = torch.full((1, 16, 32, 3), 255, dtype=torch.uint8)  # 2:1, white
    x = pad_to_square(frame, 32)
    white = (1 - torch.tensor(OPENAI_MEAN)) / torch.tensor(OPENAI_STD)
    black = -torch.tensor(OPENAI_MEAN) / torch.tensor(OPENAI_STD)
    assert x.shape == (1, 3, 32, 32)
    torch.testing.assert_close(x[0, :, 8:24].mean(dim=(1, 2)), white)  # the image, whole, in the middle
    torch.testing.assert_close(x[0, :, :8].mean(dim=(1, 2)), black)  # zero padding above and below
    torch.testing.assert_close(x[0, :, 24:].mean(dim=(1, 2)), black)


def test_hps_preprocessing_keeps_the_bicubic_overshoot_as_hpsv2():
    """torchvision's antialiased bicubic resize of the [0, 1] image, centred zero padding,
    OpenAI normalisation; no clamp, so sharp edges overshoot [0, 1] as in hpsv2 1.2.0."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF

    from fastvideo_grpo.rewards.hps import OPENAI_MEAN, OPENAI_STD, pad_to_square

    frame = torch.zeros(1, 15, 30, 3, dtype=torch.uint8)  # upscaled to 20x40
    frame[:, :, 15:] = 255  # a hard edge: bicubic rings on both sides of it
    ours = pad_to_square(frame, 40)
    image = frame.permute(0, 3, 1, 2).float() / 255
    resized = TF.resize(image, [20, 40], interpolation=InterpolationMode.BICUBIC, antialias=True)
    assert resized.min() < -0.01 and resized.max() > 1.01  # the overshoot the clamp used to remove
    padded = torch.zeros(1, 3, 40, 40)
    padded[:, :, 10:30] = resized
    expected = TF.normalize(padded, OPENAI_MEAN, OPENAI_STD)
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-5)


def test_hps_score_is_the_cosine_of_normalised_features(tiny_hps):
    import numpy as np
    import open_clip

    from fastvideo_grpo.rewards.hps import pad_to_square

    model, path = tiny_hps
    scorer = build_scorer(RewardConfig(weights={"hps": 1.0}, frame_stride=3,
                                       models={"hps": {"path": str(path), "model": "tiny-hps-test"}}))
    videos = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (2, 6, 32, 32, 3), dtype=np.uint8))
    prompts = ["a red ball", "a cat"]
    scores = scorer(videos, prompts)["hps"]
    with torch.no_grad():
        image = model.encode_image(pad_to_square(videos[:, ::3].flatten(0, 1), 32))
        text = model.encode_text(open_clip.get_tokenizer("tiny-hps-test")(prompts))
    image, text = image / image.norm(dim=-1, keepdim=True), text / text.norm(dim=-1, keepdim=True)
    expected = torch.stack([(image[2 * b:2 * b + 2] @ text[b]).mean() for b in range(2)])
    torch.testing.assert_close(scores, expected, rtol=1e-5, atol=1e-6)


def test_mp4_round_trip_in_memory():
    from helpers import decode_mp4, encode_mp4

    frames = torch.zeros(6, 32, 48, 3, dtype=torch.uint8)
    frames[:, :, :24, 0] = 200  # left half red, right half black
    frames[3:, 8:24, 30:40, 1] = 255  # a green square appears at frame 3
    video, fps = decode_mp4(encode_mp4(frames, fps=8))
    assert video.shape == frames.shape and video.dtype == torch.uint8 and fps == 8.0
    # lossy, but the content survives: mean absolute error of a few grey levels
    assert (video.float() - frames.float()).abs().mean() < 6
    assert video[4, 16, 35, 1] > 200 and video[1, 16, 35, 1] < 50


def test_training_on_an_inline_score_that_requires_grad(tiny_cfg):
    from conftest import REWARD_PLUGINS
    from fastvideo_grpo.training.trainer import train
    from helpers import read_jsonl

    tiny_cfg.reward.weights, tiny_cfg.reward.plugins = {"test_grad": 1.0}, [REWARD_PLUGINS]
    tiny_cfg.train.iterations, tiny_cfg.train.sample_every = 1, 0
    train(tiny_cfg)
    assert len(read_jsonl(f"{tiny_cfg.train.output_dir}/metrics.jsonl")) == 1
