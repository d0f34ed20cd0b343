#!/usr/bin/env bash
#SBATCH --job-name=grpo-hunyuan-t2v
#SBATCH --nodes=8
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=64
#SBATCH --time=72:00:00
#SBATCH --signal=USR1@120
#SBATCH --requeue
#SBATCH --output=logs/%x-%j.out
#
# GRPO on HunyuanVideo T2V. Submit with `sbatch train_scripts/train_hunyuan_t2v.sh`, or run
# with plain `bash` for a local torchrun. Settings come from the environment:
#   CONFIG          YAML config (default: the paper's HunyuanVideo settings)
#   MODEL_PATH      local diffusers-format HunyuanVideo folder (sets model.path)
#   OUTPUT_DIR      run folder (sets train.output_dir)
#   NPROC_PER_NODE  processes per node (default: GPUs on the node, else 1)
#   MASTER_PORT     rendezvous port under SLURM (default 29500)
#   TORCHRUN        launcher (default: torchrun from PATH)
# Arguments are config overrides: bash train_hunyuan_t2v.sh train.lr=2e-5 parallel.sp_size=4
set -euo pipefail

if [ -n "${SLURM_SUBMIT_DIR:-}" ]; then
    cd "$SLURM_SUBMIT_DIR"
else
    cd "$(dirname "$0")/.."
fi

CONFIG=${CONFIG:-assets/configs/hunyuan_t2v.yaml}
TORCHRUN=${TORCHRUN:-torchrun}
OVERRIDES=("$@")
[ -n "${MODEL_PATH:-}" ] && OVERRIDES=("model.path=$MODEL_PATH" "${OVERRIDES[@]}")
[ -n "${OUTPUT_DIR:-}" ] && OVERRIDES=("train.output_dir=$OUTPUT_DIR" "${OVERRIDES[@]}")

gpus_on_node() {
    if [ -n "${SLURM_GPUS_ON_NODE:-}" ]; then
        echo "$SLURM_GPUS_ON_NODE"
    elif command -v nvidia-smi >/dev/null 2>&1; then
        nvidia-smi -L | wc -l
    else
        echo 1
    fi
}
NPROC_PER_NODE=${NPROC_PER_NODE:-$(gpus_on_node)}
TRAIN=(--module fastvideo_grpo.train --config "$CONFIG" "${OVERRIDES[@]}")

if [ -n "${SLURM_JOB_ID:-}" ]; then
    MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
    MASTER_PORT=${MASTER_PORT:-29500}
    echo "job $SLURM_JOB_ID: $SLURM_NNODES node(s) x $NPROC_PER_NODE, rendezvous $MASTER_ADDR:$MASTER_PORT"
    srun --export=ALL "$TORCHRUN" \
        --nnodes "$SLURM_NNODES" --nproc_per_node "$NPROC_PER_NODE" \
        --rdzv_id "$SLURM_JOB_ID" --rdzv_backend c10d --rdzv_endpoint "$MASTER_ADDR:$MASTER_PORT" \
        "${TRAIN[@]}"
else
    "$TORCHRUN" --standalone --nproc_per_node "$NPROC_PER_NODE" "${TRAIN[@]}"
fi
