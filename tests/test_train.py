"""The trainer's forward-call count and the demo script. Every family's training run and its
outputs (metrics, samples, reward curve, config): test_families.py."""

from fastvideo_grpo.config import load_config
from fastvideo_grpo.training.trainer import train
from helpers import read_jsonl


def test_forward_calls_are_rollout_plus_trained_steps(tiny_cfg):
    """No extra forward for old log-probs: G*N per prompt in rollout, then the trained steps."""
    from fastvideo_grpo.training import trainer

    tiny_cfg.train.iterations = 1
    counted = []
    original = trainer.build_policy

    def counting_policy(*args, **kwargs):
        policy = original(*args, **kwargs)
        policy.transformer.register_forward_hook(lambda m, inputs, kw, out: counted.append(kw["hidden_states"].shape[0]),
                                                 with_kwargs=True)
        return policy

    trainer.build_policy = counting_policy
    try:
        train(tiny_cfg)
    finally:
        trainer.build_policy = original
    s = tiny_cfg.sampling
    samples = tiny_cfg.train.prompts_per_iteration * s.group_size
    trained = int((s.num_steps - 1) * tiny_cfg.policy_update.timestep_fraction)
    assert sum(counted) == samples * s.num_steps + samples * trained
    assert len(counted) == (samples // s.rollout_batch_size) * (s.num_steps + trained)


def test_demo_script_encodes_prompts_offline_then_trains(tmp_path):
    """`make demo`'s script: tiny folder -> embeddings CLI -> training on those embeddings."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "MODEL_DIR": str(tmp_path / "model"), "EMBEDDINGS_DIR": str(tmp_path / "embeddings"),
           "OUTPUT_DIR": str(tmp_path / "run")}
    result = subprocess.run(["bash", "train_scripts/train_tiny_cpu.sh", "train.iterations=2", "train.sample_every=0",
                             "train.progress_bar=false"], cwd=root, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = read_jsonl(tmp_path / "embeddings" / "manifest.jsonl")
    prompts = [line.strip() for line in (root / "assets/prompts/tiny.txt").read_text().splitlines() if line.strip()]
    assert [row["prompt"] for row in manifest] == prompts
    run = load_config(tmp_path / "run" / "config.yaml")
    assert run.data.embeddings_dir == str(tmp_path / "embeddings")
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 2
    assert "reward_mean: first 1 iterations" in result.stdout
