#!/usr/bin/env bash
# The method of arXiv 2512.11277 ("When Actions Teach You to Think") end to end, on the offline tiny default:
#   vanilla -> (1) base SFT -> (2) cold-start reasoning SFT -> (3) GRPO -> evaluation of all four on held-out turns.
# Real model and data:  MODEL=/path/to/Qwen3-1.7B TRAIN=apigen-mt_5k.json TEST=held_out.json bash pipeline.sh
set -euo pipefail
cd "$(dirname "$0")"
MODEL=${MODEL:-tiny}                              # vanilla: the pretrained tiny base (plays Qwen3-1.7B)
OUT=${OUT:-runs/pipeline}
DEMO=data/demo
TRAIN=${TRAIN:-$DEMO/retail_train.json}
COLD=${COLD:-$DEMO/retail_cold_start.json}
TEST=${TEST:-$DEMO/retail_test.json}
SEED=${SEED:-0}
mkdir -p "$OUT"
: > "$OUT/times.txt"
stage() { local name=$1; shift; local t0=$SECONDS; "$@"; echo "$name $((SECONDS - t0))" >> "$OUT/times.txt"; }

stage data       python data.py demo --out $DEMO                  # retail: train / held-out / cold start (<100 turns)
stage base_sft   python sft.py --mode base --model "$MODEL" --data "$TRAIN" --out "$OUT/sft" \
                     --epochs 3 --max-minutes 5 --seed $SEED                                   # stage 1: no thinking
stage cold_start python sft.py --mode cold-start --model "$OUT/sft" --data "$COLD" --out "$OUT/cold" \
                     --epochs 25 --batch-size 8 --warmup 5 --seed $SEED                        # stage 2: think, then act (+ replay)
stage grpo       python grpo.py --model "$OUT/cold" --data "$TRAIN" --out "$OUT/grpo" \
                     --steps 400 --max-minutes 5 --seed $SEED                                  # stage 3: composite reward
stage eval       python eval.py --data "$TEST" --out "$OUT/results.json" \
                     --model "$MODEL" --name vanilla --model "$OUT/sft" --name base_sft \
                     --model "$OUT/cold" --name cold_start --model "$OUT/grpo" --name grpo
echo "stage seconds:"; cat "$OUT/times.txt"
