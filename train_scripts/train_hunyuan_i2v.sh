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
# run with plain `bash` for a local torchrun. The launch (srun torchrun with c10d rendezvous,
# preemption and requeue) is the flagship's: this sets the config and the first-frame
# latents and runs train_hunyuan_t2v.sh. Environment as there (CONFIG, MODEL_PATH,
# EMBEDDINGS_DIR with negative.safetensors, VIDEOALIGN_PATH, VIDEOALIGN_BASE, OUTPUT_DIR,
# NPROC_PER_NODE, MASTER_PORT, TORCHRUN), plus
#   LATENTS_DIR     first-frame latents, one per prompt (data_preprocess/preprocess_latents.py;
#                   sets data.image_latents_dir)
# Arguments are config overrides: bash train_hunyuan_i2v.sh train.lr=2e-5 model.cfg_scale=5.0
set -euo pipefail

if [ -n "${SLURM_SUBMIT_DIR:-}" ]; then
    cd "$SLURM_SUBMIT_DIR"
else
    cd "$(dirname "$0")/.."
fi

export CONFIG=${CONFIG:-assets/configs/hunyuan_i2v.yaml}
OVERRIDES=("$@")
[ -n "${LATENTS_DIR:-}" ] && OVERRIDES=("data.image_latents_dir=$LATENTS_DIR" "${OVERRIDES[@]}")
exec bash train_scripts/train_hunyuan_t2v.sh "${OVERRIDES[@]}"
