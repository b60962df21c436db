#!/bin/bash
# Submit the chain train → certify (array of SHARDS tasks) → merge + analyze; each step starts only when
# the previous one succeeded (afterok). Run from anywhere: bash scripts/slurm/submit_pipeline.sh
# sbatch passes this environment (MODEL, SIGMA, OUT, ...) to every job; the #SBATCH lines of each
# template give the resources for a GPU cluster, and the options below are added to sbatch's command
# line, where they override those lines. SKIP_TRAIN=1 certifies an existing MODEL.
set -euo pipefail
cd "$(dirname "$0")/../.."

export DATASET=${DATASET:-cifar10} ARCH=${ARCH:-cifar_resnet110} SIGMA=${SIGMA:-0.25}
export OUTDIR=${OUTDIR:-models/$DATASET/$ARCH/noise_$SIGMA}
export MODEL=${MODEL:-$OUTDIR/checkpoint.pth}
export METHOD=${METHOD:-np} N0=${N0:-100} N=${N:-100000} ALPHA=${ALPHA:-0.001}
export OUT=${OUT:-results/${DATASET}_${ARCH}_${METHOD}_sigma$SIGMA.tsv}
SHARDS=${SHARDS:-16}
export -n SHARDS                     # the tasks take their shard from SLURM_ARRAY_TASK_ID/COUNT
SKIP_TRAIN=${SKIP_TRAIN:-0}
# sbatch options (empty: the templates' #SBATCH lines as they are)
PARTITION=${PARTITION:-}     # --partition of every job
CPU_ONLY=${CPU_ONLY:-0}      # 1: --gres=none for train and the array (a CPU-only partition refuses GPU requests)
TRAIN_OPTS=${TRAIN_OPTS:-}   # further sbatch options for the train job,
TASK_OPTS=${TASK_OPTS:-}     #   for each array task (e.g. "--gres=gpu:a100:1 --time=2:00:00 --account=proj";
MERGE_OPTS=${MERGE_OPTS:-}   #   give tasks you rerun by hand the same) and for the merge job
LOGS=${LOGS:-}               # folder of the jobs' output files (default: logs/, from the #SBATCH lines)

if [ "$SKIP_TRAIN" = 1 ] && [ ! -f "$MODEL" ]; then
    echo "error: SKIP_TRAIN=1 but MODEL '$MODEL' is not a file" >&2
    exit 2
fi
mkdir -p "${LOGS:-logs}" "$(dirname "$OUT")"    # SLURM does not create the folders of --output files

common=() gpu=() single_log=() array_log=()
if [ -n "$PARTITION" ]; then common+=(--partition="$PARTITION"); fi
if [ "$CPU_ONLY" = 1 ]; then gpu=(--gres=none); fi
if [ -n "$LOGS" ]; then single_log=(--output="$LOGS/%x_%j.out"); array_log=(--output="$LOGS/%x_%A_%a.out"); fi
submit() {   # submit OPTIONS... TEMPLATE: sbatch --parsable with the common options; prints the job id
    local id
    id=$(sbatch --parsable ${common[@]+"${common[@]}"} "$@") || return 1
    echo "${id%%;*}"                  # --parsable prints "id" or "id;cluster"
}

dep=()
if [ "$SKIP_TRAIN" != 1 ]; then
    # shellcheck disable=SC2086  # the *_OPTS are split into options on purpose
    TRAIN_ID=$(submit ${gpu[@]+"${gpu[@]}"} ${single_log[@]+"${single_log[@]}"} $TRAIN_OPTS scripts/slurm/train.sbatch)
    echo "train:   $TRAIN_ID"
    dep=(--dependency="afterok:$TRAIN_ID")
fi
# shellcheck disable=SC2086
ARRAY_JOB_ID=$(submit ${dep[@]+"${dep[@]}"} --array="0-$((SHARDS - 1))" ${gpu[@]+"${gpu[@]}"} \
    ${array_log[@]+"${array_log[@]}"} $TASK_OPTS scripts/slurm/certify.sbatch)
echo "certify: $ARRAY_JOB_ID (array 0-$((SHARDS - 1)))"
# shellcheck disable=SC2086
MERGE_ID=$(submit --dependency="afterok:$ARRAY_JOB_ID" ${single_log[@]+"${single_log[@]}"} $MERGE_OPTS \
    scripts/slurm/merge_analyze.sbatch)
merged=${MERGED:-$OUT}
analysis=${ANALYSIS-${merged%.*}_analysis}   # as merge_analyze.sbatch names them
echo "merge:   $MERGE_ID -> $merged${analysis:+, $analysis/}"
