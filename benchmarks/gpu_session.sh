#!/usr/bin/env bash
# One prepared GPU session (written for one H200): a list of items, run most important first.
#
#   OUT=/tmp/gpu_session bash benchmarks/gpu_session.sh              # from the repository root
#   ITEMS="r50_v15 peer_r50" OUT=... bash benchmarks/gpu_session.sh  # chosen items, in that order
#
# Needs: jax with CUDA, flax, optax, orbax-checkpoint, pillow; ml_collections and tensorboardX as wheels
# in .whl/ (installed here into /tmp/site when they are not importable); the CIFAR-10 JPEG archive at
# .data/cifar10-jpeg.tar.gz (CIFAR_TAR=... to change); for peer_r50, google/flax examples/imagenet in
# .peer/flax/examples/imagenet (ignored; see benchmarks/peer_flax_imagenet.py); for peer_torch_*, torch
# and torchvision (in the device image). No TensorFlow anywhere.
# With the device tool (about 20 MiB travel; leave time for the machine's start in the 15 minutes):
#   run(command="OUT=$OUT BUDGET_S=480 bash benchmarks/gpu_session.sh", carry=[".whl", ".data", ".peer"],
#       timeout_s=560)
#
# Each item is skipped when less than its estimated time is left of BUDGET_S (default 510 s) and
# killed at its cap or when the budget runs out, so a timeout loses only the last items. Every item
# writes JSON into $WORK, packed into $OUT after each item; $OUT/summary.md is Markdown for
# BENCHMARKS.md. ITEMS="input_folder e2e_dali e2e_dali_nocmdbuf e2e_tfdata main_folder_dali input_cpu" is
# issue #16's plan (unrun so far: see run_item). The default ITEMS are the second session's plan for issue #7 (same-session peer,
# where the ResNet-20 and ResNet-50 steps spend their time, and cheap levers); `run_item` below
# lists every item, the first session's included.

set -uo pipefail
export PYTHONUNBUFFERED=1
cd "$(dirname "$0")/.." || exit 1
OUT=${OUT:-/tmp/gpu_session}
# Items write into WORK; after every item it is packed into $OUT/session.tar.gz next to $OUT/summary.md
# (the device tool returns at most 8 files from $OUT, so OUT holds only those two, plus traces.tar.gz).
WORK=${WORK:-/tmp/gpu_session_work}
BUDGET_S=${BUDGET_S:-510}
CIFAR_TAR=${CIFAR_TAR:-.data/cifar10-jpeg.tar.gz}
R20_STEPS_PER_CALL=${R20_STEPS_PER_CALL:-50}
mkdir -p "$OUT" "$WORK"
START=$(date +%s)

log() { echo "[$(date -u +%H:%M:%S) +$(($(date +%s) - START))s] $*"; }
left() { echo $((BUDGET_S - ($(date +%s) - START))); }

# pack: the results so far into $OUT (cheap; after every item, so a killed session keeps them).
pack() {
  tar czf "$OUT/session.tar.gz" --exclude=./traces -C "$WORK" .
  python3 benchmarks/session_summary.py "$WORK" >"$OUT/summary.md" 2>&1
}

# item NAME ESTIMATE_S CAP_S command...: output into $WORK/NAME.log, its last lines shown.
item() {
  local name=$1 est=$2 cap=$3
  shift 3
  local l
  l=$(left)
  ITEM_WALL=null ITEM_RC=null
  if ((l < est)); then
    log "SKIP $name (needs ~${est} s, ${l} s left)"
    echo "$name: skipped, needs ~${est} s, ${l} s left" >>"$WORK/skipped.txt"
    return 0
  fi
  local t=$((cap < l ? cap : l))
  log "START $name (limit ${t} s)"
  local t0
  t0=$(date +%s%N)
  timeout -k 10 "$t" "$@" >"$WORK/$name.log" 2>&1
  local rc=$?
  local ms=$((($(date +%s%N) - t0) / 1000000))
  ITEM_WALL=$(printf '%d.%03d' $((ms / 1000)) $((ms % 1000)))
  ITEM_RC=$rc
  grep -v -e '^\s*$' "$WORK/$name.log" | tail -n 8
  log "END $name rc=$rc after ${ITEM_WALL} s"
  if ((rc != 0)); then echo "$name: exit $rc (124 = hit its ${t} s limit)" >>"$WORK/skipped.txt"; fi
  pack
}


log "setup"
nvidia-smi | tee "$WORK/nvidia-smi.txt" || true
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit --format=csv || true
if ! python3 -c "import ml_collections, tensorboardX" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
python3 -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__, jax.devices())"
git log -1 --format='commit %h %s' 2>/dev/null || true
if [[ ! -f $CIFAR_TAR ]]; then log "no $CIFAR_TAR: the real-data items will fail"; fi
BENCH=(python3 benchmarks/train_step.py --dtype=bfloat16)
PROFILE=(python3 benchmarks/profile_step.py --dtype=bfloat16)
R50=(--config=configs/imagenet_r50.py:v1.5 --batch_size=256 --steps=30 --warmup=10 --repeats=3)
R20=(--config=configs/cifar10.py:resnet20 --steps_per_call=20 --steps=200 --warmup=20 --no_loop)

# XLA's own convolution kernels instead of cuDNN calls, and loops recorded into the CUDA graph. Compiled
# for an H100 without a GPU (benchmarks/gpu_aot.py, BENCHMARKS.md), the ResNet-20 step at 20 steps a call
# goes from ~100 host-issued launches a step (56 cuDNN calls between 40 graphs) to one launch a call.
CONV_FUSION="--xla_gpu_experimental_enable_conv_fusion=true"
CONV_FUSION_WHILE="$CONV_FUSION --xla_gpu_enable_command_buffer=+WHILE"

# r20_flags NAME FLAGS [EST CAP]: ResNet-20 at 20 steps/call (the full recipe's regime), synthetic, under XLA_FLAGS.
r20_flags() {
  item "r20_$1" "${3:-25}" "${4:-60}" env XLA_FLAGS="$2" "${BENCH[@]}" "${R20[@]}" --json="$WORK/r20_$1.json"
}

# fastest_r20: the XLA_FLAGS of the fastest ResNet-20 step measured so far in this session among
# r20_default, r20_conv_fusion and r20_conv_fusion_while ("" when none ran).
fastest_r20() {
  python3 - "$WORK" "$CONV_FUSION" "$CONV_FUSION_WHILE" <<'PY'
import json, pathlib, sys
work, flags = pathlib.Path(sys.argv[1]), {"default": "", "conv_fusion": sys.argv[2], "conv_fusion_while": sys.argv[3]}
ms = {}
for name in flags:
    try:
        ms[name] = json.loads((work / f"r20_{name}.json").read_text())["rows"][0]["step_ms"]
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        pass
best = min(ms, key=ms.get) if ms else "default"
print(f"fastest ResNet-20 step: {best} {ms}", file=sys.stderr)
print(flags[best])
PY
}

run_item() {
  case $1 in
    # --- issue #17: K seeds side by side in one program (train_step.py --pack), aggregate img/s ---
    pack_r20) # ResNet-20, 20 steps/call, K = 1, 2, 4, 8, 16 (one compile each); the unpacked step first
      item pack_r20 90 240 "${BENCH[@]}" --config=configs/cifar10.py:resnet20 --steps_per_call=20 --steps=100 \
        --warmup=20 --no_loop --pack=0,1,2,4,8,16 --json="$WORK/pack_r20.json" ;;
    pack_r56)
      item pack_r56 120 300 "${BENCH[@]}" --config=configs/cifar10.py:resnet56 --steps_per_call=20 --steps=60 \
        --warmup=20 --no_loop --pack=0,1,2,4,8,16 --json="$WORK/pack_r56.json" ;;
    pack_r110) # scanned blocks (the config's default from depth 110)
      item pack_r110 150 360 "${BENCH[@]}" --config=configs/cifar10.py:resnet110 --steps_per_call=20 --steps=40 \
        --warmup=20 --no_loop --pack=0,1,2,4,8,16 --json="$WORK/pack_r110.json" ;;
    pack_aot) # what the packed ResNet-20 step launches for K = 1..16, compiled for this card without running it
      item pack_aot 90 240 python3 benchmarks/gpu_aot.py --config=configs/cifar10.py:resnet20 --dtype=bfloat16 \
        --steps_per_call=20 --pack=1,2,4,8,16 --json="$WORK/pack_aot.json" ;;
    # --- issue #7, second session: a same-session peer, then where the time goes, then levers ---
    peer_r50) # the flax example's own ResNet-50 v1.5 step, bf16, batch 256 (issue: 6,879 img/s)
      item peer_r50 60 150 python3 benchmarks/peer_flax_imagenet.py --batch_size=256 --steps=30 \
        --warmup=10 --repeats=3 --json="$WORK/peer_r50.json" ;;
    peer_torch_eager) # torchvision resnet50, channels_last, bf16 autocast, eager (issue: 4,663 img/s)
      item peer_torch_eager 45 120 python3 benchmarks/peer_torchvision.py --modes=eager \
        --json="$WORK/peer_torch.json" ;;
    peer_torch_compile) # the same under torch.compile (issue: 6,887 img/s); compiling takes minutes
      item peer_torch_compile 150 300 python3 benchmarks/peer_torchvision.py --modes=compile \
        --json="$WORK/peer_torch.json" ;;
    r50_v15) # ours, same settings (first session: 6,933 img/s)
      item r50_v15 60 170 "${BENCH[@]}" "${R50[@]}" --no_loop --json="$WORK/r50_v15.json" ;;
    r50_v15_auto_layout) # XLA picks the state's layouts (compiled without a GPU: 876 -> 717 kernels and
      # copies, 378 -> 293 host launches a step; BENCHMARKS.md). CIFAR at 20 steps/call gains nothing from it.
      item r50_v15_auto_layout 60 170 "${BENCH[@]}" "${R50[@]}" --no_loop --state_layout=auto \
        --json="$WORK/r50_v15_auto_layout.json" ;;
    r50_v15_stem4) # the channel-padded stem (model.stem_channels=4)
      item r50_v15_stem4 60 170 "${BENCH[@]}" "${R50[@]}" --no_loop --set model.stem_channels=4 \
        --json="$WORK/r50_v15_stem4.json" ;;
    profile_r20) # kernel time table of the ResNet-20 step at 20 steps/call
      item profile_r20 45 110 "${PROFILE[@]}" --config=configs/cifar10.py:resnet20 --steps_per_call=20 \
        --steps=40 --trace_dir="$WORK/traces/r20" --json="$WORK/profile_r20.json" ;;
    profile_r20_graphs) # the same with CUDA graphs kept on while profiling (kernels may carry the graph's name)
      item profile_r20_graphs 45 110 env XLA_FLAGS="--xla_enable_command_buffers_during_profiling=true" \
        "${PROFILE[@]}" --config=configs/cifar10.py:resnet20 --steps_per_call=20 --steps=40 --group_by=kernel \
        --trace_dir="$WORK/traces/r20_graphs" --json="$WORK/profile_r20_graphs.json" ;;
    profile_r50) # kernel time table of the ResNet-50 v1.5 step, batch 256
      item profile_r50 70 150 "${PROFILE[@]}" --config=configs/imagenet_r50.py:v1.5 --batch_size=256 \
        --steps=10 --trace_dir="$WORK/traces/r50" --json="$WORK/profile_r50.json" ;;
    r20_default) r20_flags default "" ;;
    r20_conv_fusion) r20_flags conv_fusion "$CONV_FUSION" 50 150 ;; # compiles XLA's conv kernels: slower compile
    r20_conv_fusion_while) r20_flags conv_fusion_while "$CONV_FUSION_WHILE" 50 150 ;;
    r20_full_best) # the paper's recipe (batch 128) under the flags of the fastest step above (target <= 90 s)
      FULL_XLA_FLAGS=$(fastest_r20) full_run r20_full_best resnet20 "$R20_STEPS_PER_CALL" 140 230 ;;
    r56_conv_fusion_while) # ResNet-56 step under the same flags (5-minute target: 64k x step time)
      item r56_conv_fusion_while 60 150 env XLA_FLAGS="$CONV_FUSION_WHILE" "${BENCH[@]}" \
        --config=configs/cifar10.py:resnet56 --steps_per_call=20 --steps=100 --warmup=20 --no_loop \
        --json="$WORK/r56_conv_fusion_while.json" ;;
    aot_check) # gpu_aot.py checked against the card: its target description, then the ResNet-20 step (20
      # steps/call) compiled without the GPU from it and compiled for real (XLA's dump), counted alike
      # shellcheck disable=SC2016 # the inner script expands its own arguments
      item aot_check 60 150 bash -c 'w=$1; shift
        python3 benchmarks/gpu_aot.py --dump_target_config "$w/gpu_target.txtpb" ||
          cp benchmarks/gpu_targets/h100_sxm.txtpb "$w/gpu_target.txtpb" # (untried on a GPU so far)
        python3 benchmarks/gpu_aot.py --config=configs/cifar10.py:resnet20 --dtype=bfloat16 --steps_per_call=20 \
          --target="$w/gpu_target.txtpb" --json="$w/aot_check_deviceless.json"
        d=/tmp/gpu_session_dump_r20 # outside $WORK: a killed item must not leave the dump to be packed
        rm -rf "$d"
        XLA_FLAGS="--xla_dump_to=$d" "$@" --steps=40 --repeats=1 --json="$w/aot_check_run.json" &&
          python3 benchmarks/gpu_aot.py --from_dump "$d" --json="$w/aot_check_real.json"
        rc=$?; rm -rf "$d"; exit $rc' _ "$WORK" "${BENCH[@]}" "${R20[@]}" ;;
    r20_b256) # the recipe at batch 256 (configs/cifar10.py:resnet20,batch=256: lr 0.2, 32k steps)
      item r20_b256 25 60 "${BENCH[@]}" --config=configs/cifar10.py:resnet20,batch=256 --steps_per_call=20 \
        --steps=200 --warmup=20 --no_loop --json="$WORK/r20_b256.json" ;;
    r56_b256)
      item r56_b256 35 80 "${BENCH[@]}" --config=configs/cifar10.py:resnet56,batch=256 --steps_per_call=20 \
        --steps=100 --warmup=20 --no_loop --json="$WORK/r56_b256.json" ;;
    r20_full_b256) full_run r20_full_b256 resnet20,batch=256 25 100 200 ;; # target <= 90 s; test error?
    r56_full_b256) full_run r56_full_b256 resnet56,batch=256 10 300 420 ;; # target <= 300 s
    r20_cmdbuf_unroll) r20_flags cmdbuf_unroll "--xla_gpu_command_buffer_unroll_loops=true" ;;
    r20_cmdbuf_cudnn) r20_flags cmdbuf_cudnn "--xla_gpu_enable_command_buffer=+CUDNN" ;;
    r20_concurrent) r20_flags concurrent "--xla_gpu_graph_enable_concurrent_region=true" ;;
    r20_runtime_fusion) r20_flags runtime_fusion "--xla_gpu_use_runtime_fusion=true" ;;
    r20_nhwc) r20_flags nhwc "--xla_gpu_force_conv_nhwc=true" ;;
    r20_f32) # float32 convolutions (TF32) instead of bf16: small-channel convs may prefer them
      item r20_f32 25 60 python3 benchmarks/train_step.py --dtype=float32 "${R20[@]}" --json="$WORK/r20_f32.json" ;;
    r56_full) # the paper's full ResNet-56 recipe (target <= 300 s; ~321 s of steps at the first session's 5.0 ms)
      full_run r56_full resnet56 20 340 420 ;;
    r50_conv_fusion) # cuDNN conv fusion on the big net
      item r50_conv_fusion 60 170 env XLA_FLAGS="--xla_gpu_experimental_enable_conv_fusion=true" \
        "${BENCH[@]}" "${R50[@]}" --no_loop --json="$WORK/r50_conv_fusion.json" ;;

    # --- issue #16: ImageNet from a JPEG folder, each input pipeline feeding the ResNet-50 step ---
    # Through the trainer's own path: train.setup with data.path = the folder and data.pipeline, its
    # run.batches and run.update (benchmarks/input_pipeline.py --e2e); img/s (wall) and host CPU ms per image
    # (the process's CPU time, every thread), median of 3 rounds of 30 steps, feeds in turn within a round.
    # Need TensorFlow (tf.data rows) and NVIDIA DALI (dali rows) on the device machine: neither fits in the
    # device tool's 64 MiB carry (tensorflow-cpu ~1.4 GB, the DALI wheel 405 MiB), so these run only where
    # they are installed (pip install tensorflow-cpu==2.21.0 nvidia-dali-cuda120==2.4.0); each row is
    # written as soon as it is measured. The folder lives outside $WORK (it is ~120 MB, never packed).
    input_folder) # 1,024 + 64 generated ImageNet-like JPEGs (~110 KB, 500x375-800x600) in /tmp/ipbench
      item input_folder 60 240 python3 benchmarks/input_pipeline.py --workdir=/tmp/ipbench --train_images=1024 \
        --val_images=64 --only=none --skip=dali,quality --repeats=0 ;;
    input_cpu) # the side-by-side host CPU table (tf.data ours/flax-style, through the trainer's folder
      # iterator, DALI on the CPU) on this machine's cores
      item input_cpu 150 300 python3 benchmarks/input_pipeline.py --workdir=/tmp/ipbench --repeats=3 \
        --json="$WORK/input_cpu.json" ;;
    e2e_tfdata) # ResNet-50 v1.5 (bf16, batch 256) fed by tf.data from the folder: uint8 crops normalised in the
      # step with the prefetch thread (the trainer's default), without it, and float32 normalised on the host
      item e2e_tfdata 150 300 python3 benchmarks/input_pipeline.py --e2e --workdir=/tmp/ipbench --dtype=bfloat16 \
        --config=configs/imagenet_r50.py:v1.5 --repeats=3 --e2e_pipelines=tfdata,tfdata_no_prefetch,tfdata_float32 \
        --json="$WORK/e2e_tfdata.json" ;;
    e2e_dali) # the same fed by DALI (nvJPEG ROI decode on the GPU) with XLA's command buffers on (XLA's default;
      # benchmarks do not go through main, which turns them off for a dali run)
      item e2e_dali 90 240 python3 benchmarks/input_pipeline.py --e2e --workdir=/tmp/ipbench --dtype=bfloat16 \
        --config=configs/imagenet_r50.py:v1.5 --repeats=3 --e2e_pipelines=dali --json="$WORK/e2e_dali.json" ;;
    e2e_dali_nocmdbuf) # DALI with command buffers off, as DALI's JAX docs set them and main defaults to for
      # data.pipeline=dali: this pair's difference is what that default costs the step
      item e2e_dali_nocmdbuf 90 240 env XLA_FLAGS="--xla_gpu_enable_command_buffer=" python3 \
        benchmarks/input_pipeline.py --e2e --workdir=/tmp/ipbench --dtype=bfloat16 --repeats=3 \
        --config=configs/imagenet_r50.py:v1.5 --e2e_pipelines=dali --json="$WORK/e2e_dali_nocmdbuf.json" ;;
    main_folder_dali) # the command line itself: 200 steps of ResNet-50 v1.5 from the folder with DALI (main's
      # own XLA flags), to see the trainer's img/s lines and that a dali run trains on the card
      rm -rf /tmp/main_folder_dali
      item main_folder_dali 120 240 python3 -m resnet_jax.main --config=configs/imagenet_r50.py:v1.5 \
        --workdir=/tmp/main_folder_dali --config.data.path=/tmp/ipbench/imagenet_like --config.data.pipeline=dali \
        --config.model.dtype=bfloat16 --config.num_train_steps=200 --config.log_every_steps=50 \
        --config.eval_every_steps=200 --config.checkpoint_every_steps=200 --config.data.eval_crop=center
      mkdir -p "$WORK/main_folder_dali"
      cp /tmp/main_folder_dali/{summary.json,metrics.jsonl,config.json} "$WORK/main_folder_dali/" 2>/dev/null
      pack ;;

    # --- the first session's items (2026-11-27) ---
    r50_v15_loop) # ResNet-50 v1.5 with the trainer-like loop timed too
      item r50_v15_loop 60 170 "${BENCH[@]}" "${R50[@]}" --json="$WORK/r50_v15_loop.json" ;;
    r56_cifar10) # real CIFAR-10 with on-device augmentation, 1 and 20 steps/call
      item r56_cifar10 70 190 "${BENCH[@]}" --config=configs/cifar10.py:resnet56 --real_data \
        --set=data.path="$CIFAR_TAR" --steps_per_call=1,20 --steps=100 --warmup=20 \
        --json="$WORK/r56_cifar10.json" ;;
    r20_full) full_run r20_full resnet20 "$R20_STEPS_PER_CALL" 140 250 ;;
    r50_v1) # the paper's ResNet-50 (stride on the first 1x1)
      item r50_v1 60 150 "${BENCH[@]}" --config=configs/imagenet_r50.py --batch_size=256 \
        --steps=30 --warmup=10 --repeats=3 --json="$WORK/r50_v1.json" ;;
    r20_synth)
      item r20_synth 30 90 "${BENCH[@]}" --config=configs/cifar10.py:resnet20 --steps_per_call=1,20 \
        --steps=200 --warmup=20 --json="$WORK/r20_synth.json" ;;
    r110_synth) # scanned: the config's default from depth 110
      item r110_synth 45 120 "${BENCH[@]}" --config=configs/cifar10.py:resnet110 --steps_per_call=1,20 \
        --steps=60 --warmup=20 --json="$WORK/r110_synth.json" ;;
    r1202_synth)
      item r1202_synth 40 120 "${BENCH[@]}" --config=configs/cifar10.py:resnet1202 --steps=6 --warmup=2 \
        --repeats=2 --no_loop --json="$WORK/r1202_synth.json" ;;
    r20_synth_nocmdbuf) # command buffers (CUDA graphs) off, 1 step/call
      item r20_synth_nocmdbuf 25 60 env XLA_FLAGS="--xla_gpu_enable_command_buffer=" "${BENCH[@]}" \
        --config=configs/cifar10.py:resnet20 --steps=200 --warmup=20 --json="$WORK/r20_synth_nocmdbuf.json" ;;
    r56_scan_synth)
      item r56_scan_synth 40 100 "${BENCH[@]}" --config=configs/cifar10.py:resnet56 \
        --set=model.scan_blocks=true --steps_per_call=1,20 --steps=100 --warmup=20 \
        --json="$WORK/r56_scan_synth.json" ;;
    *) log "unknown item $1 (see run_item in $0)"; echo "$1: unknown item" >>"$WORK/skipped.txt" ;;
  esac
}

# full_run NAME NET STEPS_PER_CALL ESTIMATE_S CAP_S: the full CIFAR-10 recipe of configs/cifar10.py:NET through
# the trainer's own entry point, under FULL_XLA_FLAGS. At the time limit the trainer gets SIGTERM: it
# checkpoints and stops, and metrics.jsonl has how far it got.
full_run() {
  local name=$1 net=$2 k=$3 est=$4 cap=$5
  rm -rf "/tmp/$name"
  item "$name" "$est" "$cap" env XLA_FLAGS="${FULL_XLA_FLAGS:-}" python3 -m resnet_jax.main \
    --config=configs/cifar10.py:"$net" --workdir="/tmp/$name" --config.data.path="$CIFAR_TAR" \
    --config.model.dtype=bfloat16 --config.steps_per_call="$k"
  if [[ -d /tmp/$name ]]; then
    mkdir -p "$WORK/$name"
    cp "/tmp/$name"/{summary.json,metrics.jsonl,config.json} "$WORK/$name/" 2>/dev/null
    local first
    first=$(grep -o 'first step compiled and ran in [0-9.]*' "$WORK/$name.log" | grep -o '[0-9.]*$')
    printf '{"process_wall_s": %s, "first_step_s": %s, "steps_per_call": %s, "exit": %s}\n' \
      "$ITEM_WALL" "${first:-null}" "$k" "$ITEM_RC" >"$WORK/$name/wall.json"
    pack
  fi
}

DEFAULT_ITEMS="pack_r20 r20_default r20_conv_fusion r20_conv_fusion_while r20_full_best peer_r50 r50_v15 r50_v15_auto_layout \
r56_conv_fusion_while r50_conv_fusion aot_check r20_b256 r20_full_b256 profile_r20 r50_v15_stem4 r56_b256 r20_f32 peer_torch_eager \
profile_r50 r20_cmdbuf_unroll r20_concurrent r20_runtime_fusion r20_nhwc peer_torch_compile pack_r56 pack_r110 pack_aot"
for name in ${ITEMS:-$DEFAULT_ITEMS}; do run_item "$name"; done

log "summary"
pack
cat "$OUT/summary.md"
if [[ -d $WORK/traces ]]; then # for profile_step.py --from_trace; the tool returns files up to 16 MiB
  tar czf "$OUT/traces.tar.gz" -C "$WORK" traces
  if (($(stat -c %s "$OUT/traces.tar.gz") > 15000000)); then tar czf "$OUT/traces.tar.gz" -C "$WORK" traces/r20; fi
fi
ls -l "$OUT"
log "done"
