"""The config a run trains with is never silently different: the LR warmup of the reference,
a resumed run's changed lr taking effect (other changes refused), ranks started with
different configs refused, and settings that do less than they say warned about."""

import logging
import shutil
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from diffusers.optimization import get_constant_schedule_with_warmup

from conftest import ROOT
from helpers import TIMING, read_jsonl, rewound_copy
from fastvideo_grpo.training.run_state import resume_run
from fastvideo_grpo.config import ConfigError, load_config
from fastvideo_grpo.training.trainer import setup, train
from fastvideo_grpo.algorithms.learner import build_optimizer

# One optimizer step per iteration.
SMALL = ["sampling.group_size=4", "sampling.rollout_batch_size=4", "sampling.decode_batch_size=4",
         "train.sample_every=0", "train.progress_bar=false", "train.prompts_per_iteration=1", "checkpoint.every=0",
         "train.gradient_accumulation_steps=1000", "train.lr=1e-3", "train.lr_warmup_steps=4"]


def small_cfg(out, *overrides):
    return load_config(ROOT / "assets/configs/tiny_t2v.yaml", [*SMALL, f"train.output_dir={out}", *overrides])


def test_warmup_starts_at_zero_as_diffusers_constant_with_warmup():
    lr, warmup = 1e-3, 4
    cfg = small_cfg("unused", f"train.lr={lr}", f"train.lr_warmup_steps={warmup}")
    optimizer, scheduler = build_optimizer(SimpleNamespace(transformer=torch.nn.Linear(2, 2)), cfg)
    reference_optimizer = torch.optim.AdamW(torch.nn.Linear(2, 2).parameters(), lr=lr)
    reference = get_constant_schedule_with_warmup(reference_optimizer, warmup)
    seen, expected = [], []
    for step in range(7):
        seen.append(optimizer.param_groups[0]["lr"])
        expected.append(reference_optimizer.param_groups[0]["lr"])
        optimizer.step(), scheduler.step(), reference_optimizer.step(), reference.step()
    assert seen == expected
    assert seen == pytest.approx([0.0, lr / 4, lr / 2, 3 * lr / 4, lr, lr, lr], abs=0)


# During iteration k of 4: linear 1 - k/4; cosine (1 + cos(pi k/4)) / 2 = 1, 0.8536, 0.5, 0.1464.
DECAYED = {"linear": [1.0, 0.75, 0.5, 0.25], "cosine": [1.0, 0.5 + 0.25 * 2 ** 0.5, 0.5, 0.5 - 0.25 * 2 ** 0.5]}


@pytest.mark.parametrize("schedule", sorted(DECAYED))
def test_the_lr_decays_with_the_run_and_a_resumed_run_follows_it(tmp_path, schedule):
    overrides = ("train.iterations=4", "train.lr_warmup_steps=0", f"train.lr_schedule={schedule}", "checkpoint.every=2")
    straight = read_jsonl(train(small_cfg(tmp_path / "straight", *overrides)) / "metrics.jsonl")
    assert [r["lr"] for r in straight] == pytest.approx([1e-3 * f for f in DECAYED[schedule]], rel=1e-12)
    resumed = rewound_copy(tmp_path / "straight", tmp_path / "resumed", 2)
    again = read_jsonl(train(small_cfg(resumed, *overrides)) / "metrics.jsonl")
    assert [{k: v for k, v in r.items() if not k.startswith(TIMING)} for r in again] == \
           [{k: v for k, v in r.items() if not k.startswith(TIMING)} for r in straight]


@pytest.fixture(scope="module")
def two_iterations(tmp_path_factory):
    """A run of 2 iterations (2 optimizer steps of a 4-step warmup), checkpointed at its end."""
    out = tmp_path_factory.mktemp("run")
    train(small_cfg(out, "train.iterations=2"))
    return out


def test_a_resumed_run_trains_with_its_changed_lr_and_says_so(two_iterations, tmp_path, caplog):
    out = shutil.copytree(two_iterations, tmp_path / "run")
    with caplog.at_level(logging.INFO, logger="fastvideo_grpo"):
        c = setup(small_cfg(out, "train.iterations=3", "train.lr=5e-4"))
        assert resume_run(c, c.sampler, c.world, small_cfg(out, "train.iterations=3", "train.lr=5e-4"), {}) == 2
    # The third optimizer step (index 2) of the warmup, at the new lr.
    assert [g["lr"] for g in c.optimizer.param_groups] == [5e-4 * 2 / 4]
    assert "with a changed config: train.iterations 2 -> 3, train.lr 0.001 -> 0.0005" in caplog.text
    train(small_cfg(out, "train.iterations=3", "train.lr=5e-4"))
    rows = read_jsonl(out / "metrics.jsonl")
    assert [r["iteration"] for r in rows] == [0, 1, 2]
    # metrics log the lr after the iteration's step: 1e-3 * 1/4 and 2/4, then 5e-4 * 3/4.
    assert [r["lr"] for r in rows] == pytest.approx([1e-3 / 4, 1e-3 / 2, 5e-4 * 3 / 4], rel=1e-12)
    assert load_config(out / "config.yaml").train.lr == 5e-4


def test_a_resumed_run_with_a_changed_warmup_follows_the_new_schedule(two_iterations, tmp_path):
    out = shutil.copytree(two_iterations, tmp_path / "run")
    cfg = small_cfg(out, "train.iterations=3", "train.lr_warmup_steps=8")
    c = setup(cfg)
    resume_run(c, c.sampler, c.world, cfg, {})
    assert c.optimizer.param_groups[0]["lr"] == 1e-3 * 2 / 8
    assert c.scheduler.get_last_lr() == [1e-3 * 2 / 8]


def test_a_resumed_run_that_changes_what_it_trains_is_refused_naming_every_key(two_iterations, tmp_path):
    out = shutil.copytree(two_iterations, tmp_path / "run")
    before = (out / "metrics.jsonl").read_text()
    with pytest.raises(ConfigError) as info:
        train(small_cfg(out, "train.iterations=3", "sampling.group_size=2", "train.seed=7", "train.lr=5e-4",
                        "reward.weights={color: 1.0, motion: 0.5}"))
    message = str(info.value)
    assert message.startswith(f"cannot resume {out / 'checkpoints/step_2'}: the config changes ")
    for change in ("sampling.group_size: 4 -> 2", "train.seed: 42 -> 7",
                   "reward.weights: {'color': 1.0} -> {'color': 1.0, 'motion': 0.5}"):
        assert change in message
    assert "train.lr:" not in message.split("A resumed run may change")[0]  # allowed: not named as refused
    assert f"against {out / 'config.yaml'}" in message
    assert (out / "metrics.jsonl").read_text() == before
    assert load_config(out / "config.yaml").sampling.group_size == 4  # the run's config is kept


def test_the_cli_refuses_a_changed_resume_with_exit_2(two_iterations, tmp_path):
    out = shutil.copytree(two_iterations, tmp_path / "run")
    result = subprocess.run([sys.executable, "-m", "fastvideo_grpo.train", "--config",
                             str(ROOT / "assets/configs/tiny_t2v.yaml"), *SMALL, "train.iterations=3",
                             "sampling.num_steps=6", f"train.output_dir={out}"],
                            capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "error: cannot resume" in result.stderr and "sampling.num_steps: 8 -> 6" in result.stderr


def test_ranks_with_different_configs_are_refused_naming_the_keys(tmp_path):
    """Rank 1 gets other values of train.lr and sampling.group_size: both ranks stop at
    once with the keys and each rank's value, instead of training on."""
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         ROOT / "tests/dist/mismatched_config.py", "--config", ROOT / "assets/configs/tiny_t2v.yaml", *SMALL,
         "train.iterations=1", f"train.output_dir={tmp_path}", "--rank1", "train.lr=2e-3", "sampling.group_size=2"],
        capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode != 0
    expected = ("error: the ranks were started with different configs; reward.group_size: 4 on rank 0, 2 on rank 1; "
                "sampling.group_size: 4 on rank 0, 2 on rank 1; train.lr: 0.001 on rank 0, 0.002 on rank 1")
    assert result.stderr.count(expected) == 1, result.stderr[-3000:]  # said once, by rank 0
    assert not (tmp_path / "metrics.jsonl").exists()


def test_settings_that_do_less_than_they_say_are_warned_about(tmp_path, caplog):
    cfg = small_cfg(tmp_path, "train.iterations=1", "reward.weights={color: 1.0, motion: 0}",
                    "train.prompts_per_iteration=9", "eval.every=1", "eval.num_prompts=20",
                    "train.gradient_accumulation_steps=4")
    with caplog.at_level(logging.WARNING, logger="fastvideo_grpo"):
        train(cfg)
    assert "reward.weights.motion is 0: it is scored and logged but adds nothing to the advantage" in caplog.text
    assert ("train.prompts_per_iteration=9 on 1 data-parallel ranks takes 9 prompts an iteration but the prompt set "
            "holds 8: some prompts are drawn twice in one iteration") in caplog.text
    assert "eval.num_prompts=20 but the held-out prompt set holds 8: evaluating all 8" in caplog.text
