"""model.attention: every attention of every family reaches the configured kernel with no mask
where no row is padded, and computes what diffusers' masked SDPA computes on the padded text.
flash-attn is stubbed (tests/flash_stub: its functions computed with SDPA, calls recorded)."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import typing

import pytest
import torch
import torch.nn.functional as F

from conftest import ROOT
from fastvideo_grpo.config import ModelConfig, load_config
from fastvideo_grpo.models.hunyuan_video import policy as hunyuan_video
from fastvideo_grpo.models.hunyuan_video_15 import policy as hunyuan_video_15
from fastvideo_grpo.models.attention import BACKENDS, apply_attention
from helpers import DIST, run, tiny_conditioning, tiny_policy

STUB = ROOT / "tests" / "flash_stub"
CONFIGS = ROOT / "assets" / "configs"
FAMILIES = {"hunyuan_video": "tiny_t2v.yaml", "hunyuan_t2i": "tiny_hunyuan_t2i.yaml",
            "hunyuan_video_i2v": "tiny_i2v.yaml", "flux": "tiny_flux_t2i.yaml", "stable_diffusion": "tiny_sd_t2i.yaml",
            "wan": "tiny_wan_t2v.yaml", "wan_ti2v": "tiny_wan_ti2v.yaml",
            "hunyuan_video_15": "tiny_hunyuan_video_15_t2v.yaml"}
HUNYUAN = ("hunyuan_video", "hunyuan_t2i", "hunyuan_video_i2v", "hunyuan_video_15")
# Prompts of 3, 3 and 7 words: the tiny text encoder gives each word a token, padded to 16.
PROMPTS = ["a red ball", "a big dog", "a blue sky over the sea today"]
BATCHES = {"one": [0], "same_length": [0, 1], "ragged": [0, 2]}
DENSE = {"flash": "flash_attn.flash_attn_func", "flash_varlen": "flash_attn.flash_attn_varlen_func",
         "flash3_varlen": "flash_attn_3.flash_attn_varlen_func"}
VARLEN = {"flash": "flash_attn.flash_attn_varlen_func", "flash_varlen": "flash_attn.flash_attn_varlen_func",
          "flash3_varlen": "flash_attn_3.flash_attn_varlen_func"}


@pytest.fixture
def flash_stub(monkeypatch):
    """The stub packages imported in this process, and diffusers' flash backends pointed at
    them (diffusers looked for flash-attn when it was first imported). flash3's dense kernel is
    a CUDA-only custom op in diffusers: only its varlen kernel runs on CPU."""
    from diffusers.models import attention_dispatch

    monkeypatch.syspath_prepend(str(STUB))
    import flash_attn
    import flash_attn_interface
    import flash_stub

    for name, value in [("_CAN_USE_FLASH_ATTN", True), ("_CAN_USE_FLASH_ATTN_3", True),
                        ("flash_attn_func", flash_attn.flash_attn_func),
                        ("flash_attn_varlen_func", flash_attn.flash_attn_varlen_func),
                        ("flash_attn_3_func", flash_attn_interface.flash_attn_func),
                        ("flash_attn_3_varlen_func", flash_attn_interface.flash_attn_varlen_func)]:
        monkeypatch.setattr(attention_dispatch, name, value)
    flash_stub.CALLS.clear()
    yield flash_stub.CALLS
    for name in [m for m in sys.modules if m.split(".")[0] in ("flash_attn", "flash_attn_interface", "flash_stub")]:
        del sys.modules[name]


@pytest.fixture
def sdpa_masks(monkeypatch):
    """The attn_mask of every call of torch's SDPA (not the stub's own)."""
    masks = []
    sdpa = F.scaled_dot_product_attention

    def recording(*args, attn_mask=None, **kwargs):
        masks.append(attn_mask)
        return sdpa(*args, attn_mask=attn_mask, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", recording)
    return masks


def _case(family: str, attention: str):
    # image_latents_dir is not read: the first-frame latents are made here.
    cfg = load_config(CONFIGS / FAMILIES[family], [f"model.attention={attention}", "model.cfg_scale=1",
                                                   "data.image_latents_dir=unread"])
    policy = tiny_policy(cfg)
    shape = policy.latent_shape(cfg.sampling.num_frames, cfg.sampling.height, cfg.sampling.width)
    cond = tiny_conditioning(cfg, PROMPTS, 1)
    if family == "hunyuan_video_i2v":
        cond.image_latents = torch.randn(len(PROMPTS), shape[0], 1, *shape[2:], generator=torch.Generator().manual_seed(4))
    x = torch.randn(len(PROMPTS), *shape, generator=torch.Generator().manual_seed(5))
    return cfg, policy, cond, x


def _masked_sdpa_reference(cfg, policy, monkeypatch):
    """The same weights with diffusers' own processors (SDPA, the mask on every call) on the
    padded text, as before model.attention's kernels and the text crop existed: the
    reference policy and its predict."""
    with monkeypatch.context() as m:
        m.setattr("fastvideo_grpo.models.base.apply_attention", lambda network, name: None)
        m.setattr(hunyuan_video_15, "set_joint_attention", lambda network: None)
        m.setattr(hunyuan_video_15, "tie_dead_text_path", lambda network: None)
        reference = tiny_policy(dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, attention="sdpa")))
    for a, b in zip(reference.transformer.parameters(), policy.transformer.parameters()):
        assert torch.equal(a, b)

    def predict(x, t, cond):
        with monkeypatch.context() as m:
            m.setattr(hunyuan_video, "crop_text", lambda embeds, mask: (embeds, mask))
            m.setattr(hunyuan_video_15, "crop_text", lambda embeds, mask: (embeds, mask))
            m.setattr(hunyuan_video_15, "crop_glyphs", lambda embeds, mask: (embeds, mask))
            return reference.predict(x, t, cond)

    return reference, predict


def _t(cfg) -> float:
    return 501.0 if cfg.model.family == "stable_diffusion" else 0.6


def test_config_names_the_backends():
    assert set(typing.get_args(typing.get_type_hints(ModelConfig)["attention"])) == set(BACKENDS)


def test_a_backend_whose_kernels_do_not_import_is_an_error_naming_the_key():
    from diffusers.models import attention_dispatch

    if attention_dispatch._CAN_USE_FLASH_ATTN:
        pytest.skip("flash-attn is installed here")
    network = tiny_policy(load_config(CONFIGS / "tiny_t2v.yaml")).transformer
    with pytest.raises(RuntimeError, match="model.attention='flash': .*flash-attn"):
        apply_attention(network, "flash")


# The varlen backends differ from flash in the kernel of a call without a mask alone.
KERNEL_CASES = [("flash", family) for family in FAMILIES] + [
    (attention, family) for attention in ("flash_varlen", "flash3_varlen") for family in ("hunyuan_video", "flux")]


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("attention, family", KERNEL_CASES)
def test_flash_attention_runs_without_a_mask_and_equals_masked_sdpa(attention, family, batch, flash_stub,
                                                                    sdpa_masks, monkeypatch):
    cfg, policy, cond, x = _case(family, attention)
    rows = BATCHES[batch]
    with torch.no_grad():
        out = policy.predict(x[rows], _t(cfg), cond.select(rows))
    assert sdpa_masks == []  # no attention fell back to SDPA
    attentions = len(policy.transformer.attn_processors)
    assert len(flash_stub) == attentions
    ragged = batch == "ragged" and family in HUNYUAN
    assert {call["kernel"] for call in flash_stub} == {(VARLEN if ragged else DENSE)[attention]}
    if attention == "flash" and family in HUNYUAN and not ragged:  # the text cropped to the prompts' 3 of 16 tokens
        assert min(call["k"][1] for call in flash_stub) == 3  # the token refiner's
        assert all(call["k"] == call["q"] for call in flash_stub)
    with torch.no_grad():
        expected = _masked_sdpa_reference(cfg, policy, monkeypatch)[1](x[rows], _t(cfg), cond.select(rows))
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("family", HUNYUAN)
def test_sdpa_gets_no_mask_where_no_row_is_padded(family, batch, sdpa_masks, monkeypatch):
    """SDPA keeps its flash kernel where every row has the same text length; rows of
    different lengths keep the mask. Either way the output is diffusers' masked one."""
    cfg, policy, cond, x = _case(family, "sdpa")
    rows = BATCHES[batch]
    with torch.no_grad():
        out = policy.predict(x[rows], _t(cfg), cond.select(rows))
    attentions = len(policy.transformer.attn_processors)
    assert len(sdpa_masks) == attentions
    if batch == "ragged":
        assert all(mask is not None for mask in sdpa_masks)
    else:
        assert sdpa_masks == [None] * attentions
    sdpa_masks.clear()
    with torch.no_grad():
        expected = _masked_sdpa_reference(cfg, policy, monkeypatch)[1](x[rows], _t(cfg), cond.select(rows))
    assert all(mask is not None for mask in sdpa_masks)  # the reference is the masked path
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("batch", ["one", "ragged"])
def test_gradients_through_flash_equal_masked_sdpa(batch, flash_stub, monkeypatch):
    cfg, policy, cond, x = _case("hunyuan_video", "flash")
    rows = BATCHES[batch]
    weights = torch.randn(len(rows), *x.shape[1:], generator=torch.Generator().manual_seed(6))
    (policy.predict(x[rows], 0.6, cond.select(rows)) * weights).sum().backward()
    reference, predict = _masked_sdpa_reference(cfg, policy, monkeypatch)
    (predict(x[rows], 0.6, cond.select(rows)) * weights).sum().backward()
    for (name, p), q in zip(policy.transformer.named_parameters(), reference.transformer.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=name)


def _stub_env(log) -> dict:
    return {"PYTHONPATH": os.pathsep.join([str(STUB), str(ROOT), os.environ.get("PYTHONPATH", "")]),
            "FLASH_STUB_LOG": str(log)}


def test_train_cli_runs_with_flash_on_cpu(tmp_path):
    """`python -m fastvideo_grpo.train ... model.attention=flash` with flash-attn on the path:
    chosen because it imports, on a CPU run. A subprocess: ~20 s."""
    log = tmp_path / "calls.jsonl"
    run(["-m", "fastvideo_grpo.train", "--config", CONFIGS / "tiny_t2v.yaml", "model.attention=flash",
         f"train.output_dir={tmp_path / 'run'}", "train.iterations=1", "train.prompts_per_iteration=2",
         "sampling.group_size=2", "sampling.rollout_batch_size=4", "sampling.decode_batch_size=4",
         "sampling.num_steps=3", "train.sample_every=0", "train.progress_bar=false"], env=_stub_env(log))
    kernels = [json.loads(line)["kernel"] for line in log.read_text().splitlines()]
    assert "flash_attn.flash_attn_func" in kernels
    assert set(kernels) <= {"flash_attn.flash_attn_func", "flash_attn.flash_attn_varlen_func"}
    assert (tmp_path / "run" / "metrics.jsonl").read_text().count("\n") == 1


def test_sequence_parallel_flash_equals_masked_sdpa(tmp_path):
    """2 ranks, sp 2, flash (stubbed) against one process's masked SDPA: batch 1, and a batch
    whose prompts differ in length; forward and gradients. Two processes: ~30 s."""
    log = tmp_path / "calls.jsonl"
    report_path = tmp_path / "report.json"
    run([DIST / "sp_attention.py", report_path], nproc=2, env=_stub_env(log))
    report = json.loads(report_path.read_text())
    for batch in ("one", "ragged"):
        assert report[batch]["forward_rel"] <= 1e-5, report
        assert report[batch]["grad_rel"] <= 1e-4, report
        assert report[batch]["sdpa_calls"] == 0, report
    assert report["one"]["kernels"] == ["flash_attn.flash_attn_func"]
    assert report["ragged"]["kernels"] == ["flash_attn.flash_attn_varlen_func"]
