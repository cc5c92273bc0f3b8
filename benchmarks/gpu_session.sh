#!/usr/bin/env bash
# One prepared GPU session (written for one H200, ~8.5 minutes wall in all, compiles included).
#
#   OUT=/tmp/gpu_session bash benchmarks/gpu_session.sh    # from the repository root
#
# Needs: jax with CUDA, flax, optax, orbax-checkpoint, pillow; ml_collections and tensorboardX as wheels
# in .whl/ (installed here into /tmp/site when they are not importable); the CIFAR-10 JPEG archive at
# .data/cifar10-jpeg.tar.gz (CIFAR_TAR=... to change). No TensorFlow on any path used here.
#
# Items run most important first; each is skipped when less than its estimated time is left of
# BUDGET_S (default 510 s) and killed at its cap or when the budget runs out, so a timeout loses only
# the last items. Every item writes JSON into $OUT as it goes; the summary at the end (also in
# $OUT/summary.md) is Markdown for BENCHMARKS.md.
#   1 ResNet-50 v1.5, batch 256, bf16, synthetic           (compare: flax examples/imagenet 6,879 img/s)
#   2 CIFAR ResNet-56, batch 128, bf16, real CIFAR-10 with on-device augmentation, 1 and 20 steps/call
#   3 the paper's full CIFAR-10 ResNet-20 recipe (64k steps) through resnet_jax.main, R20_STEPS_PER_CALL
#   4 ResNet-50 v1 (the paper's, stride on the 1x1), batch 256, bf16, synthetic
#   5 CIFAR ResNet-20 and ResNet-110 (scanned, the config's default), synthetic, 1 and 20 steps/call
#   6 CIFAR ResNet-1202 (scanned), batch 128, a few steps
#   7 one XLA flag: ResNet-20, 1 step/call, command buffers off (compare with item 5)
#   8 CIFAR ResNet-56 with scanned blocks, synthetic (the peers found scan faster on the GPU)

set -uo pipefail
export PYTHONUNBUFFERED=1
cd "$(dirname "$0")/.." || exit 1
OUT=${OUT:-/tmp/gpu_session}
BUDGET_S=${BUDGET_S:-510}
CIFAR_TAR=${CIFAR_TAR:-.data/cifar10-jpeg.tar.gz}
R20_STEPS_PER_CALL=${R20_STEPS_PER_CALL:-50}
mkdir -p "$OUT"
START=$(date +%s)

log() { echo "[$(date -u +%H:%M:%S) +$(($(date +%s) - START))s] $*"; }
left() { echo $((BUDGET_S - ($(date +%s) - START))); }

# item NAME ESTIMATE_S CAP_S command...: output into $OUT/NAME.log, its last lines shown.
item() {
  local name=$1 est=$2 cap=$3
  shift 3
  local l
  l=$(left)
  ITEM_WALL=null ITEM_RC=null
  if ((l < est)); then
    log "SKIP $name (needs ~${est} s, ${l} s left)"
    echo "$name: skipped, needs ~${est} s, ${l} s left" >>"$OUT/skipped.txt"
    return 0
  fi
  local t=$((cap < l ? cap : l))
  log "START $name (limit ${t} s)"
  local t0
  t0=$(date +%s%N)
  timeout -k 10 "$t" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  local ms=$((($(date +%s%N) - t0) / 1000000))
  ITEM_WALL=$(printf '%d.%03d' $((ms / 1000)) $((ms % 1000)))
  ITEM_RC=$rc
  grep -v -e '^\s*$' "$OUT/$name.log" | tail -n 8
  log "END $name rc=$rc after ${ITEM_WALL} s"
  if ((rc != 0)); then echo "$name: exit $rc (124 = hit its ${t} s limit)" >>"$OUT/skipped.txt"; fi
}


log "setup"
nvidia-smi | tee "$OUT/nvidia-smi.txt" || true
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit --format=csv || true
if ! python3 -c "import ml_collections, tensorboardX" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
python3 -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__, jax.devices())"
git log -1 --format='commit %h %s' 2>/dev/null || true
if [[ ! -f $CIFAR_TAR ]]; then log "no $CIFAR_TAR: the real-data items will fail"; fi
BENCH=(python3 benchmarks/train_step.py --dtype=bfloat16)

# 1. ResNet-50 v1.5 (as the flax example and torchvision), batch 256, bf16.
item r50_v15 60 170 "${BENCH[@]}" --config=configs/imagenet_r50.py:v1.5 --batch_size=256 \
  --steps=30 --warmup=10 --repeats=3 --json="$OUT/r50_v15.json"

# 2. ResNet-56 on real CIFAR-10 with on-device augmentation (decodes the archive once, cached for item 3).
item r56_cifar10 70 190 "${BENCH[@]}" --config=configs/cifar10.py:resnet56 --real_data \
  --set=data.path="$CIFAR_TAR" --steps_per_call=1,20 --steps=100 --warmup=20 --json="$OUT/r56_cifar10.json"

# 3. The paper's full ResNet-20 recipe (64k steps, eval every 1k) through the trainer's own entry point.
# At the time limit the trainer gets SIGTERM: it checkpoints and stops; metrics.jsonl has how far it got.
rm -rf /tmp/r20_full
item r20_full 100 250 python3 -m resnet_jax.main --config=configs/cifar10.py:resnet20 --workdir=/tmp/r20_full \
  --config.data.path="$CIFAR_TAR" --config.model.dtype=bfloat16 --config.steps_per_call="$R20_STEPS_PER_CALL"
if [[ -d /tmp/r20_full ]]; then
  mkdir -p "$OUT/r20_full"
  cp /tmp/r20_full/{summary.json,metrics.jsonl,config.json} "$OUT/r20_full/" 2>/dev/null
  first=$(grep -o 'first step compiled and ran in [0-9.]*' "$OUT/r20_full.log" | grep -o '[0-9.]*$')
  printf '{"process_wall_s": %s, "first_step_s": %s, "steps_per_call": %s, "exit": %s}\n' \
    "$ITEM_WALL" "${first:-null}" "$R20_STEPS_PER_CALL" "$ITEM_RC" >"$OUT/r20_full/wall.json"
fi

# 4. ResNet-50 v1 (the paper's: stride on the first 1x1), batch 256, bf16.
item r50_v1 60 150 "${BENCH[@]}" --config=configs/imagenet_r50.py --batch_size=256 \
  --steps=30 --warmup=10 --repeats=3 --json="$OUT/r50_v1.json"

# 5. CIFAR ResNet-20 and ResNet-110 (scanned: the config's default from depth 110), synthetic data.
item r20_synth 30 90 "${BENCH[@]}" --config=configs/cifar10.py:resnet20 --steps_per_call=1,20 \
  --steps=200 --warmup=20 --json="$OUT/r20_synth.json"
item r110_synth 45 120 "${BENCH[@]}" --config=configs/cifar10.py:resnet110 --steps_per_call=1,20 \
  --steps=60 --warmup=20 --json="$OUT/r110_synth.json"

# 6. ResNet-1202, scanned, batch 128: it trains on one GPU; compile and step time.
item r1202_synth 40 120 "${BENCH[@]}" --config=configs/cifar10.py:resnet1202 --steps=6 --warmup=2 \
  --repeats=2 --no_loop --json="$OUT/r1202_synth.json"

# 7. One XLA flag, cheap: command buffers (CUDA graphs) off, on the launch-bound ResNet-20 at 1 step/call
# (compare with item 5's first row).
item r20_synth_nocmdbuf 25 60 env XLA_FLAGS="--xla_gpu_enable_command_buffer=" "${BENCH[@]}" \
  --config=configs/cifar10.py:resnet20 --steps=200 --warmup=20 --json="$OUT/r20_synth_nocmdbuf.json"

# 8. ResNet-56 with scanned blocks (not the config's default), synthetic.
item r56_scan_synth 40 100 "${BENCH[@]}" --config=configs/cifar10.py:resnet56 --set=model.scan_blocks=true \
  --steps_per_call=1,20 --steps=100 --warmup=20 --json="$OUT/r56_scan_synth.json"

log "summary"
python3 benchmarks/session_summary.py "$OUT" | tee "$OUT/summary.md"
log "done"
