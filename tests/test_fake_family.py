"""A model family added from outside the package (tests/family_plugins.py, named in
model.plugins), with blocks named like Wan's (`blocks.N`), runs everything a family needs
without an edit to fastvideo_grpo/: training in a fresh process (which imports the plugin
itself), its FLOP count every iteration, LoRA on its own target modules, export of the merged
and the adapter-only weights, and the planner on its published configuration."""

from __future__ import annotations

import ast
import dataclasses
import json
import os
import re
import sys

import pytest
import torch
from safetensors.torch import load_file

from conftest import ROOT
from fastvideo_grpo.checkpoint import latest_checkpoint
from fastvideo_grpo.config import ConfigError, ModelConfig, load_config
from fastvideo_grpo.cli.export import export, load_trained_transformer
from fastvideo_grpo.flops import forward_flops
from fastvideo_grpo.models import FAMILIES, ModelFamily, model_family, register_family
from fastvideo_grpo.models.flop_count import counter
from fastvideo_grpo.planning.cluster import Cluster
from fastvideo_grpo.planning.plan import plan
from fastvideo_grpo.training.trainer import train
from helpers import read_jsonl, run, tiny_conditioning, tiny_policy

CONFIG = ROOT / "assets/configs/tiny_flux_t2i.yaml"
FAKE = ["model.family=fake_wan", "model.plugins=[family_plugins]"]
# The plugin is a module name: the fresh process finds it on its path, as a user's installed module.
PLUGIN_PATH = {"PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
LORA_RANK = 4


@pytest.fixture(scope="module", autouse=True)
def plugin():
    """The plugin module, imported as model.plugins imports it; its families are unregistered
    after this file's tests, so that the suite's other tests see the package's families only."""
    model_family(ModelConfig(family="fake_wan", plugins=["family_plugins"]))
    yield sys.modules["family_plugins"]
    for name in ("fake_wan", "fake_wan_from_file"):
        FAMILIES.pop(name, None)
    for name in [n for n in sys.modules if n == "family_plugins" or n.startswith("model_plugin:")]:
        del sys.modules[name]


def fake(*overrides):
    return load_config(CONFIG, [*FAKE, f"data.prompts_file={ROOT / 'assets/prompts/tiny.txt'}", *overrides])


def test_a_family_needs_a_flop_count_and_a_name_of_its_own(plugin):
    with pytest.raises(TypeError, match="ModelFamily 'no_flops': forward_flops must be a function, got None"):
        dataclasses.replace(plugin.FAMILY, name="no_flops", forward_flops=None)
    with pytest.raises(ValueError, match="model family 'fake_wan' is already registered"):
        register_family(dataclasses.replace(plugin.FAMILY, lora_targets=["to_q"]))
    assert register_family(plugin.FAMILY) is FAMILIES["fake_wan"]  # the same entry again: a no-op


def test_model_plugins_are_imported_before_the_family_is_looked_up(tmp_path, plugin):
    plugin_file = tmp_path / "another_family.py"
    plugin_file.write_text("import dataclasses\nfrom family_plugins import FAMILY\nfrom fastvideo_grpo.models import "
                           "register_family\nregister_family(dataclasses.replace(FAMILY, name='fake_wan_from_file'))\n")
    with pytest.raises(ConfigError, match="model.family: 'fake_wan_from_file' is not one of"):
        model_family(ModelConfig(family="fake_wan_from_file"))
    family = model_family(ModelConfig(family="fake_wan_from_file", plugins=[str(plugin_file)]))
    assert isinstance(family, ModelFamily) and family.network is plugin.FakeWanNetwork
    with pytest.raises(ConfigError, match=r"model.plugins\[1\]: importing 'no_such_module' failed: "
                                          "ModuleNotFoundError"):
        model_family(ModelConfig(family="fake_wan", plugins=[str(plugin_file), "no_such_module"]))


def test_its_flop_count_is_what_flop_counter_mode_counts():
    cfg = fake("model.tiny_layers=3")
    policy = tiny_policy(cfg)
    s = cfg.sampling
    x = torch.randn(2, *policy.latent_shape(s.num_frames, s.height, s.width))
    cond = tiny_conditioning(cfg, ["a red cube", "the blue sky at noon"], 1)
    with torch.no_grad(), counter() as count:
        policy.predict(x, 0.5, cond)
    assert forward_flops(cfg.model, policy.transformer, tuple(x.shape[1:]), policy.text_tokens(cond)) == \
        count.get_total_flops() / 2


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    """Two iterations of a LoRA run of the fake family by `python -m fastvideo_grpo.train`."""
    out = tmp_path_factory.mktemp("fake_wan_run")
    run(["-m", "fastvideo_grpo.train", "--config", CONFIG, *FAKE, f"train.output_dir={out}", "train.iterations=2",
         "train.progress_bar=false", "train.sample_every=0", "checkpoint.every=2", f"model.lora_rank={LORA_RANK}",
         "train.prompts_per_iteration=1", "sampling.num_steps=4"], env=PLUGIN_PATH)
    return out


def test_it_trains_with_lora_on_its_own_blocks(lora_run):
    rows = read_jsonl(lora_run / "metrics.jsonl")
    assert [row["iteration"] for row in rows] == [0, 1]
    assert all(row["tflops_per_gpu"] > 0 for row in rows)  # its FLOP count, every iteration
    network = load_trained_transformer(latest_checkpoint(lora_run))
    adapted = {name.rsplit(".lora_", 1)[0] for name, _ in network.named_parameters() if ".lora_" in name}
    layers = network.config["num_layers"]
    assert adapted == {f"blocks.{i}.{module}" for i in range(layers)
                       for module in ("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out", "ffn.0", "ffn.2")}
    # lora_B starts at zero: two iterations of training moved every one.
    assert all(p.abs().max() > 0 for name, p in network.named_parameters() if "lora_B" in name)


def test_its_export_loads_as_its_network_and_its_adapter_reproduces_it(lora_run, tmp_path, plugin):
    checkpoint = latest_checkpoint(lora_run)
    merged_folder = export(checkpoint, tmp_path / "merged")
    assert json.loads((merged_folder / "transformer" / "config.json").read_text())["_class_name"] == "FakeWanNetwork"
    merged = plugin.FakeWanNetwork.from_pretrained(merged_folder, subfolder="transformer").eval()

    adapter_folder = export(checkpoint, tmp_path / "adapter", adapter_only=True)
    weights = load_file(adapter_folder / "pytorch_lora_weights.safetensors")
    assert weights and all(key.startswith("transformer.blocks.") for key in weights)
    base = tiny_policy(load_config(lora_run / "config.yaml")).transformer
    base.load_lora_adapter(weights, prefix="transformer", adapter_name="default")

    cfg = load_config(lora_run / "config.yaml")
    latents = torch.randn(2, 4, cfg.sampling.height // 8, cfg.sampling.width // 8)
    text = torch.randn(2, 5, cfg.model.tiny_text_dim)
    inputs = (latents, torch.tensor([500.0, 250.0]), text, torch.ones(2, 5, dtype=torch.long))
    with torch.no_grad():
        untrained = tiny_policy(cfg).transformer(*inputs)
        assert (merged(*inputs) - untrained).abs().max() > 1e-6  # the trained adapter is in the merged weights
        torch.testing.assert_close(base(*inputs), merged(*inputs), rtol=1e-5, atol=1e-5)


def test_the_planner_plans_its_published_configuration(plugin):
    overrides = [*FAKE, "model.size=full", "model.dtype=bf16", "train.prompts_per_iteration=1"]
    planned = plan(CONFIG, overrides, Cluster(nodes=1, gpus_per_node=1, gpu_memory_gb=80, reserve_gb=0),
                   knobs=False)
    assert planned["family"] == "fake_wan"
    assert planned["architecture"] == "released Fake-Wan-1.3B config (model.path is empty)"
    with torch.device("meta"):
        network = plugin.FakeWanNetwork(**plugin.PUBLISHED_NETWORK)
    assert planned["parameters"] == sum(p.numel() for p in network.parameters())
    s = fake().sampling  # the full-size run's sizes: the config's
    row = plugin.fake_wan_flops(network, (4, s.height // 8, s.width // 8), 512)
    assert planned["flops"]["rollout"] == int(planned["forwards"]["rollout"] * row) > 0


def test_a_full_fine_tune_exports_as_its_network(tmp_path, plugin):
    """Without LoRA the checkpoint's network is rebuilt from its config as the family's class."""
    cfg = fake(f"train.output_dir={tmp_path / 'run'}", "train.iterations=1", "train.progress_bar=false",
               "train.sample_every=0", "checkpoint.every=1", "train.prompts_per_iteration=1", "sampling.num_steps=4")
    initial = tiny_policy(cfg).transformer.state_dict()
    train(cfg)
    checkpoint = latest_checkpoint(tmp_path / "run")
    trained = load_trained_transformer(checkpoint).state_dict()
    exported = plugin.FakeWanNetwork.from_pretrained(export(checkpoint, tmp_path / "out"), subfolder="transformer")
    assert exported.state_dict().keys() == trained.keys()
    for name, value in exported.state_dict().items():
        torch.testing.assert_close(value, trained[name], rtol=0, atol=0)
    assert any(not torch.equal(trained[name], initial[name]) for name in initial)  # training moved them


# The shapes model (its VAE and its pretraining) is a HunyuanVideo checkpoint by construction.
HUNYUAN_VIDEO_TOOLS = ("fastvideo_grpo/pretrain.py", "fastvideo_grpo/shapes/")
NETWORK_CLASS = re.compile(r"^(HunyuanVideo|Flux|UNet2D|StableDiffusion|AutoencoderKL)")


def test_shared_code_names_no_family_and_no_network_class():
    """Outside models/, no import, name or attribute of a family's network or pipeline class
    or block names, and no string of a family's name but model.family's default: what a
    family is, shared code asks its registry entry."""
    found = []
    for path in sorted((ROOT / "fastvideo_grpo").rglob("*.py")):
        relative = path.relative_to(ROOT).as_posix()
        if relative.startswith(("fastvideo_grpo/models/", *HUNYUAN_VIDEO_TOOLS)):
            continue
        tree = ast.parse(path.read_text())
        default_family = {id(node.value) for node in ast.walk(tree)
                          if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", None) == "family"}
        for node in ast.walk(tree):
            names = ([alias.name for alias in node.names] if isinstance(node, (ast.Import, ast.ImportFrom))
                     else [node.id] if isinstance(node, ast.Name) else [node.attr] if isinstance(node, ast.Attribute)
                     else [])
            found += [f"{relative}:{node.lineno}: {name}" for name in names
                      if NETWORK_CLASS.match(name) or name == "transformer_blocks"]
            if (isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in default_family
                    and (node.value in FAMILIES or "transformer_blocks" in node.value)):
                found.append(f"{relative}:{node.lineno}: {node.value!r}")
    assert found == []
