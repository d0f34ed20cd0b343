import numpy as np
import pytest
import torch

from fastvideo_grpo.config import ConfigError, RewardConfig
from fastvideo_grpo.rewards import build_scorer, check_reward_config
from helpers import CLIP_MEAN, CLIP_STD, tiny_clip

MEAN, STD = CLIP_MEAN, CLIP_STD


@pytest.fixture
def tiny_pickscore(tmp_path):
    """A random tiny CLIP in tmp/model, its tokenizer and image processor in tmp/processor
    (PickScore_v1 and the CLIP-H processor come as two folders too); a logit scale that is
    not CLIP's initial 1/0.07, so that the test sees it."""
    model, tok = tiny_clip(tmp_path / "model", tmp_path / "processor", logit_scale=50.0)
    return model, tok, tmp_path


def test_pickscore_is_the_scaled_cosine_averaged_over_frames(tiny_pickscore):
    model, tok, folder = tiny_pickscore
    cfg = RewardConfig(weights={"pickscore": 1.0}, models={"pickscore": {
        "path": str(folder / "model"), "processor_path": str(folder / "processor"), "frames": 3}})
    check_reward_config(cfg)
    videos = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (2, 5, 32, 32, 3), dtype=np.uint8))
    prompts = ["a red ball", "a blue wave"]
    scores = build_scorer(cfg)(videos, prompts)["pickscore"]

    # By hand: frames 0, 2, 4 (3 of 5, evenly spaced), scaled to [0, 1] and standardised
    # (32x32 needs no resize or crop), normalised features, 50 * cosine, the frames' mean.
    frames = videos[:, [0, 2, 4]].float() / 255
    pixels = ((frames - torch.tensor(MEAN)) / torch.tensor(STD)).permute(0, 1, 4, 2, 3).flatten(0, 1)
    with torch.no_grad():
        image = model.get_image_features(pixel_values=pixels).pooler_output
        text = model.get_text_features(**tok(prompts, padding=True, return_tensors="pt")).pooler_output
    image = image / image.norm(dim=-1, keepdim=True)
    text = text / text.norm(dim=-1, keepdim=True)
    expected = torch.stack([50.0 * (image[3 * b:3 * b + 3] @ text[b]).mean() for b in range(2)])
    torch.testing.assert_close(scores, expected, rtol=1e-4, atol=1e-4)
    assert 1.0 < scores.abs().max() <= 50.0  # the logit scale, not a bare cosine


def test_pickscore_names_a_missing_folder(tmp_path):
    with pytest.raises(ConfigError, match=r"^reward.models.pickscore.path: '' is invalid; expected a value"):
        check_reward_config(RewardConfig(weights={"pickscore": 1.0}))
    with pytest.raises(ConfigError, match=r"^reward.models.pickscore.frames: 0 is invalid; expected >= 1$"):
        check_reward_config(RewardConfig(weights={"pickscore": 1.0}, models={"pickscore": {"path": "/p", "frames": 0}}))
    with pytest.raises(FileNotFoundError, match=rf"reward.models.pickscore.processor_path='{tmp_path}': no "
                                                r"preprocessor_config.json"):
        (tmp_path / "config.json").write_text("{}")
        build_scorer(RewardConfig(weights={"pickscore": 1.0}, models={"pickscore": {"path": str(tmp_path)}}))
