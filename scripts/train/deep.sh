#!/usr/bin/env bash
# The deeper evaluation model (models/deep/) from the shipped one, in one command: depth growth
# (train.py --grow-from) then the full-corpus phase again. The shipped 2-layer model's layers
# become layers 0 and 3 of 6; layers 1, 2, 4 and 5 start fresh (random, small output
# projections), so the grown model starts close to the shipped one and training gives the new
# layers work. Same task, tokenizer (models/tokenizer.json) and corpus recipe as pipeline.sh's
# phase B. Leaves the model in $W/model, the evaluation in $W/eval.json and the logits fixture in
# $W/deep-model-logits.json (copy both to models/deep/ and test/fixtures/ when it passes the bar).
#
#   W=bench/tmp/deep2 bash scripts/train/deep.sh                 (CPU: ~1 h on one core)
#   W=$OUT/deep DEVICE=cuda bash .device/run.sh bash scripts/train/deep.sh   (the GPU machine)
#
# Training resumes from $W/work/ckpt.pt when it exists: remove $W/work for a fresh run.
set -euo pipefail
W=${W:-bench/tmp/deep2}
DEVICE=${DEVICE:-cpu}
STEPS=${STEPS:-1200}
MAP=${MAP:-0,-1,-1,1,-1,-1}
PY=${PY:-$(command -v /usr/bin/python3 || command -v python3)}
T=512
mkdir -p "$W/tokenizer"
cp models/tokenizer.json models/tokenizer_config.json "$W/tokenizer/"

if [ ! -f "$W/phase-b.jsonl" ]; then
  for j in 0 1; do
    node scripts/train/make-data.mjs --tokenizer "$W/tokenizer" --out "$W/full.$j.jsonl" --count 12000 --start $((j * 12000)) --context $T > /dev/null &
  done
  wait
  node scripts/train/make-data.mjs --copy --tokenizer "$W/tokenizer" --out "$W/copy.jsonl" --count 4000 --start 325000 --alphabet 2000 --copy-length 8-64 > /dev/null
  node scripts/train/make-data.mjs --tokenizer "$W/tokenizer" --out "$W/valid.jsonl" --count 300 --context $T --split valid > /dev/null
  cat "$W/full.0.jsonl" "$W/full.1.jsonl" "$W/copy.jsonl" > "$W/phase-b.jsonl"
  rm -f "$W"/full.*.jsonl
fi

OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 "$PY" scripts/train/train.py --data "$W/phase-b.jsonl" --valid "$W/valid.jsonl" --valid-count 128 \
  --tokenizer "$W/tokenizer" --work "$W/work" --export "$W/model" --context $T --d-model 128 --ffn 384 --layers 6 --heads 4 --kv-heads 2 \
  --steps "$STEPS" --lr 1e-3 --warmup 50 --text-weight 0.25 --eval-every 100 --ckpt-every 100 --log-every 20 --threads 1 --batch 16 \
  --device "$DEVICE" --grow-from models --grow-map "$MAP" | tee -a "$W/train.log"

node scripts/train/eval.mjs --model "$W/model" --count 500 --logits-check --write-reference "$W/deep-model-logits.json" --out "$W/eval.json" > /dev/null
node -e "const r = require(require('node:path').resolve('$W/eval.json')); console.log(JSON.stringify({ accuracy: r.accuracy, logitsCheck: r.logitsCheck }))"
