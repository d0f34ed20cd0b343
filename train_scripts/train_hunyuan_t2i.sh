#!/usr/bin/env bash
#SBATCH --job-name=grpo-hunyuan-t2i
#SBATCH --nodes=8
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=64
#SBATCH --time=72:00:00
#SBATCH --signal=USR1@120
#SBATCH --requeue
#SBATCH --output=logs/%x-%j.out
#
# GRPO on HunyuanVideo-T2I (one latent frame) with the HPS-v2.1 reward. Submit with
# `sbatch train_scripts/train_hunyuan_t2i.sh`, or run with plain `bash` for a local torchrun.
# This sets the config and reward paths and runs launch.sh (srun torchrun with c10d
# rendezvous, preemption and requeue). Environment as there
# (CONFIG, MODEL_PATH, EMBEDDINGS_DIR, OUTPUT_DIR, NPROC_PER_NODE, MASTER_PORT, TORCHRUN), plus
#   HPS_PATH        HPS_v2.1_compressed.pt (sets reward.models.hps.path)
# Arguments are config overrides: bash train_hunyuan_t2i.sh train.lr=2e-5
set -euo pipefail

# sbatch runs a copy of this script from SLURM's spool folder; SLURM knows where the original is.
script=$0
[ -n "${SLURM_JOB_ID:-}" ] && script=$(scontrol show job "$SLURM_JOB_ID" | sed -n 's/^ *Command=\([^ ]*\).*/\1/p')
HERE=$(cd "$(dirname "$script")" && pwd)
# Relative paths (CONFIG, MODEL_PATH, ..., overrides) mean the folder the job was submitted or
# started from, under sbatch and bash alike.
[ -n "${SLURM_SUBMIT_DIR:-}" ] && cd "$SLURM_SUBMIT_DIR"

export CONFIG=${CONFIG:-$HERE/../assets/configs/hunyuan_t2i.yaml}
OVERRIDES=("$@")
[ -n "${HPS_PATH:-}" ] && OVERRIDES=("reward.models.hps.path=$HPS_PATH" "${OVERRIDES[@]}")
exec bash "$HERE/launch.sh" "${OVERRIDES[@]}"
