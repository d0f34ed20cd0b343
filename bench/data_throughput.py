"""Offline encoding and dataset reading throughput on the tiny HunyuanVideo encoders.

    python bench/data_throughput.py

Prints prompts/s of the preprocessing CLI with 1 and 2 ranks (wall time of the whole
command, start-up included), and samples/s of reading random batches of conditioning
from the sharded dataset vs indexing the same tensors held in memory.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fastvideo_grpo.data.embeddings import EmbeddingDataset  # noqa: E402
from fastvideo_grpo.models.hunyuan_video.tiny import write_folder as write_tiny_hunyuan_folder  # noqa: E402
from fastvideo_grpo.models.tiny.text_encoders import WORDS  # noqa: E402

NUM_PROMPTS = 2048


def encode(model: Path, prompts: Path, out: Path, nproc: int) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [str(ROOT / "data_preprocess/preprocess_hunyuan_embeddings.py"), "--model-path", str(model),
           "--prompts", str(prompts), "--output", str(out), "--device", "cpu", "--shard-size", "256",
           "--batch-size", "32"]
    launcher = [sys.executable] if nproc == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                      f"--nproc_per_node={nproc}"]
    start = time.perf_counter()
    subprocess.run(launcher + cmd, check=True, env=env, capture_output=True)
    return NUM_PROMPTS / (time.perf_counter() - start)


def main() -> None:
    rng = random.Random(0)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = write_tiny_hunyuan_folder(tmp / "model")
        prompts = tmp / "prompts.txt"
        prompts.write_text("\n".join(" ".join(rng.choices(WORDS, k=rng.randint(4, 20)))
                                     for _ in range(NUM_PROMPTS)) + "\n")
        rate = {n: encode(model, prompts, tmp / f"emb{n}", n) for n in (1, 2)}
        print(f"preprocessing: 1 rank {rate[1]:.0f} prompts/s, 2 ranks {rate[2]:.0f} prompts/s "
              f"-> ratio {rate[2] / rate[1]:.2f}")

        data = EmbeddingDataset(tmp / "emb1")
        everything = data.conditioning(list(range(len(data))))
        batches = [rng.sample(range(len(data)), 8) for _ in range(200)]
        start = time.perf_counter()
        for batch in batches:
            data.conditioning(batch)
        disk = len(batches) * 8 / (time.perf_counter() - start)
        start = time.perf_counter()
        for batch in batches:
            everything.select(torch.tensor(batch))
        memory = len(batches) * 8 / (time.perf_counter() - start)
        print(f"dataset reads: {disk:.0f} samples/s from shards, {memory:.0f} samples/s from one in-memory "
              f"tensor -> ratio {disk / memory:.3f}")


if __name__ == "__main__":
    main()
