#!/usr/bin/env bash
# GPU benchmark (one run, under 8 minutes on one H100-class GPU): the paper's configuration
# (--preset flare21: patch 80x192x160, batch 2) on full-size phantoms.
#   1. seconds per training iteration, SDM trainer vs plain nnU-Net trainer, side by side, with the
#      data-loading share (benchmarks/train_step.py);
#   2. inference time per case and peak GPU memory (torch peak and the FLARE21 NVML statistic) with
#      mirroring TTA, from `nnsdm predict`'s efficiency.csv.
# Usage: benchmarks/gpu.sh [OUT_DIR]   (needs a CUDA torch in .venv or on PATH's python)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
OUT=${1:-gpu_benchmark}
WORK=$(mktemp -d /tmp/nnsdm-gpu-XXXX)
WORKERS=${WORKERS:-$(( $(nproc) > 12 ? 12 : $(nproc) ))}
mkdir -p "$OUT"
"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.__version__, torch.cuda.get_device_name(0))" | tee "$OUT/device.txt"
export nnUNet_n_proc_DA=$WORKERS

"$PY" -m nnsdm phantom "$WORK/train" --cases 8 --seed 0 --shape 96x256x256
"$PY" -m nnsdm phantom "$WORK/test" --cases 3 --seed 1 --shape 96x256x256
"$PY" -m nnsdm plan "$WORK/train" --workspace "$WORK/ws" --preset flare21 | tee "$OUT/plan.txt"
mkdir -p "$WORK/bench" && ln -s "$WORK/train" "$WORK/bench/phantom" && ln -s "$WORK/ws" "$WORK/bench/ws"
"$PY" benchmarks/train_step.py --device cuda --preset flare21 --workers "$WORKERS" --rounds 5 --iterations 8 --warmup 3 \
    --workspace "$WORK/bench" --json "$OUT/train_step.json" | tail -6 | tee "$OUT/train_step.txt"

"$PY" -m nnsdm train --workspace "$WORK/ws" --fold 0 --epochs 1 --iterations-per-epoch 20 --val-iterations 2 \
    --device cuda --no-validation > "$OUT/train.log" 2>&1
MODEL=$(ls -d "$WORK"/ws/nnUNet_results/*/nnsdmTrainer__nnUNetPlans__3d_fullres)
"$PY" -m nnsdm predict -i "$WORK/test/imagesTr" -o "$WORK/pred" --model "$MODEL" --device cuda
"$PY" -m nnsdm stats --model "$MODEL" | tee "$OUT/stats.txt"
cp "$WORK/pred/efficiency.csv" "$OUT/efficiency.csv"
cat "$OUT/efficiency.csv"
