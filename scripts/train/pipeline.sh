#!/usr/bin/env bash
# The embedded model from nothing, in one command: tokenizer, corpora, training in three phases,
# evaluation through kvfocus (500 held-out questions, logits against PyTorch). Meant for the GPU
# machine (DEVICE=cuda; on it: bash .device/run.sh bash scripts/train/pipeline.sh), and runs on
# the CPU too (slowly; SCALE=0.005 STEPS_0=2 STEPS_A=4 STEPS=8 checks the plumbing).
#
#   W=bench/tmp/train/t512 DEVICE=cuda JOBS=16 STEPS_0=800 STEPS_A=1100 STEPS=7000 bash scripts/train/pipeline.sh
#
# Phase 0: copy rows of random length alone, until the content-based match-and-copy (induction)
# circuit forms; phase A: the curriculum corpus (1-3 short documents) mixed with copy rows, which
# keep that circuit alive while the model learns the task's text; phase B: the full corpus (as
# many documents as fit T) with a few copy rows. One learning-rate schedule spans all three
# (train.py --until). Leaves the model in $W/model, the evaluation in $W/eval.json and the logits fixture in
# $W/default-model-logits.json (copy both to models/ and test/fixtures/ when it passes the bar).
# Training resumes from $W/work/ckpt.pt when it exists: remove $W/work for a fresh run.
set -euo pipefail
W=${W:-bench/tmp/train/t512}
DEVICE=${DEVICE:-cpu}
JOBS=${JOBS:-2}
SCALE=${SCALE:-1}
STEPS_0=${STEPS_0:-800}
STEPS_A=${STEPS_A:-1100}
STEPS=${STEPS:-7000}
BATCH_0=${BATCH_0:-32}
BATCH_A=${BATCH_A:-32}
BATCH_B=${BATCH_B:-16}
LR=${LR:-2e-3}
# Model shape: 2 layers of d 128 learn the copy circuit in ~500 steps on the CPU; 4 layers of
# d 256 take longer (see README.md).
LAYERS=${LAYERS:-2}
D_MODEL=${D_MODEL:-128}
FFN=${FFN:-384}
HEADS=${HEADS:-4}
KV_HEADS=${KV_HEADS:-2}
PY=${PY:-$(command -v /usr/bin/python3 || command -v python3)}
T=512
n() { awk -v x="$1" -v s="$SCALE" 'BEGIN { v = int(x * s); print (v < 1 ? 1 : v) }'; }

mkdir -p "$W"
node scripts/train/make-tokenizer.mjs --out "$W/tokenizer" --context $T

# Corpus shards, one process per job; seeds are fixed by --start, so the shards concatenate to
# the same corpus for any JOBS that divides the counts.
shards() { # name count start extra-args...
  local name=$1 count=$2 start=$3; shift 3
  local per=$(( count / JOBS )) pids=()
  for j in $(seq 0 $((JOBS - 1))); do
    node scripts/train/make-data.mjs --tokenizer "$W/tokenizer" --out "$W/$name.$j.jsonl" --count $per --start $(( start + j * per )) "$@" > /dev/null &
    pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p"; done
  for j in $(seq 0 $((JOBS - 1))); do cat "$W/$name.$j.jsonl"; done > "$W/$name.jsonl"
  rm -f "$W"/$name.*.jsonl
}
shards full "$(n 32000)" 0 --context $T
shards easy "$(n 40000)" 40000 --context 192 --max-docs 3 --doc-length 2-4 --extra 3-6
node scripts/train/make-data.mjs --copy --tokenizer "$W/tokenizer" --out "$W/copy.jsonl" --count "$(n 30000)" --start 300000 --alphabet 2000 --copy-length 8-64 > /dev/null
node scripts/train/make-data.mjs --tokenizer "$W/tokenizer" --out "$W/valid.jsonl" --count 300 --context $T --split valid > /dev/null
head -n "$(n 25000)" "$W/copy.jsonl" | cat "$W/easy.jsonl" - > "$W/phase-a.jsonl"
tail -n "$(n 5000)" "$W/copy.jsonl" | cat "$W/full.jsonl" - > "$W/phase-b.jsonl"

ARGS=(--valid "$W/valid.jsonl" --valid-count 128 --tokenizer "$W/tokenizer" --work "$W/work" --export "$W/model"
  --context $T --d-model "$D_MODEL" --ffn "$FFN" --layers "$LAYERS" --heads "$HEADS" --kv-heads "$KV_HEADS" --steps "$STEPS" --lr "$LR" --warmup 100
  --text-weight 0.25 --eval-every 200 --ckpt-every 100 --log-every 20 --device "$DEVICE")
"$PY" scripts/train/train.py --data "$W/copy.jsonl" "${ARGS[@]}" --text-weight 0 --batch "$BATCH_0" --until "$STEPS_0" | tee -a "$W/train.log"
"$PY" scripts/train/train.py --data "$W/phase-a.jsonl" "${ARGS[@]}" --batch "$BATCH_A" --until "$STEPS_A" | tee -a "$W/train.log"
"$PY" scripts/train/train.py --data "$W/phase-b.jsonl" "${ARGS[@]}" --batch "$BATCH_B" | tee -a "$W/train.log"

node scripts/train/eval.mjs --model "$W/model" --count 500 --logits-check --write-reference "$W/default-model-logits.json" --out "$W/eval.json" > /dev/null
node -e "const r = require(require('node:path').resolve('$W/eval.json')); console.log(JSON.stringify({ accuracy: r.accuracy, meanTimeToFirstTokenMs: r.meanTimeToFirstTokenMs, logitsCheck: r.logitsCheck }))"
