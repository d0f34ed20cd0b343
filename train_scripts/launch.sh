#!/usr/bin/env bash
# The launch every train_*.sh script execs once it has set CONFIG (and its model's own
# paths): the preflight, then torchrun under SLURM (srun, c10d rendezvous, preemption and
# requeue) or on this machine. The train_*.sh scripts are what one submits (sbatch) or runs
# (bash); this can be run with bash too, given a CONFIG. Settings come from the environment:
#   CONFIG          YAML config (required)
#   MODEL_PATH      local diffusers-format model folder (sets model.path)
#   EMBEDDINGS_DIR  precomputed prompt embeddings (sets data.embeddings_dir)
#   OUTPUT_DIR      run folder (sets train.output_dir)
#   REWARD_GPUS     GPUs per node kept for the reward process (default 1: every shipped
#                   config scores on reward.device cuda:7, a GPU no training rank shares)
#   NPROC_PER_NODE  training processes per node (default: GPUs on the node less REWARD_GPUS,
#                   at least 1)
#   MASTER_PORT     rendezvous port under SLURM (default 20000 + job id mod 20000, so
#                   jobs that share a node do not take each other's port)
#   TORCHRUN        launcher (default: torchrun from PATH)
#   PYTHON          interpreter of the preflight (default: python from PATH)
#   PREFLIGHT_ONLY  1: run only the preflight (`python -m fastvideo_grpo.train --check`), e.g.
#                   on the login node before sbatch, and exit
# Relative paths are taken from the folder the command was typed in (sbatch's submit folder).
# Arguments are config overrides: bash launch.sh train.lr=2e-5 parallel.sp_size=4
#
# Preemption: SLURM sends USR1 120 s before the time limit (and SIGTERM on preemption); the
# trainer finishes its iteration, checkpoints and exits, and this script requeues the job,
# which resumes from output_dir/checkpoints/latest.
set -euo pipefail

# sbatch runs a copy of the submitted script from SLURM's spool folder; SLURM knows where the
# original is (a train_*.sh script beside this one, or this one).
script=$0
[ -n "${SLURM_JOB_ID:-}" ] && script=$(scontrol show job "$SLURM_JOB_ID" | sed -n 's/^ *Command=\([^ ]*\).*/\1/p')
HERE=$(cd "$(dirname "$script")" && pwd)
# Relative paths (CONFIG, MODEL_PATH, ..., overrides) mean the folder the job was submitted or
# started from, under sbatch and bash alike.
[ -n "${SLURM_SUBMIT_DIR:-}" ] && cd "$SLURM_SUBMIT_DIR"

CONFIG=${CONFIG:?set CONFIG to a YAML config (assets/configs/), or run one of the train_*.sh scripts}
TORCHRUN=${TORCHRUN:-torchrun}
OVERRIDES=("$@")
[ -n "${MODEL_PATH:-}" ] && OVERRIDES=("model.path=$MODEL_PATH" "${OVERRIDES[@]}")
[ -n "${EMBEDDINGS_DIR:-}" ] && OVERRIDES=("data.embeddings_dir=$EMBEDDINGS_DIR" "${OVERRIDES[@]}")
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
# A training rank on the reward process's GPU would hold both and make every collective
# wait while it scores (`python -m fastvideo_grpo.plan --ranks-per-node` checks the placement).
REWARD_GPUS=${REWARD_GPUS:-1}
export GPUS_PER_NODE=$(gpus_on_node)
export NPROC_PER_NODE=${NPROC_PER_NODE:-$(( GPUS_PER_NODE > REWARD_GPUS ? GPUS_PER_NODE - REWARD_GPUS : 1 ))}
export PYTHONPATH="$HERE/..${PYTHONPATH:+:$PYTHONPATH}"
TRAIN=(--module fastvideo_grpo.train --config "$CONFIG" "${OVERRIDES[@]}")

# Every problem of the config, its paths and this job's GPU count at once, in seconds, before
# any node loads a model (and before the queue, with PREFLIGHT_ONLY=1 on a login node).
"${PYTHON:-python}" -m fastvideo_grpo.train --check --config "$CONFIG" "${OVERRIDES[@]}"
[ -n "${PREFLIGHT_ONLY:-}" ] && exit 0

if [ -n "${SLURM_JOB_ID:-}" ]; then
    MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
    MASTER_PORT=${MASTER_PORT:-$((20000 + SLURM_JOB_ID % 20000))}
    # torchrun reports any worker exit as 1: the trainer leaves this file when it stopped
    # for preemption (on the shared submit folder, whichever node rank 0 is on). A name of
    # this start's own: job ids repeat across clusters that share a submit folder, and after
    # a controller loses its state, and another job's start would delete this job's file.
    mkdir -p "$PWD/.fvgrpo"
    export FVGRPO_PREEMPT_MARKER
    FVGRPO_PREEMPT_MARKER=$(mktemp -u "$PWD/.fvgrpo/preempted-$SLURM_JOB_ID.XXXXXXXX")
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
    [ "$status" -ne 0 ] && echo "job $SLURM_JOB_ID: torchrun exited with $status, not preempted: no requeue" >&2
    exit "$status"
else
    "$TORCHRUN" --standalone --nproc_per_node "$NPROC_PER_NODE" "${TRAIN[@]}"
fi
