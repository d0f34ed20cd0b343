#!/usr/bin/env bash
#SBATCH --job-name=grpo-wan22-t2v-a14b
#SBATCH --nodes=4
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=64
#SBATCH --time=72:00:00
#SBATCH --signal=USR1@120
#SBATCH --requeue
#SBATCH --output=logs/%x-%j.out
#
# GRPO on Wan2.2 T2V-A14B (both experts) with the VideoAlign reward. Submit with
# `sbatch train_scripts/train_wan22_t2v_a14b.sh`, or run with plain `bash` for a local torchrun.
# This sets the config and reward paths and runs launch.sh (srun torchrun with c10d
# rendezvous, preemption and requeue). Environment as there (CONFIG, default
# assets/configs/wan22_t2v_a14b.yaml; MODEL_PATH, EMBEDDINGS_DIR, OUTPUT_DIR, REWARD_GPUS, NPROC_PER_NODE,
# MASTER_PORT, TORCHRUN, PYTHON, PREFLIGHT_ONLY), plus
#   VIDEOALIGN_PATH VideoReward checkpoint folder (sets reward.models.videoalign.path)
#   VIDEOALIGN_BASE local Qwen2-VL-2B-Instruct folder (sets reward.models.videoalign.base)
# Arguments are config overrides: bash train_wan22_t2v_a14b.sh model.train_experts=low
set -euo pipefail

# sbatch runs a copy of this script from SLURM's spool folder; SLURM knows where the original is.
script=$0
[ -n "${SLURM_JOB_ID:-}" ] && script=$(scontrol show job "$SLURM_JOB_ID" | sed -n 's/^ *Command=\([^ ]*\).*/\1/p')
HERE=$(cd "$(dirname "$script")" && pwd)
# Relative paths (CONFIG, MODEL_PATH, ..., overrides) mean the folder the job was submitted or
# started from, under sbatch and bash alike.
[ -n "${SLURM_SUBMIT_DIR:-}" ] && cd "$SLURM_SUBMIT_DIR"

export CONFIG=${CONFIG:-$HERE/../assets/configs/wan22_t2v_a14b.yaml}
OVERRIDES=("$@")
[ -n "${VIDEOALIGN_PATH:-}" ] && OVERRIDES=("reward.models.videoalign.path=$VIDEOALIGN_PATH" "${OVERRIDES[@]}")
[ -n "${VIDEOALIGN_BASE:-}" ] && OVERRIDES=("reward.models.videoalign.base=$VIDEOALIGN_BASE" "${OVERRIDES[@]}")
exec bash "$HERE/launch.sh" "${OVERRIDES[@]}"
