#!/usr/bin/env bash
#SBATCH --job-name=grpo-hunyuan-i2v
#SBATCH --nodes=4
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=64
#SBATCH --time=72:00:00
#SBATCH --signal=USR1@120
#SBATCH --requeue
#SBATCH --output=logs/%x-%j.out
#
# GRPO on HunyuanVideo image-to-video with classifier-free guidance and the motion-quality
# reward (32 GPUs in the paper). Submit with `sbatch train_scripts/train_hunyuan_i2v.sh`, or
# run with plain `bash` for a local torchrun. Settings come from the environment:
#   CONFIG          YAML config (default: assets/configs/hunyuan_i2v.yaml)
#   MODEL_PATH      local diffusers-format HunyuanVideo-I2V folder (sets model.path)
#   EMBEDDINGS_DIR  precomputed prompt embeddings with negative.safetensors
#                   (sets data.embeddings_dir)
#   LATENTS_DIR     first-frame latents, one per prompt (data_preprocess/preprocess_latents.py;
#                   sets data.image_latents_dir)
#   OUTPUT_DIR      run folder (sets train.output_dir)
#   NPROC_PER_NODE  processes per node (default: GPUs on the node, else 1)
#   MASTER_PORT     rendezvous port under SLURM (default 29500)
#   TORCHRUN        launcher (default: torchrun from PATH)
# Arguments are config overrides: bash train_hunyuan_i2v.sh train.lr=2e-5 model.cfg_scale=5.0
#
# Preemption: SLURM sends USR1 120 s before the time limit (and SIGTERM on preemption); the
# trainer finishes its iteration, checkpoints and exits, and this script requeues the job,
# which resumes from output_dir/checkpoints/latest.
set -euo pipefail

if [ -n "${SLURM_SUBMIT_DIR:-}" ]; then
    cd "$SLURM_SUBMIT_DIR"
else
    cd "$(dirname "$0")/.."
fi

CONFIG=${CONFIG:-assets/configs/hunyuan_i2v.yaml}
TORCHRUN=${TORCHRUN:-torchrun}
OVERRIDES=("$@")
[ -n "${MODEL_PATH:-}" ] && OVERRIDES=("model.path=$MODEL_PATH" "${OVERRIDES[@]}")
[ -n "${EMBEDDINGS_DIR:-}" ] && OVERRIDES=("data.embeddings_dir=$EMBEDDINGS_DIR" "${OVERRIDES[@]}")
[ -n "${LATENTS_DIR:-}" ] && OVERRIDES=("data.image_latents_dir=$LATENTS_DIR" "${OVERRIDES[@]}")
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
    # torchrun reports any worker exit as 1: the trainer leaves this file when it stopped
    # for preemption (on the shared submit folder, whichever node rank 0 is on).
    export FVGRPO_PREEMPT_MARKER="$PWD/.fvgrpo/preempted-$SLURM_JOB_ID"
    rm -f "$FVGRPO_PREEMPT_MARKER"
    echo "job $SLURM_JOB_ID: $SLURM_NNODES node(s) x $NPROC_PER_NODE, rendezvous $MASTER_ADDR:$MASTER_PORT"
    # USR1 reaches every process of the step; torchrun itself must ignore it (its default
    # action is to die) while the workers catch it. SIG_IGN survives the exec.
    status=0
    srun --export=ALL bash -c 'trap "" USR1; exec "$@"' torchrun-ignoring-usr1 "$TORCHRUN" \
        --nnodes "$SLURM_NNODES" --nproc_per_node "$NPROC_PER_NODE" \
        --rdzv_id "$SLURM_JOB_ID" --rdzv_backend c10d --rdzv_endpoint "$MASTER_ADDR:$MASTER_PORT" \
        "${TRAIN[@]}" || status=$?
    if [ -f "$FVGRPO_PREEMPT_MARKER" ]; then
        rm -f "$FVGRPO_PREEMPT_MARKER"
        echo "job $SLURM_JOB_ID preempted after a checkpoint: requeueing"
        scontrol requeue "$SLURM_JOB_ID"
        exit 0
    fi
    exit "$status"
else
    "$TORCHRUN" --standalone --nproc_per_node "$NPROC_PER_NODE" "${TRAIN[@]}"
fi
