#!/usr/bin/env bash
# Which pretraining mode helps fine-tuning? Pairing (cross- vs same-source), negatives (batch vs jnd-aware) and the
# projection head (on vs off), each pretrained once and fine-tuned with every seed in SEEDS, next to the same
# network fine-tuned from scratch with the same budget. Run after the recipe's sources, corpus and pairs stages.
#
#   bash training/ablation.sh                    # CPU sizes (run_recipe.sh's): 4 pretrainings + 10 fine-tunings
#   PROFILE=gpu bash training/ablation.sh        # one GPU: everything of a stage at once, larger batches
#   bash training/ablation.sh evaluate report    # some stages (pairs pretrain finetune evaluate report)
#
# Each variant's pretraining goes to $AB/pt-NAME, each fine-tuning to $AB/ft-NAME-sSEED (ft-scratch-sSEED for
# scratch), test metrics to $AB/eval-sSEED and the table to $REPORT (docs/ablation.md). Finished runs are
# skipped, so an interrupted stage can be started again. JOBS commands of a stage run at the same time (logs in
# $AB/logs). Sizes, JOBS, SEEDS, PRESET, ONLY (a subset of modes) and FT_INITS are read from the environment.
set -euo pipefail
cd "$(dirname "$0")/.."

PROFILE=${PROFILE:-cpu}
OUT=${OUT:-data/recipe}
SEED=${SEED:-0}
SEEDS=${SEEDS:-"0 1"}
if [ "$PROFILE" = gpu ]; then
  PT_STEPS=${PT_STEPS:-1200}; PT_BATCH=${PT_BATCH:-64}; FT_STEPS=${FT_STEPS:-1500}; FT_BATCH=${FT_BATCH:-64}
  FT_LR=${FT_LR:-"2e-4 2e-3"}; JOBS=${JOBS:-10}; PT_WORKERS=${PT_WORKERS:-3}; DEVICE=${DEVICE:-cuda}
else
  PT_STEPS=${PT_STEPS:-1500}; PT_BATCH=${PT_BATCH:-32}; FT_STEPS=${FT_STEPS:-3000}; FT_BATCH=${FT_BATCH:-16}
  FT_LR=${FT_LR:-"1e-4 1e-3"}; JOBS=${JOBS:-2}; PT_WORKERS=${PT_WORKERS:-0}; DEVICE=${DEVICE:-cpu}
fi
PRESET=${PRESET:-small}
SRC=$OUT/sources MOS=$OUT/mos AB=${AB:-$OUT/ablation}
read -r LR_ENC LR_HEAD <<< "$FT_LR"

# name  pairs-folder  pretrain options
VARIANTS=(
  "cross-jnd-proj    pairs      --negatives jnd-aware --projection-head"
  "same-jnd-proj     pairs-same --negatives jnd-aware --projection-head"
  "cross-batch-proj  pairs      --negatives batch     --projection-head"
  "cross-jnd-noproj  pairs      --negatives jnd-aware --no-projection-head"
)
NAMES=(); for v in "${VARIANTS[@]}"; do read -r n _ <<< "$v"; NAMES+=("$n"); done
[ -n "${ONLY:-}" ] && read -r -a NAMES <<< "$ONLY"   # ONLY="cross-jnd-proj same-jnd-proj": a subset of modes
# FT_INITS="scratch": fine-tune only these (scratch and/or mode names), e.g. scratch while the pretrainings run

mkdir -p "$AB/logs"
pids=()
job() {  # job NAME COMMAND...: run in the background (at most JOBS at once), output to $AB/logs/NAME.log
  local name=$1; shift
  while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do wait -n || true; done
  echo "== $name: $*"
  ( t0=$SECONDS; "$@" > "$AB/logs/$name.log" 2>&1 \
      && printf '%s\t%s\t%s\t%d\n' "$PROFILE" "$name" "$(date -u +%FT%TZ)" $((SECONDS - t0)) >> "$AB/timings.tsv" \
      || { echo "!! $name failed (see $AB/logs/$name.log):"; tail -n 5 "$AB/logs/$name.log"; exit 1; } ) &
  pids+=($!)
}
finish() { local rc=0; for p in "${pids[@]}"; do wait "$p" || rc=1; done; pids=(); return $rc; }
variant() { for v in "${VARIANTS[@]}"; do read -r n rest <<< "$v"; [ "$n" = "$1" ] && echo "$rest"; done; }

pairs() {  # the same-source manifest (the cross-source one is the recipe's pairs stage)
  [ -f "$OUT/pairs-same/pairs.csv" ] && return
  jsqa make-pairs --speech "$SRC/speech_train.txt" --noise "$SRC/noise_train.txt" -o "$OUT/pairs-same" \
    --num-pairs "$(python -c "import json; print(json.load(open('$OUT/pairs/pairs.json'))['pairs'])")" \
    --pairing same-source --seed "$SEED" --workers "$(env -u OMP_NUM_THREADS nproc)"
}

pretrain() {
  for n in "${NAMES[@]}"; do
    read -r pairs_dir opts <<< "$(variant "$n")"
    [ -f "$AB/pt-$n/encoder/model.safetensors" ] && continue
    if [ -f "$AB/pt-$n/checkpoint.pt" ]; then again=(--resume); else rm -rf "$AB/pt-$n"; again=(); fi
    # shellcheck disable=SC2086
    job "pt-$n" jsqa pretrain --pairs "$OUT/$pairs_dir" -o "$AB/pt-$n" --preset "$PRESET" --device "$DEVICE" \
      --batch-size "$PT_BATCH" --max-steps "$PT_STEPS" --warmup-steps $((PT_STEPS / 15)) --lr 5e-4 $opts \
      --val-every 400 --workers "$PT_WORKERS" --seed "$SEED" "${again[@]}" --quiet
  done
  finish
}

finetune() {
  local common=(--train "$MOS/train.csv" --val "$MOS/val.csv" --steps "$FT_STEPS" --batch-size "$FT_BATCH"
                --lr-encoder "$LR_ENC" --lr-head "$LR_HEAD" --eval-every $((FT_STEPS >= 20 ? FT_STEPS / 10 : 1))
                --patience 4                --cache-audio --device "$DEVICE" --workers 0 -q)
  for s in $SEEDS; do
    for n in ${FT_INITS:-scratch ${NAMES[*]}}; do
      local dir=$AB/ft-$n-s$s
      [ -f "$dir/.done" ] && continue
      if [ -f "$dir/training/checkpoint.pt" ]; then again=(--resume); else again=(--overwrite); fi
      if [ "$n" = scratch ]; then init=(--from-scratch --preset "$PRESET"); else init=(--init "$AB/pt-$n/encoder"); fi
      job "ft-$n-s$s" bash -c '"$@" && touch "$0/.done"' "$dir" jsqa finetune "${common[@]}" "${init[@]}" \
        "${again[@]}" --seed "$s" -o "$dir"
    done
  done
  finish
}

evaluate() {  # every model of a seed side by side on the test split (scratch first: the Δ% reference)
  for s in $SEEDS; do
    local models=(-m "$AB/ft-scratch-s$s")
    for n in "${NAMES[@]}"; do [ -f "$AB/ft-$n-s$s/model.safetensors" ] && models+=(-m "$AB/ft-$n-s$s"); done
    jsqa evaluate "${models[@]}" --csv "$MOS/test.csv" -o "$AB/eval-s$s"
  done
}

report() { python training/ablation_report.py "$AB" -o "${REPORT:-docs/ablation.md}"; }

if [ $# -eq 0 ]; then set -- pairs pretrain finetune evaluate report; fi
for stage in "$@"; do echo "=== $stage"; t0=$SECONDS; "$stage"; echo "=== $stage: $((SECONDS - t0)) s"; done
