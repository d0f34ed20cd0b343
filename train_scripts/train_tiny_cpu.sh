#!/usr/bin/env bash
# The CPU demo: the tiny HunyuanVideo-architecture model learns the colour rule reward.
# Extra arguments are config overrides, e.g. train.iterations=50.
set -euo pipefail
cd "$(dirname "$0")/.."
CONFIG=${CONFIG:-assets/configs/tiny_t2v.yaml}
OUTPUT_DIR=${OUTPUT_DIR:-outputs/tiny_demo}
python -m fastvideo_grpo.train --config "$CONFIG" train.output_dir="$OUTPUT_DIR" "$@"
python - "$OUTPUT_DIR/metrics.jsonl" <<'PY'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
k = max(1, len(rows) // 5)
first = sum(r["reward_mean"] for r in rows[:k]) / k
last = sum(r["reward_mean"] for r in rows[-k:]) / k
print(f"reward_mean: first {k} iterations {first:.4f} -> last {k} iterations {last:.4f} ({last - first:+.4f})")
PY
