"""Setup never holds a whole network on the training device: the policy is sharded block by
block as it is placed, and the frozen copies (KL reference, NFT's old policy) are made on
the meta device, sharded like the policy and filled shard to shard."""

import json

import pytest
import torch

from conftest import ROOT
from fastvideo_grpo.config import load_config
from fastvideo_grpo.models import build_policy
from fastvideo_grpo.algorithms.learner import fill_frozen, frozen_copy
from helpers import COMMON, DIST, run, tiny_policy


def test_frozen_copies_are_sharded_like_the_policy_and_no_whole_copy_is_made(tmp_path):
    path = tmp_path / "frozen.json"
    run([DIST / "frozen_copies.py", path, *COMMON, "train.algorithm=nft", "sampling.shared_noise=false",
         "nft.kl_weight=0.1", f"train.output_dir={tmp_path / 'run'}"], nproc=2)
    report = json.loads(path.read_text())
    for role in ("reference", "old"):
        assert report[role] == {"names_match": True, "sharded_alike": True, "equal": True, "frozen": True}, role
    # Nothing larger than one rank's shard of a parameter was allocated after loading: a
    # deep copy of the unsharded network allocates each whole parameter.
    assert report["largest_shard"] < report["largest_parameter"]
    assert report["largest_allocation"] <= report["largest_shard"], report


def test_a_frozen_copy_has_no_storage_until_filled_and_then_equals_the_policy(tiny_cfg):
    policy = tiny_policy(tiny_cfg)
    frozen = frozen_copy(policy)
    assert all(p.is_meta and not p.requires_grad for p in frozen.transformer.parameters())
    assert all(p.device.type == "cpu" for p in policy.transformer.parameters())  # the policy's untouched
    fill_frozen(frozen, policy)
    ours = dict(policy.transformer.named_parameters())
    for name, p in frozen.transformer.named_parameters():
        assert torch.equal(p, ours[name]) and p.data_ptr() != ours[name].data_ptr(), name


def test_a_copy_taken_before_lora_fills_from_the_wrapped_base_weights(tiny_cfg):
    from fastvideo_grpo.models import model_family
    from fastvideo_grpo.models.lora import apply_lora

    policy = tiny_policy(tiny_cfg)
    frozen = frozen_copy(policy)
    apply_lora(policy.transformer, 2, 2, model_family(tiny_cfg.model).lora_targets)
    with torch.no_grad():
        for name, p in policy.transformer.named_parameters():
            if ".base_layer." in name:
                p.add_(1.0)
    fill_frozen(frozen, policy)
    ours = dict(policy.transformer.named_parameters())
    for name, p in frozen.transformer.named_parameters():
        source = ours.get(name.replace(".weight", ".base_layer.weight").replace(".bias", ".base_layer.bias"), ours.get(name))
        assert source is not None and torch.equal(p, source), name


def test_the_network_stays_in_host_memory_until_parallelize_places_it(tiny_cfg):
    """The VAE goes to the device at once; the network only when parallelize shards or places it."""
    from fastvideo_grpo.parallel import World
    from fastvideo_grpo.parallel.fsdp import parallelize

    cfg = load_config(ROOT / "assets/configs/tiny_t2v.yaml", ["parallel.activation_checkpointing=false"])
    device = torch.device("meta")  # a stand-in for the GPU
    policy = build_policy(cfg.model, device, cfg.model.tiny_text_dim, cfg.model.tiny_pooled_dim)
    assert all(p.device.type == "cpu" for p in policy.transformer.parameters())
    assert all(p.is_meta for p in policy.vae.parameters())
    parallelize(policy, World(0, 1, device, None), cfg)
    assert all(p.is_meta for p in policy.transformer.parameters())


def test_the_ranks_of_a_node_load_the_network_in_turns(tmp_path):
    """parallel.loaders_per_node=1: rank 1 starts loading once rank 0 has sharded its
    network (one fp32 copy in host memory at a time); 0: both at once."""
    spans = {}
    for per_node in (1, 0):
        out = tmp_path / str(per_node)
        run([DIST / "loading_turns.py", *COMMON, f"parallel.loaders_per_node={per_node}", f"train.output_dir={out}"],
            nproc=2)
        spans[per_node] = [json.loads((out / f"load-{rank}.json").read_text()) for rank in (0, 1)]
    first, second = spans[1]
    assert first["end"] <= second["start"]
    first, second = spans[0]
    assert second["start"] < first["end"] and first["start"] < second["end"]


def test_loading_turns():
    from fastvideo_grpo.parallel.loading import loading_turns

    assert [loading_turns(1, r, 8) for r in (0, 3, 7)] == [(0, 8), (3, 8), (7, 8)]
    assert [loading_turns(3, r, 8) for r in (0, 2, 3, 7)] == [(0, 3), (0, 3), (1, 3), (2, 3)]
    assert loading_turns(0, 5, 8) == loading_turns(8, 5, 8) == (0, 1)


def test_the_rollout_gathers_the_network_once_unless_it_reshards(tmp_path):
    """parallel.rollout_reshard=always: every forward all-gathers every block (the root's
    own weights stay gathered, FSDP2's root rule); never: each block once per rollout; auto
    on CPU: never. The latents are the same, and the network is sharded again after."""
    path = tmp_path / "gathers.pt"
    run([DIST / "rollout_gathers.py", path, "sampling.group_size=4", "sampling.num_steps=4"], nproc=2)
    report = torch.load(path)
    blocks = report["blocks"]
    always, never, auto = report["always"], report["never"], report["auto"]
    assert always["forwards"] == never["forwards"] >= 4
    assert always["all_gathers"] == 1 + always["forwards"] * blocks
    assert never["all_gathers"] == 1 + blocks == auto["all_gathers"]
    assert torch.equal(always["latents"], never["latents"])
    assert always["resharded"] and never["resharded"] and auto["resharded"]


def test_auto_keeps_the_network_gathered_when_it_takes_at_most_half_the_free_memory():
    from fastvideo_grpo.parallel.fsdp import rollout_keeps_gathered

    gb = 2**30
    assert rollout_keeps_gathered("auto", 25 * gb, 60 * gb)
    assert not rollout_keeps_gathered("auto", 25 * gb, 40 * gb)
    assert rollout_keeps_gathered("auto", 25 * gb, None)  # CPU
    assert rollout_keeps_gathered("never", 25 * gb, 1) and not rollout_keeps_gathered("always", 1, 60 * gb)


@pytest.mark.parametrize("config", ["tiny_t2v.yaml", "tiny_flux_t2i.yaml"])
def test_the_rope_tables_reach_the_attention_in_fp32_under_bf16_fsdp(config, monkeypatch):
    """FSDP2's cast_forward_inputs would round the (cos, sin) tables to bf16 on every block;
    the blocks' other floating inputs are still cast to the compute dtype."""
    import torch.distributed as dist

    from fastvideo_grpo.parallel import init_distributed
    from fastvideo_grpo.parallel.fsdp import parallelize
    from helpers import tiny_conditioning

    cfg = load_config(ROOT / "assets/configs" / config, ["model.dtype=bf16"])
    monkeypatch.setenv("RANK", "0")
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        policy = tiny_policy(cfg)
        parallelize(policy, init_distributed("cpu", 1, 1), cfg)
        seen = {}

        def record(module, args, kwargs):
            seen.setdefault("rope", {t.dtype for t in kwargs["image_rotary_emb"]})
            seen.setdefault("hidden", kwargs["hidden_states"].dtype)

        for block in policy.blocks:
            block.attn.register_forward_pre_hook(record, with_kwargs=True)
        s = cfg.sampling
        latents = torch.randn(1, *policy.latent_shape(s.num_frames, s.height, s.width))
        with torch.no_grad():
            policy.predict(latents, 0.5, tiny_conditioning(cfg, ["a red ball"], 1))
    finally:
        dist.destroy_process_group()
    assert seen == {"rope": {torch.float32}, "hidden": torch.bfloat16}
