#!/usr/bin/env bash
# GPU session, part 1 (device machine, repo root; needs data/train.jsonl.gz and .datasets/fashion-mnist carried):
# training throughput, then the first part of a hypernetwork training (resumable), then predict speed.
# Written for a GPU session and NOT yet run: no GPU has been lent to this project's tasks so far.
#   OUT=/some/dir bash benchmarks/gpu/phase1.sh
set -euo pipefail
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
OUT=${OUT:-out}; mkdir -p "$OUT"
HIDDEN=${HIDDEN:-128}; MB=${MB:-8}; WORKERS=${WORKERS:-12}; TRAIN_MIN=${TRAIN_MIN:-11}; PART_MIN=${PART_MIN:-5.3}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python -c "import torch, torch_geometric, accelerate; print(torch.__version__, torch_geometric.__version__, accelerate.__version__)"
python benchmarks/train_throughput.py --archs data/train.jsonl.gz --meta-batch "$MB" --workers 0 "$WORKERS" \
  --steps 24 --warmup 8 --hidden "$HIDDEN" 2>&1 | grep -v -i warn
cp benchmarks/results/train_throughput_gpu.json "$OUT/"
# total steps so that ~TRAIN_MIN minutes of training (two parts) end the cosine schedule
STEPS=$(python -c "import json; d=json.load(open('benchmarks/results/train_throughput_gpu.json')); r=[x for x in d['rows'] if x['workers']==$WORKERS][0]; print(int(r['steps_per_s']*60*$TRAIN_MIN))")
echo "total steps: $STEPS"
python train.py --archs data/train.jsonl.gz --steps "$STEPS" --meta-batch "$MB" --batch-size 64 --lr 1e-3 \
  --warmup-steps 100 --workers "$WORKERS" --hidden "$HIDDEN" --logit-norm 4 --max-minutes "$PART_MIN" --log-every 20 \
  --ckpt-every 100000 --out-dir runs/gpu --no-progress 2>&1 | grep -v -i warn | tail -3
last=$(ls -d runs/gpu/ckpt-* | tail -1)
tar cf "$OUT/run.tar" "$last" runs/gpu/log.jsonl runs/gpu/ghn.safetensors
tail -5 runs/gpu/log.jsonl
python benchmarks/predict_speed.py --device cuda --ckpt runs/gpu/ghn.safetensors --repeat 3 2>&1 | grep -v -i warn
cp benchmarks/results/predict_speed_gpu.json "$OUT/"
