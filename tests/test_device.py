"""parallel.device=auto with CUDA unusable: a full-size model fails at once, naming why;
the tiny model falls back to the CPU."""

import re

import pytest
import torch

from conftest import ROOT
from fastvideo_grpo.training import trainer
from fastvideo_grpo.config import load_config
from fastvideo_grpo.parallel.distributed import pick_device

OLD_DRIVER = ("The NVIDIA driver on your system is too old (found version 11040). Please update your GPU driver by "
              "downloading and installing a new version from the URL: http://www.nvidia.com/Download/index.aspx")


@pytest.fixture
def cuda_unusable(monkeypatch):
    """CUDA as a CUDA build with a driver too old for it reports it."""
    def lazy_init():
        raise RuntimeError(OLD_DRIVER)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", "12.8")
    monkeypatch.setattr(torch.cuda, "_lazy_init", lazy_init)


def full_size_config(tmp_path):
    return load_config(ROOT / "assets/configs/tiny_t2v.yaml", [
        "model.size=full", f"model.path={tmp_path / 'model'}", f"data.embeddings_dir={tmp_path / 'embeddings'}",
        "parallel.device=auto", f"train.output_dir={tmp_path / 'run'}"])


def test_full_size_model_on_auto_fails_before_any_model_is_built(cuda_unusable, tmp_path, monkeypatch):
    built = []
    monkeypatch.setattr(trainer, "build_prompt_source", lambda cfg: built.append("prompts"))
    monkeypatch.setattr(trainer, "build_policy", lambda *args: built.append("policy"))
    with pytest.raises(RuntimeError) as error:
        trainer.setup(full_size_config(tmp_path))
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith("parallel.device=auto: a full-size model (model.size=full) needs CUDA")
    assert "The NVIDIA driver on your system is too old (found version 11040)" in message
    assert built == []


def test_cpu_only_build_is_named(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", None)
    monkeypatch.setattr(torch.version, "hip", None)
    with pytest.raises(RuntimeError, match=re.escape(f"torch {torch.__version__} is a CPU-only build")):
        pick_device("auto", needs_cuda=True)
    with pytest.raises(RuntimeError, match="parallel.device=cuda but CUDA is unusable: .* CPU-only build"):
        pick_device("cuda")


def test_tiny_model_and_explicit_cpu_fall_back_to_the_cpu(cuda_unusable):
    assert pick_device("auto") == torch.device("cpu")
    assert pick_device("cpu", needs_cuda=True) == torch.device("cpu")
