"""model.compile: the compiled blocks train as the eager ones do, under the eager names, for the
HunyuanVideo and the Wan tiny configs.

Inductor compiles C++ kernels on CPU: the first compile of a block class takes seconds
with a warm kernel cache (~/tmp/torchinductor_<user>) and minutes without one."""

import shutil

import pytest
import torch
from torch._dynamo.utils import counters

from conftest import ROOT
from helpers import read_jsonl, tiny_conditioning, tiny_policy
from fastvideo_grpo.algorithms import grpo
from fastvideo_grpo.checkpoint import latest_checkpoint, saved_keys
from fastvideo_grpo.config import load_config
from fastvideo_grpo.parallel.fsdp import apply_compile
from fastvideo_grpo.training.trainer import train


def cpp_compiler() -> str | None:
    from torch._inductor import cpp_builder

    try:
        return shutil.which(cpp_builder.get_cpp_compiler())
    except Exception:  # inductor names no compiler it can find
        return None


pytestmark = [pytest.mark.skipif(cpp_compiler() is None, reason="inductor needs a C++ compiler on CPU"),
              pytest.mark.xdist_group("compile")]  # one worker: the second test reuses the first's kernels


def tiny(*overrides, config="tiny_t2v.yaml"):
    return load_config(ROOT / "assets/configs" / config,
                       [f"data.prompts_file={ROOT / 'assets/prompts/tiny.txt'}", *overrides])


def micro_batch(policy, cfg):
    """One GRPO training micro-batch on fixed inputs: (loss, gradients by parameter name)."""
    s = cfg.sampling
    generator = torch.Generator().manual_seed(1)
    cond = tiny_conditioning(cfg, ["a red cube", "the blue sky at noon"], 1)
    cond.negative = tiny_conditioning(cfg, ["", ""], 1)  # read where model.cfg_scale > 1
    shape = policy.latent_shape(s.num_frames, s.height, s.width)
    x, x_next = torch.randn(2, *shape, generator=generator), torch.randn(2, *shape, generator=generator)
    sampler = policy.sampler(s)
    step = sampler.sde_step(policy.predict(x, float(sampler.levels[2]), cond), x, sampler.levels, 2, prev_sample=x_next)
    loss, _ = grpo.clipped_loss(step.log_prob - (step.log_prob.detach() + 0.01), torch.tensor([1.0, -0.5]), 0.2)
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in policy.transformer.named_parameters()}


# Wan's tiny configs train with classifier-free guidance: both branches in one compiled forward;
# TI2V's blocks take per-token timesteps.
@pytest.mark.parametrize("config", ["tiny_t2v.yaml", "tiny_wan_t2v.yaml", "tiny_wan_ti2v.yaml"])
def test_compiled_checkpointed_blocks_give_the_eager_loss_and_gradients(config):
    """With activation checkpointing, whose recompute in backward reruns the compiled forward
    (the run below trains compiled blocks without it)."""
    cfg = tiny(config=config)
    eager, compiled = tiny_policy(cfg), tiny_policy(cfg)  # the same seeded weights
    for policy in (eager, compiled):
        policy.transformer.enable_gradient_checkpointing()
    apply_compile(compiled.blocks)
    names = [n for n, _ in eager.transformer.named_parameters()]
    assert [n for n, _ in compiled.transformer.named_parameters()] == names
    assert list(compiled.transformer.state_dict()) == list(eager.transformer.state_dict())
    loss, grads = micro_batch(eager, cfg)
    torch._dynamo.reset()  # an earlier test's blocks of the same class would be a cache hit, counting nothing
    counters.clear()
    compiled_loss, compiled_grads = micro_batch(compiled, cfg)
    assert counters["stats"]["unique_graphs"] >= 1  # the policy's blocks ran compiled
    assert compiled_loss.item() == pytest.approx(loss.item(), rel=1e-5)
    total = torch.cat([g.flatten() for g in grads.values()])
    assert total.norm() > 0
    for name in names:
        # Elementwise to 1e-4 of the largest gradient: inductor's fused kernels reorder float
        # sums (a key bias's gradient, zero in exact arithmetic, is ~1e-12 in both).
        torch.testing.assert_close(compiled_grads[name], grads[name], rtol=1e-4, atol=1e-4 * total.abs().max().item(),
                                   msg=name)


# apply_compile names no family: one family's run checks the names and the training; the
# test above checks each family's blocks (a cold kernel cache makes every new graph minutes).
def test_a_compiled_run_trains_and_checkpoints_under_the_eager_names(tmp_path, config="tiny_t2v.yaml"):
    overrides = ["train.iterations=2", "train.progress_bar=false", "train.sample_every=0", "checkpoint.every=2",
                 "train.prompts_per_iteration=1", "sampling.group_size=4", "sampling.rollout_batch_size=4",
                 "sampling.decode_batch_size=4"]
    rows = {}
    for compiled in (False, True):
        out = train(tiny(*overrides, f"model.compile={str(compiled).lower()}", f"train.output_dir={tmp_path / str(compiled)}",
                         config=config))
        rows[compiled] = read_jsonl(out / "metrics.jsonl")
        keys = saved_keys(latest_checkpoint(out))
        assert not [k for k in keys if "_orig_mod" in k]
        rows[compiled, "keys"] = keys
    assert rows[True, "keys"] == rows[False, "keys"]
    assert [r["ratio_dev_first_update"] for r in rows[True]] == [0.0, 0.0]
    for eager, compiled in zip(rows[False], rows[True], strict=True):
        for key in ("loss", "grad_norm", "reward_mean"):
            assert compiled[key] == pytest.approx(eager[key], rel=1e-4, abs=1e-7), key
