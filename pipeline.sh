#!/usr/bin/env bash
# The method of arXiv 2512.11277 ("When Actions Teach You to Think") end to end:
#   vanilla -> (1) base SFT -> (2) cold-start reasoning SFT -> (3) GRPO -> evaluation of all four on held-out turns
#   (and, in the demo world, on whole conversations with a scripted user: EPISODES tasks x 4 trials).
#
#   bash pipeline.sh                                            the offline tiny default on the demo world
#   MODEL=models/Qwen3-1.7B DATA=apigen-mt_5k.json bash pipeline.sh     the paper's setting, nothing written by hand:
#       split off TEST_RECORDS held-out dialogues, build the cold-start set from the train part's think calls,
#       then the four stages and evaluation with the real-model defaults (each stage prints them at start)
#
# Each stage's flags can be replaced: SFT_FLAGS, COLD_FLAGS, GRPO_FLAGS, EVAL_FLAGS (e.g. GRPO_FLAGS="--steps 50").
set -euo pipefail
cd "$(dirname "$0")"
MODEL=${MODEL:-tiny}                              # vanilla: the pretrained tiny base (plays Qwen3-1.7B), or Qwen3
OUT=${OUT:-runs/pipeline}
SEED=${SEED:-0}
mkdir -p "$OUT"
: > "$OUT/times.txt"
stage() { local name=$1; shift; local t0=$SECONDS; "$@"; echo "$name $((SECONDS - t0))" >> "$OUT/times.txt"; }

if [ -n "${DATA:-}" ]; then   # an APIGen-MT-5k file: held-out split, and a cold start from its own reasoning
    SPLIT=$OUT/data
    stage data       python data.py split "$DATA" --out "$SPLIT" --test "${TEST_RECORDS:-200}" --seed "$SEED"
    stage cold_set   python data.py cold-start "$SPLIT/train.json" --out "$SPLIT/cold_start.jsonl" --seed "$SEED"
    TRAIN=$SPLIT/train.json COLD=$SPLIT/cold_start.jsonl TEST=$SPLIT/test.json
    SFT_FLAGS=${SFT_FLAGS-"--epochs 1"}
    COLD_FLAGS=${COLD_FLAGS-"--epochs 3 --warmup 5"}
    GRPO_FLAGS=${GRPO_FLAGS-"--steps 300"}
else                          # the demo world: retail train / held-out / cold start (< 100 turns)
    DEMO=data/demo
    stage data       python data.py demo --out $DEMO
    TRAIN=$DEMO/retail_train.json COLD=$DEMO/retail_cold_start.json TEST=$DEMO/retail_test.json
    # every stage bounded by steps or epochs, never by wall time: the same seed and thread count give the same table
    SFT_FLAGS=${SFT_FLAGS-"--max-steps 1200"}
    COLD_FLAGS=${COLD_FLAGS-"--epochs 25 --batch-size 8 --warmup 5"}
    GRPO_FLAGS=${GRPO_FLAGS-"--steps 60"}
fi
EVAL_FLAGS=${EVAL_FLAGS-}

# shellcheck disable=SC2086  # the *_FLAGS are lists of flags: split them
stage base_sft   python sft.py --mode base --model "$MODEL" --data "$TRAIN" --out "$OUT/sft" --seed "$SEED" \
                     $SFT_FLAGS                                                        # stage 1: no thinking
stage cold_start python sft.py --mode cold-start --model "$OUT/sft" --data "$COLD" --out "$OUT/cold" --seed "$SEED" \
                     $COLD_FLAGS                                                       # stage 2: think, then act (+ replay)
stage grpo       python grpo.py --model "$OUT/cold" --data "$TRAIN" --out "$OUT/grpo" --seed "$SEED" \
                     $GRPO_FLAGS                                                       # stage 3: composite reward
stage eval       python eval.py --data "$TEST" --out "$OUT/results.json" $EVAL_FLAGS \
                     --model "$MODEL" --name vanilla --model "$OUT/sft" --name base_sft \
                     --model "$OUT/cold" --name cold_start --model "$OUT/grpo" --name grpo
if [ -z "${DATA:-}" ]; then    # whole conversations on each model's own actions, in the demo world (episodes.py)
    stage episodes python eval.py --episodes "${EPISODES:-100}" --trials 4 --seed "$SEED" --out "$OUT/episodes.json" \
                     --model "$MODEL" --name vanilla --model "$OUT/sft" --name base_sft \
                     --model "$OUT/cold" --name cold_start --model "$OUT/grpo" --name grpo
fi
echo "stage seconds:"; cat "$OUT/times.txt"
