"""The algorithm table: the trainer, the planner and the FLOP count ask the configured
algorithm (algorithms.registry.ALGORITHMS) what differs, never its name."""

import ast
import dataclasses
import re

import pytest
import torch

from conftest import ROOT
from fastvideo_grpo.algorithms import grpo, nft
from fastvideo_grpo.algorithms.registry import ALGORITHMS, algorithm_of
from fastvideo_grpo.config import ConfigError, load_config
from fastvideo_grpo.training.trainer import train
from helpers import read_jsonl, tiny_policy

TINY = ROOT / "assets/configs/tiny_t2v.yaml"
PACKAGE = ROOT / "fastvideo_grpo"
SMALL = ["sampling.group_size=4", "sampling.rollout_batch_size=4", "sampling.decode_batch_size=4",
         "train.sample_every=0", "train.progress_bar=false", "checkpoint.every=0", "train.prompts_per_iteration=1",
         "reward.mode=inline", "train.iterations=2", "train.gradient_accumulation_steps=2"]
# Metrics that measure time, not training.
TIMED = re.compile(r"^(time_|samples_per_s|tflops_per_gpu|mfu)")


def test_an_algorithm_added_to_the_table_trains_without_a_change_to_the_trainer(tmp_path, monkeypatch):
    """GRPO registered again under another name trains to the same numbers: the loop looks
    the algorithm up by train.algorithm and asks it, nowhere comparing the name."""
    monkeypatch.setitem(ALGORITHMS, "grpo_again", dataclasses.replace(ALGORITHMS["grpo"], name="grpo_again"))
    rows = {}
    for name in ("grpo", "grpo_again"):
        cfg = load_config(TINY, [*SMALL, f"train.output_dir={tmp_path / name}", f"train.algorithm={name}",
                                 "grpo.kl_weight=0.1", "grpo.kl_schedule=linear"])
        rows[name] = [{k: v for k, v in row.items() if not TIMED.match(k)}
                      for row in read_jsonl(train(cfg) / "metrics.jsonl")]
    assert len(rows["grpo"]) == 2 and rows["grpo"][0]["kl_weight"] == pytest.approx(0.1)
    assert rows["grpo_again"] == rows["grpo"]


UNKNOWN = r"train.algorithm: 'ppo' is invalid; expected one of \['grpo', 'nft'\]"


def test_an_unknown_algorithm_names_the_table_before_anything_starts(tmp_path, caplog, monkeypatch):
    """The config's own checks cannot import the table (it imports torch): the train CLI,
    setup, the planner and the preflight ask it, before any process group or model exists."""
    from fastvideo_grpo.cli.train import main
    from fastvideo_grpo.planning.policy import load_plan_config
    from fastvideo_grpo.preflight import preflight
    from fastvideo_grpo.training import trainer

    overrides = ["train.algorithm=ppo", f"train.output_dir={tmp_path / 'run'}"]
    with caplog.at_level("ERROR"):
        assert main(["--config", str(TINY), *overrides]) == 2
    assert re.search(UNKNOWN, caplog.text)
    monkeypatch.setattr(trainer, "init_distributed", lambda *args, **kwargs: pytest.fail("a process group started"))
    with pytest.raises(ConfigError, match=UNKNOWN):
        trainer.setup(load_config(TINY, overrides))
    with pytest.raises(ConfigError, match=UNKNOWN):
        load_plan_config(TINY, overrides)
    assert any(re.search(UNKNOWN, p) for p in preflight(TINY, overrides))
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("key", ["timestep_fraction", "adv_clip_max", "best_of", "advantage_mode"])
def test_a_knob_both_algorithms_read_moved_to_policy_update(tmp_path, key):
    old = tmp_path / "old.yaml"
    old.write_text(f"grpo:\n  clip_range: 0.2\n  {key}: 2\n")
    with pytest.raises(ConfigError, match=f"{old}: grpo.{key} moved to policy_update.{key}"):
        load_config(old)
    with pytest.raises(ConfigError, match=f"grpo.{key} moved to policy_update.{key}"):
        load_config(TINY, [f"grpo.{key}=2"])


def compares_an_algorithm(source: str) -> bool:
    """Whether Python source compares something with an algorithm's name or train.algorithm."""
    names = set(ALGORITHMS)

    def is_name(node) -> bool:
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            return any(is_name(item) for item in node.elts)
        return isinstance(node, ast.Constant) and node.value in names

    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare):
            sides = (node.left, *node.comparators)
            if any(is_name(side) for side in sides):
                return True
            equality = all(isinstance(op, (ast.Eq, ast.NotEq)) for op in node.ops)
            if equality and any(isinstance(side, ast.Attribute) and side.attr == "algorithm" for side in sides):
                return True
    return False


def test_no_module_outside_algorithms_compares_an_algorithm_name():
    assert compares_an_algorithm('if cfg.train.algorithm == "nft":\n    pass')  # the check sees one
    assert compares_an_algorithm('nft = name in ("nft",)')
    assert not compares_an_algorithm('ok = cfg.train.algorithm in ALGORITHMS')
    found = [str(path.relative_to(ROOT)) for path in PACKAGE.rglob("*.py")
             if "algorithms" not in path.relative_to(PACKAGE).parts and compares_an_algorithm(path.read_text())]
    assert found == []


def test_checkpoint_does_not_import_the_learner():
    imported = set()
    for path in (PACKAGE / "checkpoint").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                imported.add(node.module)
            elif isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
    learner = ("fastvideo_grpo.algorithms", "fastvideo_grpo.update")  # where it lives, where it lived
    assert "fastvideo_grpo.checkpoint.sharded" in imported  # the check sees checkpoint/'s imports
    assert [name for name in imported if name and name.startswith(learner)] == []


@pytest.mark.parametrize("name, overrides", [("grpo", []), ("nft", ["sampling.shared_noise=false", "model.lora_rank=4"])])
def test_the_planners_micro_batch_is_the_updates(name, overrides, monkeypatch):
    """The planner traces each algorithm's micro-batch through the algorithm's own
    micro_batch_loss, the function its update runs, chosen by the table, not by name. (NFT with
    LoRA: its old policy a second adapter on the same real network, not a meta copy.)"""
    from fastvideo_grpo.algorithms.learner import build_old
    from fastvideo_grpo.models import model_family
    from fastvideo_grpo.models.lora import apply_lora
    from fastvideo_grpo.planning.tracer import conditioning

    cfg = load_config(TINY, [f"train.algorithm={name}", *overrides])
    algorithm = algorithm_of(cfg)
    policy = tiny_policy(cfg)
    m = cfg.model
    if m.lora_rank > 0:
        apply_lora(policy.transformer, m.lora_rank, m.lora_alpha, model_family(m).lora_targets)
    old = build_old(policy, m) if algorithm.old_policy else None
    module = {"grpo": grpo, "nft": nft}[name]
    calls = []
    original = module.micro_batch_loss

    def recorded(*args, **kwargs):
        result = original(*args, **kwargs)
        calls.append(result.loss.detach())
        return result

    monkeypatch.setattr(module, "micro_batch_loss", recorded)
    s = cfg.sampling
    shape = policy.latent_shape(s.num_frames, s.height, s.width)
    trace = algorithm.planner_micro_batch(cfg, policy, old, algorithm.step_plan(cfg, 0), 2, shape,
                                          lambda rows: conditioning(cfg, policy, rows, shape))
    loss = trace.loss(*trace.inputs())
    assert len(calls) == 1 and torch.equal(loss.detach(), calls[0]) and loss.requires_grad
