#!/bin/bash
# Submit the chain train → certify (array of SHARDS tasks) → merge + analyze; each step starts only when
# the previous one succeeded (afterok). Run from anywhere: bash scripts/slurm/submit_pipeline.sh
# sbatch passes this environment (MODEL, SIGMA, OUT, ...) to every job; the #SBATCH lines of each
# template give the resources (edit them for your cluster). SKIP_TRAIN=1 certifies an existing MODEL.
set -euo pipefail
cd "$(dirname "$0")/../.."

export DATASET=${DATASET:-cifar10} ARCH=${ARCH:-cifar_resnet110} SIGMA=${SIGMA:-0.25}
export OUTDIR=${OUTDIR:-models/$DATASET/$ARCH/noise_$SIGMA}
export MODEL=${MODEL:-$OUTDIR/checkpoint.pth}
export METHOD=${METHOD:-np} N0=${N0:-100} N=${N:-100000} ALPHA=${ALPHA:-0.001}
export OUT=${OUT:-results/${DATASET}_${ARCH}_${METHOD}_sigma$SIGMA.tsv}
SHARDS=${SHARDS:-16}
SKIP_TRAIN=${SKIP_TRAIN:-0}
mkdir -p logs "$(dirname "$OUT")"    # SLURM does not create the folders of --output files

dep=()
if [ "$SKIP_TRAIN" != 1 ]; then
    TRAIN_ID=$(sbatch --parsable scripts/slurm/train.sbatch)
    TRAIN_ID=${TRAIN_ID%%;*}          # --parsable prints "id" or "id;cluster"
    echo "train:   $TRAIN_ID"
    dep=(--dependency="afterok:$TRAIN_ID")
fi
ARRAY_JOB_ID=$(sbatch --parsable ${dep[@]+"${dep[@]}"} --array="0-$((SHARDS - 1))" scripts/slurm/certify.sbatch)
ARRAY_JOB_ID=${ARRAY_JOB_ID%%;*}
echo "certify: $ARRAY_JOB_ID (array 0-$((SHARDS - 1)))"
MERGE_ID=$(sbatch --parsable --dependency="afterok:$ARRAY_JOB_ID" scripts/slurm/merge_analyze.sbatch)
echo "merge:   ${MERGE_ID%%;*} -> $OUT, ${OUT%.*}_analysis/"
