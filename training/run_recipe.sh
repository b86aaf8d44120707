#!/usr/bin/env bash
# The bundled model's recipe, one stage per step, every stage a plain command a user can run alone.
#
#   bash training/run_recipe.sh            # all stages, CPU profile (2 cores: a few hours)
#   PROFILE=gpu bash training/run_recipe.sh # same commands, the GPU sizes (base preset, more data and steps)
#   bash training/run_recipe.sh finetune   # one stage, of: sources corpus pairs pretrain finetune more polish
#                                          #   lang flatness evaluate bundle checks plots
#   bash training/ablation.sh              # after corpus + pairs: the pretraining modes compared by fine-tuning
#
# Needs: pip install -e ".[recipe]"; apt-get install espeak-ng flite (synthetic voices, sources stage only);
# the shared data folder (DATA_ROOT, default ../shared/data). Wall time of each stage goes to $OUT/timings.tsv.
set -euo pipefail
cd "$(dirname "$0")/.."

PROFILE=${PROFILE:-cpu}
OUT=${OUT:-data/recipe}
DATA_ROOT=${DATA_ROOT:-../shared/data}
SEED=${SEED:-0}         # pairs and pretraining
SEEDS=${SEEDS:-"0 1"}   # fine-tuning seeds (scratch and JSQA each)
if [ "$PROFILE" = gpu ]; then
  PRESET=base; FILES="12000 1000 1000"; EXTRA_FILES=24000; PAIRS=200000; PT_STEPS=20000; PT_BATCH=128
  FT_STEPS=6000; FT_BATCH=64
  FT_LR="2e-4 2e-3"; FT_EVAL=300; WORKERS=${WORKERS:-16}; DEVICE=cuda
  MORE_STEPS=3000; MORE_LR="1e-4 1e-3"; MORE_SEEDS=${MORE_SEEDS:-$SEEDS}
  CLEAN_FILES=9600; GROUP_FILES=24000; POLISH_STEPS=1500; POLISH_LR="5e-5 5e-4"  # not run yet: CPU sizes scaled
  MULTI_FILES=12000; LANG_STEPS=500; LANG_LR="2.5e-5 2.5e-4"; CODEC_FILES=16000; TIGHT_FILES=12000
else
  # fine-tuning as for the shipped jsqa-small (7000 steps, lr 3e-4: 3000 steps at 1e-4 had not converged)
  PRESET=small; FILES="3000 400 400"; EXTRA_FILES=6000; PAIRS=40000; PT_STEPS=1500; PT_BATCH=32
  FT_STEPS=7000; FT_BATCH=16
  FT_LR="3e-4 1e-3"; FT_EVAL=500; WORKERS=${WORKERS:-1}; DEVICE=cpu
  MORE_STEPS=6000; MORE_LR="1.5e-4 5e-4"; MORE_SEEDS=${MORE_SEEDS:-${SEEDS##* }}  # the second cycle: last seed only
  CLEAN_FILES=2400; GROUP_FILES=6000; POLISH_STEPS=3000; POLISH_LR="1e-4 3e-4"     # the third cycle: MORE_SEEDS too
  MULTI_FILES=3000; LANG_STEPS=1000; LANG_LR="5e-5 1.5e-4"                         # the fourth: MORE_SEEDS too
  CODEC_FILES=4000; TIGHT_FILES=3000                                  # the fifth cycle's sixth and seventh draws
fi
read -r LR_ENC LR_HEAD <<< "$FT_LR"
SRC=$OUT/sources MOS=$OUT/mos RUNS=$OUT/runs
# Fine-tuning reads both training draws; validation (and, in `evaluate`, test) stay those of the first draw.
FT_DATA=(--train "$MOS/train.csv" --train "$OUT/mos-extra/train.csv" --val "$MOS/val.csv")
# the second training draw: more codecs and band limitation (VoIP-style), 30 % timbre-varied clean references
VOIP_WEIGHTS=noise=0.25,codec=0.22,packet_loss=0.15,clip=0.08,band=0.13,reverb=0.07,echo=0.05,level=0.05
# the sixth draw: codecs only (MP3, Opus, Vorbis at every bitrate, GSM, G.711)
CODEC_WEIGHTS=noise=0,codec=1,packet_loss=0,clip=0,band=0,reverb=0,echo=0,level=0

stage() {  # stage NAME COMMAND... : run it, append its wall time to timings.tsv
  local name=$1; shift
  echo "== $name: $*"
  local t0=$SECONDS
  "$@"
  printf '%s\t%s\t%s\t%d\n' "$PROFILE" "$name" "$(date -u +%FT%TZ)" $((SECONDS - t0)) >> "$OUT/timings.tsv"
}

sources() {
  stage sources python training/prepare_sources.py --data-root "$DATA_ROOT" --out "$SRC" --seed "$SEED"
  # espeak-ng voices in eleven other languages, split by language (Italian and Polish held out for test)
  stage sources-multi python training/multilingual_voices.py --sources "$SRC" --out "$OUT/sources-multi" \
    --seed "$SEED"
}
corpus() {
  # shellcheck disable=SC2086
  stage corpus python training/simulate_mos.py --sources "$SRC" --out "$MOS" --num-files $FILES \
    --workers "$(env -u OMP_NUM_THREADS nproc)" --seed "$SEED"
  stage corpus-extra python training/simulate_mos.py --sources "$SRC" --out "$OUT/mos-extra" \
    --num-files "$EXTRA_FILES" 0 0 --workers "$(env -u OMP_NUM_THREADS nproc)" --seed $((SEED + 1)) \
    --timbre-share 0.3 --family-weights "$VOIP_WEIGHTS"
  # the third, read by the `polish` cycle only: half clean references, half of all timbre-varied, no label balance
  stage corpus-clean python training/simulate_mos.py --sources "$SRC" --out "$OUT/mos-clean" \
    --num-files "$CLEAN_FILES" 0 0 --workers "$(env -u OMP_NUM_THREADS nproc)" --seed $((SEED + 2)) \
    --clean-share 0.5 --timbre-share 0.5 --max-factor 0
  # the fourth, also for `polish` only: groups of four versions of one reference (clean + 3 degraded copies), for
  # the ranking loss (finetune --rank-weight); half of all references timbre-varied, no label balance
  stage corpus-groups python training/simulate_mos.py --sources "$SRC" --out "$OUT/mos-groups" \
    --num-files "$GROUP_FILES" 0 0 --workers "$(env -u OMP_NUM_THREADS nproc)" --seed $((SEED + 3)) \
    --versions 4 --timbre-share 0.5 --max-factor 0
  # the fifth, for the `lang` cycle: the same impairments on the other languages' voices, and a test split of the
  # two held-out languages
  stage corpus-multi python training/simulate_mos.py --sources "$OUT/sources-multi" --out "$OUT/mos-multi" \
    --num-files "$MULTI_FILES" 200 400 --workers "$(env -u OMP_NUM_THREADS nproc)" --seed $((SEED + 10)) \
    --timbre-share 0.3 --clean-share 0.12
  # the sixth, for the `flatness` cycle: groups of four versions of one reference as in the fourth draw, each
  # degraded copy by one codec, so that small codec steps (Opus, MP3 near transparency) meet their clean reference
  stage corpus-codec python training/simulate_mos.py --sources "$SRC" --out "$OUT/mos-codec" \
    --num-files "$CODEC_FILES" 0 0 --workers "$(env -u OMP_NUM_THREADS nproc)" --seed $((SEED + 20)) \
    --versions 4 --timbre-share 0.5 --max-factor 0 --family-weights "$CODEC_WEIGHTS"
  # the seventh, also for `flatness`: groups of three versions of one utterance cut at its speech (no pause before
  # or after, as voice-service prompts are cut): the reference and two degraded copies
  stage corpus-tight python training/simulate_mos.py --sources "$SRC" --out "$OUT/mos-tight" \
    --num-files "$TIGHT_FILES" 0 0 --workers "$(env -u OMP_NUM_THREADS nproc)" --seed $((SEED + 21)) \
    --versions 3 --tight-share 1 --timbre-share 0.3 --max-factor 0
}
pairs() {
  stage pairs jsqa make-pairs --speech "$SRC/speech_train.txt" --noise "$SRC/noise_train.txt" -o "$OUT/pairs" \
    --num-pairs "$PAIRS" --pairing cross-source --seed "$SEED" --workers "$(env -u OMP_NUM_THREADS nproc)"
}
pretrain() {
  stage pretrain jsqa pretrain --pairs "$OUT/pairs" -o "$RUNS/pretrain" --preset "$PRESET" --device "$DEVICE" \
    --batch-size "$PT_BATCH" --max-steps "$PT_STEPS" --warmup-steps $((PT_STEPS / 15)) --lr 5e-4 \
    --negatives jnd-aware --val-every 500 --workers "$WORKERS" --seed "$SEED" --quiet
}
finetune() {
  # The paper's comparison: the same network and the same budget, from the JND-pretrained encoder and from scratch.
  local common=("${FT_DATA[@]}" --steps "$FT_STEPS" --batch-size "$FT_BATCH"
                --lr-encoder "$LR_ENC" --lr-head "$LR_HEAD" --warmup-steps 200 --eval-every "$FT_EVAL" --patience 5
                --cache-audio --device "$DEVICE" --workers "$WORKERS" -q)
  for s in $SEEDS; do
    stage "finetune-jsqa-s$s" jsqa finetune "${common[@]}" --seed "$s" --init "$RUNS/pretrain/encoder" \
      -o "$RUNS/jsqa-s$s"
    stage "finetune-scratch-s$s" jsqa finetune "${common[@]}" --seed "$s" --from-scratch --preset "$PRESET" \
      -o "$RUNS/scratch-s$s"
  done
}
more() {
  # A second cosine cycle from each fine-tuned model, JSQA and scratch alike, at half the learning rates: once with
  # the first cycle's 4-6 s crops, once with 2-6 s crops, then the two runs' weights averaged
  # (training/average_models.py). Short crops make short and narrowband clips score steadier; the average keeps
  # more of the first's clean-speech scores (docs/results.md, fourth version). Seeds: MORE_SEEDS.
  local lr; read -r -a lr <<< "$MORE_LR"
  local common=("${FT_DATA[@]}" --steps "$MORE_STEPS" --batch-size "$FT_BATCH" --lr-encoder "${lr[0]}"
                --lr-head "${lr[1]}" --warmup-steps 100 --eval-every "$FT_EVAL" --patience 0
                --cache-audio --device "$DEVICE" --workers "$WORKERS" -q)
  for s in $MORE_SEEDS; do
    for kind in jsqa scratch; do
      stage "more-$kind-s$s-crop4" jsqa finetune "${common[@]}" --seed $((s + 1)) --init "$RUNS/$kind-s$s" \
        --crop 4 6 -o "$RUNS/$kind-more-crop4-s$s"
      stage "more-$kind-s$s-crop2" jsqa finetune "${common[@]}" --seed $((s + 1)) --init "$RUNS/$kind-s$s" \
        --crop 2 6 -o "$RUNS/$kind-more-crop2-s$s"
      stage "more-$kind-s$s-average" python training/average_models.py "$RUNS/$kind-more-crop4-s$s" \
        "$RUNS/$kind-more-crop2-s$s" -o "$RUNS/$kind-more-s$s" --val "$MOS/val.csv"
    done
  done
}
polish() {
  # A third cycle from each second-cycle average, JSQA and scratch alike: shorter, at lower learning rates, 2-6 s
  # crops, with the clean-heavy third draw and the grouped fourth draw added, and the ranking loss on the groups
  # (score steps between versions of one reference). Clean speech of unseen voices scores higher and steadier
  # (docs/results.md, fifth version), and the ranking loss adds test PCC (sixth version). One run per model: a
  # 4-6 s run and its average with this one did worse.
  local lr; read -r -a lr <<< "$POLISH_LR"
  for s in $MORE_SEEDS; do
    for kind in jsqa scratch; do
      stage "polish-$kind-s$s" jsqa finetune "${FT_DATA[@]}" --train "$OUT/mos-clean/train.csv" \
        --train "$OUT/mos-groups/train.csv" --rank-weight 1 --steps "$POLISH_STEPS" --batch-size "$FT_BATCH" \
        --lr-encoder "${lr[0]}" --lr-head "${lr[1]}" \
        --warmup-steps 100 --eval-every "$FT_EVAL" --patience 0 --crop 2 6 --cache-audio --device "$DEVICE" \
        --workers "$WORKERS" -q --seed $((s + 2)) --init "$RUNS/$kind-more-s$s" -o "$RUNS/$kind-polish-s$s"
    done
  done
}
multi_cycle() {  # multi_cycle NAME "LR_ENC LR_HEAD" SEED INIT OUT [ARGS]: LANG_STEPS, every draw, both val splits
  local name=$1 lr; read -r -a lr <<< "$2"
  stage "$name" jsqa finetune "${FT_DATA[@]}" --train "$OUT/mos-clean/train.csv" \
    --train "$OUT/mos-groups/train.csv" --train "$OUT/mos-multi/train.csv" --val "$OUT/mos-multi/val.csv" \
    --rank-weight 1 \
    --steps "$LANG_STEPS" --batch-size "$FT_BATCH" --lr-encoder "${lr[0]}" --lr-head "${lr[1]}" \
    --warmup-steps 100 --eval-every "$FT_EVAL" --patience 0 --crop 2 6 --cache-audio --device "$DEVICE" \
    --workers "$WORKERS" -q --seed "$3" --init "$4" -o "$5" "${@:6}"
}
lang() {
  # A fourth, short cycle from each third-cycle model, JSQA and scratch alike: the polish data plus the fifth draw
  # (other languages), at half the polish learning rates, validated on both validation splits (English and Dutch
  # voices) as one set. Clean speech in languages the model never heard scores nearer English, and the other
  # languages' test split gains PCC (docs/results.md, seventh version).
  for s in $MORE_SEEDS; do
    for kind in jsqa scratch; do
      multi_cycle "lang-$kind-s$s" "$LANG_LR" $((s + 4)) "$RUNS/$kind-polish-s$s" "$RUNS/$kind-lang-s$s"
    done
  done
}
flatness() {
  # A fifth cycle from each fourth-cycle model, JSQA and scratch alike: the model also reads log spectral flatness
  # in 16 bands of 500 Hz (training/add_flatness.py; zero weights at first, trained at the head's rate), the
  # fourth cycle's data plus the sixth (codec) and seventh (tight) draws, at the polish learning rates. The input
  # and each draw add validation and English test PCC (two seeds each, docs/results.md, eighth to tenth version);
  # what the first two were for, the small Opus steps, neither fixed.
  for s in $MORE_SEEDS; do
    for kind in jsqa scratch; do
      stage "flatness-$kind-s$s-add" python training/add_flatness.py "$RUNS/$kind-lang-s$s" \
        -o "$RUNS/$kind-lang-flat-s$s" --bands 16
      multi_cycle "flatness-$kind-s$s" "$POLISH_LR" $((s + 6)) "$RUNS/$kind-lang-flat-s$s" \
        "$RUNS/$kind-flatness-s$s" --train "$OUT/mos-codec/train.csv" --train "$OUT/mos-tight/train.csv"
    done
  done
}
evaluate() {
  local MULTI_TEST=(); if [ -f "$OUT/mos-multi/test.csv" ]; then MULTI_TEST=(--csv "$OUT/mos-multi/test.csv"); fi
  for s in $SEEDS; do
    stage "evaluate-s$s" jsqa evaluate -m "$RUNS/scratch-s$s" -m "$RUNS/jsqa-s$s" --csv "$MOS/test.csv" \
      -o "$OUT/eval-test-s$s"
    for c in more polish lang flatness; do
      if [ -d "$RUNS/jsqa-$c-s$s" ]; then
        # with the other languages' test split too, when it was drawn (metrics per split and for both)
        stage "evaluate-$c-s$s" jsqa evaluate -m "$RUNS/scratch-$c-s$s" -m "$RUNS/jsqa-$c-s$s" \
          --csv "$MOS/test.csv" ${MULTI_TEST[@]+"${MULTI_TEST[@]}"} -o "$OUT/eval-test-$c-s$s"
      fi
    done
  done
}
bundle() {  # ship the JSQA model with the best validation PCC (weights + config + card + its test metrics)
  local models=() evals=()
  for s in $SEEDS; do
    models+=("$RUNS/jsqa-s$s"); evals+=("$OUT/eval-test-s$s/metrics.json")
    for c in more polish; do
      if [ -d "$RUNS/jsqa-$c-s$s" ]; then
        models+=("$RUNS/jsqa-$c-s$s"); evals+=("$OUT/eval-test-$c-s$s/metrics.json")
      fi
    done
  done
  # after the `lang` cycle, only its models compete (and after `flatness`, only that cycle's): they alone were
  # validated on the other languages too, and English validation cannot see what those cycles are for
  for c in lang flatness; do
    if compgen -G "$RUNS/jsqa-$c-s*" > /dev/null; then
      models=() evals=()
      for s in $SEEDS; do
        if [ -d "$RUNS/jsqa-$c-s$s" ]; then
          models+=("$RUNS/jsqa-$c-s$s"); evals+=("$OUT/eval-test-$c-s$s/metrics.json")
        fi
      done
    fi
  done
  stage bundle python training/bundle_model.py "${models[@]}" --eval "${evals[@]}" --where "$PROFILE profile" \
    --recipe "training/run_recipe.sh (PROFILE=$PROFILE)"
}
checks() { stage checks python training/quality_checks.py jsqa-small --out docs/quality-checks.md \
  --json docs/quality-checks.json --sources "$SRC" --multilingual "$OUT/sources-multi" \
  --noizeus "$DATA_ROOT/eval/noizeus_noisy" --reference-labels \
  || echo "!! quality bar not met: see docs/quality-checks.md"; }
plots() {
  stage plots python training/plot_curves.py "$RUNS/pretrain" -o docs/img/pretraining.png
  local runs=(); for s in $SEEDS; do runs+=("$RUNS/scratch-s$s" "$RUNS/jsqa-s$s"); done
  python training/plot_curves.py "${runs[@]}" --finetune -o docs/img/finetuning.png
}

mkdir -p "$OUT"
if [ $# -eq 0 ]; then set -- sources corpus pairs pretrain finetune more polish lang flatness evaluate bundle checks plots; fi
for s in "$@"; do "$s"; done
