#!/usr/bin/env bash
#SBATCH --job-name=grpo-sd-t2i
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=64
#SBATCH --time=24:00:00
#SBATCH --signal=USR1@120
#SBATCH --requeue
#SBATCH --output=logs/%x-%j.out
#
# GRPO on Stable Diffusion 1.4 T2I with classifier-free guidance (one node of 8 GPUs in the
# paper). Submit with `sbatch train_scripts/train_sd_t2i.sh`, or run with plain `bash` for a
# local torchrun. This sets the config and reward path and runs launch.sh (srun torchrun
# with c10d rendezvous, preemption and requeue). Environment as there (CONFIG, MODEL_PATH, EMBEDDINGS_DIR, OUTPUT_DIR, NPROC_PER_NODE,
# MASTER_PORT, TORCHRUN; the embeddings folder must hold negative.safetensors, which
# data_preprocess/preprocess_sd_embeddings.py writes), plus
#   HPS_PATH        HPS_v2.1_compressed.pt (sets reward.models.hps.path)
# Arguments are config overrides: bash train_sd_t2i.sh train.lr=2e-5 model.cfg_scale=7.5
set -euo pipefail

# sbatch runs a copy of this script from SLURM's spool folder; SLURM knows where the original is.
script=$0
[ -n "${SLURM_JOB_ID:-}" ] && script=$(scontrol show job "$SLURM_JOB_ID" | sed -n 's/^ *Command=\([^ ]*\).*/\1/p')
HERE=$(cd "$(dirname "$script")" && pwd)
# Relative paths (CONFIG, MODEL_PATH, ..., overrides) mean the folder the job was submitted or
# started from, under sbatch and bash alike.
[ -n "${SLURM_SUBMIT_DIR:-}" ] && cd "$SLURM_SUBMIT_DIR"

export CONFIG=${CONFIG:-$HERE/../assets/configs/sd_t2i.yaml}
OVERRIDES=("$@")
[ -n "${HPS_PATH:-}" ] && OVERRIDES=("reward.models.hps.path=$HPS_PATH" "${OVERRIDES[@]}")
exec bash "$HERE/launch.sh" "${OVERRIDES[@]}"
