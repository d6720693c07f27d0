#!/usr/bin/env bash
# One participant per SLURM array task, in the Apptainer image (docs/containers.md).
#
# Submit with one task per row of participants.tsv (at most 20 running at once):
#   n=$(($(wc -l < /data/bids/participants.tsv) - 1))
#   sbatch --array=1-"$n"%20 --export=ALL,BIDS_DIR=/data/bids,OUT_DIR=/data/out,\
#   WORK_ROOT=/scratch/$USER/work,SIF=$PWD/contrareg-bids.sif,MODEL=/data/models/m.safetensors \
#       workflows/slurm_participant_array.sh --reference dhcpVol
# On a GPU partition add: --gres=gpu:1 and USE_GPU=1 in --export.
# Arguments after the script name go to contrareg-bids. A task that is preempted or
# requeued resumes: its work folder ($WORK_ROOT/sub-<label>) keeps every finished node.
#
#SBATCH --job-name=contrareg-bids
#SBATCH --cpus-per-task=4
#SBATCH --mem=16G
#SBATCH --time=02:00:00
#SBATCH --requeue
#SBATCH --output=contrareg-%A_%a.log
set -euo pipefail

: "${BIDS_DIR:?set BIDS_DIR to the BIDS dataset}"
: "${OUT_DIR:?set OUT_DIR to the derivatives folder}"
: "${WORK_ROOT:?set WORK_ROOT to a scratch folder}"
: "${SIF:?set SIF to the contrareg-bids .sif image}"
: "${SLURM_ARRAY_TASK_ID:?submit with sbatch --array=1-N}"
MODEL=${MODEL:-}                    # a .safetensors bundle; empty with --registration ants
TEMPLATEFLOW_DIR=${TEMPLATEFLOW_DIR:-}  # optional host TemplateFlow folder (else built-in)
USE_GPU=${USE_GPU:-0}
APPTAINER=${APPTAINER:-apptainer}   # or singularity

# Row N of participants.tsv (after the header), column participant_id, without "sub-".
label=$(awk -F '\t' -v row="$SLURM_ARRAY_TASK_ID" '
    NR == 1 { for (i = 1; i <= NF; i++) if ($i == "participant_id") col = i; next }
    NR == row + 1 && col { print $col }' "$BIDS_DIR/participants.tsv" | tr -d '\r')
label=${label#sub-}
if [[ -z "$label" ]]; then
    echo "no participant_id in row $SLURM_ARRAY_TASK_ID of $BIDS_DIR/participants.tsv" >&2
    exit 18
fi
work="$WORK_ROOT/sub-$label"
mkdir -p "$OUT_DIR" "$work"

binds=(-B "$BIDS_DIR:/bids:ro" -B "$OUT_DIR:/out" -B "$work:/work")
app=(/bids /out participant --participant-label "$label" -w /work
     --nprocs "${SLURM_CPUS_PER_TASK:-1}")
if [[ -n "${SLURM_MEM_PER_NODE:-}" ]]; then
    app+=(--mem "$((SLURM_MEM_PER_NODE * 9 / 10))MB")  # leave room for Python itself
fi
if [[ -n "$MODEL" ]]; then
    binds+=(-B "$(dirname "$MODEL"):/models:ro")
    app+=(--model "/models/$(basename "$MODEL")")
fi
envs=()
if [[ -n "$TEMPLATEFLOW_DIR" ]]; then
    binds+=(-B "$TEMPLATEFLOW_DIR:/templateflow:ro")
    envs+=(--env TEMPLATEFLOW_HOME=/templateflow)
fi
gpu=()
if [[ "$USE_GPU" == 1 ]]; then
    gpu=(--nv)
    app+=(--n-gpus 1)
fi

echo "task $SLURM_ARRAY_TASK_ID: sub-$label on $(hostname)"
set +e
# ${a[@]+"${a[@]}"}: an empty array under set -u with bash < 4.4 (older clusters)
"$APPTAINER" run --cleanenv ${gpu[@]+"${gpu[@]}"} "${binds[@]}" ${envs[@]+"${envs[@]}"} \
    "$SIF" "${app[@]}" "$@"
rc=$?
set -e
# 75: CUDA was demanded (--device cuda) but is not available on this node, or the GPU ran
# out of memory; try once more (the work folder keeps what finished).
if [[ $rc -eq 75 && "${SLURM_RESTART_COUNT:-0}" -lt 1 ]]; then
    scontrol requeue "${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}"
fi
exit "$rc"
