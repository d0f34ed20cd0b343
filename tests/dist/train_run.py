"""Run the trainer under torchrun (or alone) with overrides (after an optional
`--config FILE`, default the tiny T2V config); rank 0 saves the final transformer state
dict (gathered from FSDP shards) to <output_dir>/final_params.pt."""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import ROOT  # noqa: E402
from fastvideo_grpo.training import trainer  # noqa: E402
from fastvideo_grpo.config import load_config  # noqa: E402


def main():
    args = sys.argv[1:]
    config = ROOT / "assets/configs/tiny_t2v.yaml"
    if args[:1] == ["--config"]:
        config, args = Path(args[1]), args[2:]
    cfg = load_config(config, args)
    captured = {}
    original = trainer.shutdown

    def save_then_shutdown():
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        model = captured["c"].policy.transformer
        state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if captured["c"].world.is_main:
            torch.save(state, Path(cfg.train.output_dir) / "final_params.pt")
        original()

    original_setup = trainer.setup

    def capturing_setup(c):
        captured["c"] = original_setup(c)
        return captured["c"]

    trainer.setup, trainer.shutdown = capturing_setup, save_then_shutdown
    trainer.train(cfg)


if __name__ == "__main__":
    main()
