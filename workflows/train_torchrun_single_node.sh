#!/usr/bin/env bash
# Multi-GPU training on one node: torchrun starts one DistributedDataParallel process per
# GPU (docs/training.md#multi-gpu). Arguments go to contrareg-train:
#   NGPUS=4 workflows/train_torchrun_single_node.sh \
#       --moving-list t2w.tsv --fixed-list t1w.tsv --out runs/mcr
# In the Apptainer image: SIF=contrareg-bids.sif BIND=/data,/scratch (folders to bind).
# Under SLURM: sbatch --gres=gpu:4 --cpus-per-task=32 workflows/train_torchrun_single_node.sh ...
# Running the same command again resumes from OUT/checkpoints/last.pt (e.g. after preemption).
#
#SBATCH --job-name=contrareg-train
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --time=24:00:00
#SBATCH --requeue
#SBATCH --output=contrareg-train-%j.log
set -euo pipefail

if [[ -z "${NGPUS:-}" ]]; then
    NGPUS=$(nvidia-smi --list-gpus 2>/dev/null | wc -l)
fi
if [[ "$NGPUS" -lt 1 ]]; then
    echo "no GPU found (set NGPUS); for the CPU run contrareg-train directly" >&2
    exit 75
fi
# CPU threads per process for data loading and augmentation (torchrun's default is 1).
cpus=${SLURM_CPUS_PER_TASK:-$(nproc)}
threads=$((cpus / NGPUS > 0 ? cpus / NGPUS : 1))

cmd=(torchrun --standalone --nnodes 1 --nproc_per_node "$NGPUS"
     -m contrareg_bids.cli.train "$@")
if [[ -n "${SIF:-}" ]]; then
    binds=()
    if [[ -n "${BIND:-}" ]]; then
        binds=(-B "$BIND")
    fi
    exec "${APPTAINER:-apptainer}" run --nv --cleanenv --env "OMP_NUM_THREADS=$threads" \
        ${binds[@]+"${binds[@]}"} "$SIF" "${cmd[@]}"
fi
export OMP_NUM_THREADS="$threads"
exec "${cmd[@]}"
