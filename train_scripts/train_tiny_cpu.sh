#!/usr/bin/env bash
# The CPU demo, end to end as on a cluster but tiny: write a diffusers-format HunyuanVideo
# folder with random weights, precompute the prompts' text embeddings with the offline
# CLI, then train the HunyuanVideo-architecture policy on them against the colour rule
# reward. Extra arguments are config overrides, e.g. train.iterations=50.
set -euo pipefail
cd "$(dirname "$0")/.."
# One thread: the tiny model gains nothing from more, and a fixed thread count keeps the
# run's floating-point sums, and so its numbers, the same on every machine.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
CONFIG=${CONFIG:-assets/configs/tiny_t2v.yaml}
PROMPTS=${PROMPTS:-assets/prompts/tiny.txt}
MODEL_DIR=${MODEL_DIR:-outputs/tiny_hunyuan}
EMBEDDINGS_DIR=${EMBEDDINGS_DIR:-outputs/tiny_embeddings}
OUTPUT_DIR=${OUTPUT_DIR:-outputs/tiny_demo}

if [ ! -f "$MODEL_DIR/model_index.json" ]; then
    python -m fastvideo_grpo.models.tiny hunyuan_video "$MODEL_DIR"
fi
# Finished shards are skipped, so re-running the demo encodes nothing twice.
python data_preprocess/preprocess_hunyuan_embeddings.py --model-path "$MODEL_DIR" --prompts "$PROMPTS" \
    --output "$EMBEDDINGS_DIR" --device cpu --dtype fp32 --max-tokens 16
python -m fastvideo_grpo.train --config "$CONFIG" data.embeddings_dir="$EMBEDDINGS_DIR" \
    train.output_dir="$OUTPUT_DIR" "$@"
python - "$OUTPUT_DIR/metrics.jsonl" <<'PY'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
k = max(1, len(rows) // 5)
first = sum(r["reward_mean"] for r in rows[:k]) / k
last = sum(r["reward_mean"] for r in rows[-k:]) / k
print(f"reward_mean: first {k} iterations {first:.4f} -> last {k} iterations {last:.4f} ({last - first:+.4f})")
PY
