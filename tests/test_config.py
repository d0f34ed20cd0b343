import subprocess
import sys

import pytest

from fastvideo_grpo.config import ConfigError, load_config, parse_override
from fastvideo_grpo.models import check_model_config
from fastvideo_grpo.rewards import check_reward_config
from conftest import ROOT

TINY = ROOT / "assets/configs/tiny_t2v.yaml"


def test_yaml_and_overrides_apply():
    cfg = load_config(TINY, ["train.lr=2e-5", "sampling.group_size=6", "reward.weights={color: 0.5, motion: 2}"])
    assert cfg.train.lr == 2e-5 and isinstance(cfg.train.lr, float)
    assert cfg.sampling.group_size == 6
    assert cfg.reward.weights == {"color": 0.5, "motion": 2.0}
    assert cfg.model.size == "tiny"


def test_defaults_are_the_papers_hunyuan_video_settings():
    cfg = load_config(None, ["model.path=/models/hunyuan", "data.embeddings_dir=/data/embeddings",
                             "reward.models.videoalign.path=/models/VideoReward",
                             "reward.models.videoalign.base=/models/Qwen2-VL"])
    s, u, t = cfg.sampling, cfg.policy_update, cfg.train
    assert (s.height, s.width, s.num_frames, s.num_steps, s.eta, s.shift, s.group_size) == (480, 480, 53, 16, 0.25, 5.0, 24)
    assert (u.best_of, u.timestep_fraction, t.lr, t.grad_clip) == (0, 0.6, 1e-5, 1.0)
    assert cfg.reward.weights == {"videoalign_vq": 1.0} and cfg.reward.video_fps == s.fps == 8
    # Two overrides of one reward section merge, as they do in any section.
    assert cfg.reward.models == {"videoalign": {"path": "/models/VideoReward", "base": "/models/Qwen2-VL"}}


# Optimizer steps per iteration of the released DanceGRPO scripts: kept samples per rank /
# samples per step (finetune_hunyuan_grpo.sh: best-of 8 / 4; finetune_flux_grpo.sh: 12 / 4;
# finetune_skyreels_i2v.sh: 8 / 8; config_sd/dgx.py:hpsv2: 4 x 16 / (4 x 8)).
RELEASED_STEPS = {"hunyuan_t2v": 2, "flux_t2i": 3, "hunyuan_t2i": 3, "hunyuan_i2v": 1, "sd_t2i": 2}


@pytest.mark.parametrize("name", sorted(RELEASED_STEPS))
def test_paper_configs_take_the_released_scripts_optimizer_steps(name):
    import math

    cfg = load_config(ROOT / f"assets/configs/{name}.yaml", [
        "model.path=/m", "data.embeddings_dir=/e", "data.image_latents_dir=/i", "reward.models.hps.path=/h.pt",
        "reward.models.clip.path=/c", "reward.models.videoalign.path=/v", "reward.models.videoalign.base=/b"])
    check_reward_config(cfg.reward)  # the file's reward sections, with the paths set
    kept = cfg.train.prompts_per_iteration * (cfg.policy_update.best_of or cfg.sampling.group_size)
    assert math.ceil(kept / cfg.train.gradient_accumulation_steps) == RELEASED_STEPS[name]


@pytest.mark.parametrize("name", ["hunyuan_t2v", "flux_t2i"])
def test_nft_flagship_configs_are_the_grpo_ones_with_the_references_rollout(name):
    """The same task, model, rewards and optimizer as the GRPO flagship; NFT's deterministic
    10-step second-order rollout without CFG or shared noise, every sample trained."""
    paths = ["model.path=/m", "data.embeddings_dir=/e", "reward.models.hps.path=/h.pt", "reward.models.clip.path=/c",
             "reward.models.videoalign.path=/v", "reward.models.videoalign.base=/b"]
    grpo_cfg = load_config(ROOT / f"assets/configs/{name}.yaml", paths)
    cfg = load_config(ROOT / f"assets/configs/{name}_nft.yaml", paths)
    check_reward_config(cfg.reward)
    s = cfg.sampling
    assert cfg.train.algorithm == "nft" and cfg.model.cfg_scale == 1.0 and not s.shared_noise
    u = cfg.policy_update
    assert (s.num_steps, s.ode_solver, u.best_of, u.timestep_fraction) == (10, "dpmpp_2m", 0, 0.99)
    assert (cfg.nft.beta, cfg.nft.decay_type, cfg.nft.kl_weight) == (1.0, 1, 0.0)
    for section in ("model", "reward"):
        assert getattr(cfg, section) == getattr(grpo_cfg, section), section
    same = ("height", "width", "num_frames", "group_size", "shift")
    assert [getattr(s, k) for k in same] == [getattr(grpo_cfg.sampling, k) for k in same]
    changed = {"algorithm", "output_dir"}
    assert {k: v for k, v in vars(cfg.train).items() if k not in changed} == \
           {k: v for k, v in vars(grpo_cfg.train).items() if k not in changed}


@pytest.mark.parametrize("override,message", [
    ("train.bogus=1", "train.bogus"),
    ("nosection.lr=1", "nosection"),
    ("sampling.sde_type=ito", "sampling.sde_type: 'ito' is not one of ['dance', 'flow_grpo', 'cps']"),
    ("sampling.group_size=two", "sampling.group_size: expected an integer"),
    ("policy_update.best_of=3", "policy_update.best_of"),
    ("policy_update.timestep_fraction=1.5", "policy_update.timestep_fraction"),
    ("sampling.num_frames=6", "sampling.num_frames"),
    ("reward.binary_thresholds={pickscore: 0.3}", "reward.binary_thresholds.pickscore"),
    ("reward.plugins=my_rewards.py", "reward.plugins: expected a list, e.g. [a, b], got 'my_rewards.py'"),
    ("reward.models.hps=/h.pt", "reward.models.hps: expected a mapping, got '/h.pt'"),
    ("train.lr", "section.key=value"),
    ("model.tiny_heads=0", "model.tiny_heads: 0 is invalid; expected >= 1"),
    ("reward.max_restarts=-1", "reward.max_restarts: -1 is invalid; expected >= 0"),
    ("train.max_nonfinite_steps=0", "train.max_nonfinite_steps"),
    ("parallel.sp_size=3", "parallel.sp_size: 3 is invalid; expected a divisor of the model's 4 attention heads"),
    ("train.output_dir=", "train.output_dir: '' is invalid; expected a folder (empty would write the run's lock"),
    ("reward.weights={color: 0}", "reward.weights: {'color': 0.0} is invalid; expected at least one non-zero weight"),
    ("train.lr_warmup_steps=-1", "train.lr_warmup_steps: -1 is invalid; expected >= 0"),
    ("reward.weights={color: 1, color: 2}", "color is given twice, on lines 1 and 1"),
])
def test_bad_values_name_the_key(override, message):
    with pytest.raises(ConfigError, match=None) as info:
        load_config(TINY, [override])
    assert message in str(info.value)


def test_unknown_key_in_file_names_file_and_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  learning_rate: 0.1\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in str(info.value) and "train.learning_rate" in str(info.value)
    assert "'lr'" in str(info.value)  # the allowed keys are listed


def test_a_key_given_twice_in_a_file_names_file_key_and_both_lines(tmp_path):
    path = tmp_path / "twice.yaml"
    path.write_text("train:\n  iterations: 2\n  lr: 1.0e-5\n  iterations: 500\nsampling:\n  eta: 0.3\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == (f"{path}: train.iterations is given twice, on lines 2 and 4 (YAML would silently keep "
                               "the second); keep one")
    path.write_text("train:\n  iterations: 2\nsampling:\n  eta: 0.3\ntrain:\n  lr: 1.0e-5\n")
    with pytest.raises(ConfigError, match="train is given twice, on lines 1 and 5"):
        load_config(path)
    path.write_text("train:\n  iterations: 2\nsampling:\n  iterations: 3\n")  # one key in two sections is fine
    with pytest.raises(ConfigError, match="unknown config key 'sampling.iterations'"):
        load_config(path)


def test_sp_size_must_divide_the_heads_of_the_folder_before_any_model_is_built(tmp_path):
    (tmp_path / "transformer").mkdir()
    (tmp_path / "transformer" / "config.json").write_text('{"num_attention_heads": 24}')
    common = ["model.size=full", f"model.path={tmp_path}", "data.embeddings_dir=/e", "reward.weights={color: 1.0}"]
    assert load_config(None, [*common, "parallel.sp_size=8"]).parallel.sp_size == 8
    with pytest.raises(ConfigError, match="parallel.sp_size: 5 is invalid; expected a divisor of the model's 24"):
        load_config(None, [*common, "parallel.sp_size=5"])


def test_full_model_requires_a_path():
    with pytest.raises(ConfigError, match="model.path"):
        load_config(None, [])


def test_parse_override_nests():
    assert parse_override("a.b.c=3") == {"a": {"b": {"c": 3}}}


@pytest.mark.parametrize("overrides", [[], ["train.algorithm=nft", "sampling.shared_noise=false"]])
def test_loading_a_config_imports_no_torch(overrides):
    """A config loads and validates without torch or diffusers (the train CLI's --help,
    --print-config and config errors, the reward server), the algorithms' checks included."""
    code = ("import sys; from fastvideo_grpo.config import load_config; "
            f"cfg = load_config({str(TINY)!r}, {overrides!r}); "
            "print(cfg.train.algorithm, sorted(m for m in ('torch', 'diffusers') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert result.stdout == f"{'nft' if overrides else 'grpo'} []\n"


def test_cli_bad_key_exits_with_message(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "fastvideo_grpo.train", "--config", str(TINY), "train.bogus_key=1",
         f"train.output_dir={tmp_path}"], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 2
    assert "train.bogus_key" in result.stderr
    assert not (tmp_path / "metrics.jsonl").exists()


def hunyuan_folder(path, heads=24):
    """model.path with the transformer and VAE configs the sequence-parallel checks read."""
    import json

    for part, config in (("transformer", {"num_attention_heads": heads, "patch_size": 2, "patch_size_t": 1}),
                         ("vae", {"temporal_compression_ratio": 4, "spatial_compression_ratio": 8})):
        (path / part).mkdir()
        (path / part / "config.json").write_text(json.dumps(config))
    return path


def test_sp_split_of_the_video_tokens_is_checked_with_the_model_config(tmp_path):
    """480x848x53: 14 latent frames x 30 x 53 patches = 22,260 tokens, which 8 does not divide.
    The nearest sizes that split change one of them: 14 x 28 x 53 (448) = 8 x 2597."""
    common = ["model.size=full", f"model.path={hunyuan_folder(tmp_path)}", "data.embeddings_dir=/e",
              "reward.weights={color: 1.0}", "sampling.height=480", "sampling.width=848", "sampling.num_frames=53"]
    with pytest.raises(ConfigError) as info:
        check_model_config(load_config(None, [*common, "parallel.sp_size=8"]))
    assert str(info.value) == (
        "parallel.sp_size: 8 is invalid for sampling.height=480 x sampling.width=848 x sampling.num_frames=53: 22260 "
        "video tokens per sample, which 8 does not divide (sequence parallelism splits them evenly over the sp ranks); "
        "nearest sizes that split: sampling.height 448 or 512, sampling.width 832 or 864, sampling.num_frames 45 or 61")
    for size in ("sampling.height=448", "sampling.width=864", "sampling.num_frames=61"):  # each splits
        check_model_config(load_config(None, [*common, size, "parallel.sp_size=8"]))


def test_sp_token_count_is_what_the_patch_embedding_makes():
    """The count the config check computes equals the video tokens the tiny transformer's
    patch embedding produces for the same sizes."""
    import torch

    from fastvideo_grpo.models.hunyuan_video.checks import token_geometry
    from fastvideo_grpo.models.token_split import video_tokens
    from helpers import tiny_policy

    cfg = load_config(TINY, ["sampling.num_frames=9", "sampling.height=48", "sampling.width=80"])
    policy = tiny_policy(cfg)
    s = cfg.sampling
    latents = torch.zeros(1, *policy.latent_shape(s.num_frames, s.height, s.width))
    tokens = policy.transformer.x_embedder(latents).shape[1]
    assert tokens == video_tokens(token_geometry(cfg), s.num_frames, s.height, s.width) == 3 * 3 * 5
