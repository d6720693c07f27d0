#!/usr/bin/env bash
# Multi-node, multi-GPU training with SLURM: srun starts one torchrun per node, which starts
# one process per GPU; torchrun's c10d rendezvous on the first node joins them. Arguments
# go to contrareg-train:
#   sbatch --nodes=2 --gres=gpu:4 --export=ALL,SIF=$PWD/contrareg-bids.sif,BIND=/data \
#       workflows/train_torchrun_multinode.sh --moving-list /data/t2w.tsv \
#       --fixed-list /data/t1w.tsv --out /data/runs/mcr
# Resubmitting (or --requeue after preemption) resumes from OUT/checkpoints/last.pt; OUT
# must be on a file system shared by the nodes (only rank 0 writes).
# NCCL: with --cleanenv, pass network settings explicitly, e.g.
#   APPTAINERENV_NCCL_SOCKET_IFNAME=ib0 (APPTAINERENV_* variables survive --cleanenv).
#
#SBATCH --job-name=contrareg-train
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=32
#SBATCH --gres=gpu:4
#SBATCH --time=24:00:00
#SBATCH --requeue
#SBATCH --output=contrareg-train-%j.log
set -euo pipefail

: "${SLURM_JOB_ID:?submit with sbatch}"
GPUS_PER_NODE=${GPUS_PER_NODE:-${SLURM_GPUS_ON_NODE:-4}}
head_node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
port=${MASTER_PORT:-29500}
threads=$((${SLURM_CPUS_PER_TASK:-8} / GPUS_PER_NODE))
threads=$((threads > 0 ? threads : 1))

cmd=(torchrun --nnodes "$SLURM_NNODES" --nproc_per_node "$GPUS_PER_NODE"
     --rdzv_id "$SLURM_JOB_ID" --rdzv_backend c10d --rdzv_endpoint "$head_node:$port"
     -m contrareg_bids.cli.train "$@")
if [[ -n "${SIF:-}" ]]; then
    binds=()
    if [[ -n "${BIND:-}" ]]; then
        binds=(-B "$BIND")
    fi
    srun --kill-on-bad-exit=1 "${APPTAINER:-apptainer}" run --nv --cleanenv \
        --env "OMP_NUM_THREADS=$threads" ${binds[@]+"${binds[@]}"} "$SIF" "${cmd[@]}"
else
    export OMP_NUM_THREADS="$threads"
    srun --kill-on-bad-exit=1 "${cmd[@]}"
fi
