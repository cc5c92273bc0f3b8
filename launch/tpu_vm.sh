#!/usr/bin/env bash
# Train on Cloud TPU VMs: request the capacity as a queued resource (on-demand, Spot or reserved; one slice
# or several joined over the data-center network), install this project on every worker, run the same
# training command on every worker (resnet_jax.cluster joins them through jax's own TPU VM detection),
# one log per worker, stop all workers at the first failure, then delete the capacity. With --watch, a
# preempted slice is requested again and the same command reruns (it resumes from the checkpoint) until
# the run is done.
usage() {
  cat <<'EOF'
Usage: launch/tpu_vm.sh [options] [-- extra trainer flags, e.g. --config.data.tfds_dir=gs://B/tfds]

Capacity (gcloud compute tpus queued-resources create):
  --name=NAME               queued resource and TPU VM name   (default: resnet-jax-$USER)
  --zone=ZONE               zone                               (default: us-central2-b)
  --accelerator-type=TYPE   slice: v4-8, v5litepod-16, v5p-32, v6e-64, ...  (default: v4-8)
  --version=VERSION         TPU runtime version                (default: from TYPE, see docs/launch.md)
  --project=PROJECT         Google Cloud project               (default: gcloud's configured one)
  --spot                    Spot capacity: cheaper, can be preempted at any time
  --reserved                capacity from the project's reservation
  --num-slices=N            multislice: N slices of TYPE joined over DCN (default: 1)
Training:
  --config=FILE[:ARG]       training config                    (default: configs/imagenet_r50.py)
  --workdir=DIR             gs://..., shared by all workers     (default: gs://$BUCKET/resnet_jax/<config>)
  --workers=N               hosts per slice                    (default: asked from gcloud; --dry-run guesses)
  --python=PYTHON           interpreter for the venv           (default: python3.11, installed with apt)
Lifecycle:
  --watch                   when the capacity is preempted, request it again and rerun the same command,
                            until worker 0 reports the run done (at most --max-restarts times)
  --max-restarts=N          with --watch                       (default: 20)
  --keep                    keep the capacity at the end (rerun with the same --name to resume in it)
  --dry-run                 print every command, run none
  --help                    this text
Environment: BUCKET (default workdir), TPU_POLL_SECONDS (state polling, default 60).
Commits ship, not the working tree: the workers get `git archive HEAD`. Logs: logs/<name>/worker-<i>.log,
i = the jax process index (slice x workers per slice + worker).
EOF
}
set -euo pipefail

name="resnet-jax-${USER:-user}"
zone="us-central2-b"
type="v4-8"
version=""
project=""
capacity=""
slices=1
config="configs/imagenet_r50.py"
workdir=""
workers=""
python="python3.11"
watch=0
max_restarts=20
keep=0
dry_run=0
extra=()
while (($#)); do
  case "$1" in
    --name=*) name="${1#*=}" ;;
    --zone=*) zone="${1#*=}" ;;
    --accelerator-type=*) type="${1#*=}" ;;
    --version=*) version="${1#*=}" ;;
    --project=*) project="${1#*=}" ;;
    --spot | --reserved)
      if [[ -n "$capacity" && "$capacity" != "$1" ]]; then
        echo "tpu_vm.sh: give --spot or --reserved, not both" >&2
        exit 2
      fi
      capacity="$1" ;;
    --num-slices=*) slices="${1#*=}" ;;
    --config=*) config="${1#*=}" ;;
    --workdir=*) workdir="${1#*=}" ;;
    --workers=*) workers="${1#*=}" ;;
    --python=*) python="${1#*=}" ;;
    --watch) watch=1 ;;
    --max-restarts=*) max_restarts="${1#*=}" ;;
    --keep) keep=1 ;;
    --dry-run) dry_run=1 ;;
    -h | --help) usage; exit 0 ;;
    --) shift; extra=("$@"); break ;;
    *) echo "tpu_vm.sh: unknown option $1 (see launch/tpu_vm.sh --help)" >&2; exit 2 ;;
  esac
  shift
done
if ! [[ "$slices" =~ ^[1-9][0-9]*$ && "$max_restarts" =~ ^[0-9]+$ ]]; then
  echo "tpu_vm.sh: --num-slices and --max-restarts take whole numbers (see --help)" >&2
  exit 2
fi

root="$(cd "$(dirname "$0")/.." && pwd)"
# shellcheck source=/dev/null
source "$root/launch/lib.sh"
stem="$(run_name "$config")"
if [[ -z "$workdir" ]]; then
  if [[ -n "${BUCKET:-}" ]]; then
    workdir="gs://${BUCKET}/resnet_jax/${stem}"
  elif ((dry_run)); then
    workdir="gs://BUCKET/resnet_jax/${stem}"
  else
    echo "tpu_vm.sh: set --workdir=gs://... (or BUCKET): every worker must see the same checkpoints" >&2
    exit 2
  fi
fi

# The default runtime version of each TPU generation.
if [[ -z "$version" ]]; then
  case "$type" in
    v5litepod-*) version="v2-alpha-tpuv5-lite" ;;
    v5p-*) version="v2-alpha-tpuv5" ;;
    v6e-*) version="v2-alpha-tpuv6e" ;;
    *) version="tpu-ubuntu2204-base" ;;
  esac
fi

# Hosts in a slice, from its name: v2-v5p count TensorCores (8 a host), v5e/v6e count chips (4 a host
# above 8). Only for --dry-run; a real run asks gcloud.
guess_workers() {
  local n="${type##*-}"
  case "$type" in
    v5litepod-* | v6e-*) if ((n <= 8)); then echo 1; else echo $((n / 4)); fi ;;
    *) if ((n <= 8)); then echo 1; else echo $((n / 8)); fi ;;
  esac
}

# Print a command; run it unless --dry-run.
run() {
  show "$@" || true  # (the terminal may be gone: SIGHUP)
  ((dry_run)) || "$@"
}

jax_version="$(sed -n 's/^jax==//p' "$root/requirements.txt")"
# shellcheck disable=SC2088  # "~" expands on the workers
venv="~/resnet_jax_venv"
pkg="${TMPDIR:-/tmp}/resnet_jax-${name}.tar.gz"
logdir="logs/${name}"
poll="${TPU_POLL_SECONDS:-60}"
where=("--zone=$zone")
[[ -n "$project" ]] && where+=("--project=$project")
qr=(gcloud compute tpus queued-resources)
tpu=(gcloud compute tpus tpu-vm)
# The TPU VMs (nodes) of the request: one named NAME, or NAME-0 ... NAME-<N-1> for N slices.
nodes=("$name")
if ((slices > 1)); then
  nodes=()
  for ((s = 0; s < slices; s++)); do nodes+=("$name-$s"); done
fi

# 1. The capacity: a queued resource, reused when it exists and is usable (e.g. after --keep).
state() { "${qr[@]}" describe "$name" "${where[@]}" "--format=value(state.state)" 2>/dev/null || echo ABSENT; }
request() {
  local create=("${qr[@]}" create "$name" "${where[@]}" "--accelerator-type=$type" "--runtime-version=$version")
  if ((slices > 1)); then create+=("--node-count=$slices" "--node-prefix=$name"); else create+=("--node-id=$name"); fi
  [[ -n "$capacity" ]] && create+=("$capacity")
  run "${create[@]}"
}
release() { run "${qr[@]}" delete "$name" "${where[@]}" --force --quiet; }  # --force: its TPU VMs too
wait_active() {
  local s
  show "${qr[@]}" describe "$name" "${where[@]}" "--format=value(state.state)"
  echo "# ... every ${poll} s until ACTIVE (WAITING_FOR_RESOURCES and PROVISIONING come first)"
  ((dry_run)) && return 0
  while s="$(state)"; [[ "$s" != ACTIVE ]]; do
    case "$s" in
      FAILED | SUSPENDED | ABSENT)
        echo "tpu_vm.sh: the queued resource $name is $s, not ACTIVE (gcloud compute tpus queued-resources describe $name ${where[*]})" >&2
        return 1 ;;
    esac
    sleep "$poll"
  done
}
obtain() {
  local s=ABSENT
  ((dry_run)) || s="$(state)"
  case "$s" in
    ACTIVE) echo "# reusing the ACTIVE queued resource $name" ;;
    WAITING_FOR_RESOURCES | PROVISIONING | ACCEPTED | CREATING) echo "# waiting for the queued resource $name ($s)" ;;
    ABSENT) request ;;
    *) release; request ;;  # FAILED, SUSPENDED (a preempted Spot slice): request it again
  esac
  wait_active
}

# 2. The project on every worker: the committed tree, a venv with the pinned requirements and jax[tpu].
install="command -v $python >/dev/null || { sudo apt-get -qq update && sudo apt-get -qq install -y $python $python-venv; }"
install+=" && rm -rf ~/resnet_jax && mkdir ~/resnet_jax && tar -xzf ~/resnet_jax.tar.gz -C ~/resnet_jax"
install+=" && $python -m venv $venv && $venv/bin/pip install -q -r ~/resnet_jax/requirements.txt"
install+=" 'jax[tpu]==$jax_version'"
ship() {
  local node
  run git -C "$root" archive --format=tar.gz -o "$pkg" HEAD
  for node in "${nodes[@]}"; do
    run "${tpu[@]}" scp "$pkg" "$node:resnet_jax.tar.gz" "${where[@]}" --worker=all
    run "${tpu[@]}" ssh "$node" "${where[@]}" --strict-host-key-checking=no --worker=all "--command=$install"
  done
}

# 3. The same training command on every worker, one ssh each so that each has its own log and exit
#    status (--worker=all would interleave the logs and report only when all have ended).
printf -v flags ' %q' "--config=$config" "--workdir=$workdir" "${extra[@]}"
train="cd ~/resnet_jax && echo \$\$ > /tmp/resnet_jax.pid && exec $venv/bin/python -m resnet_jax.main$flags"
# shellcheck disable=SC2016  # $(...) runs on the workers
stop_command='--command=kill $(cat /tmp/resnet_jax.pid) 2>/dev/null || true'
stop_all() {
  local node
  for node in "${nodes[@]}"; do
    "${tpu[@]}" ssh "$node" "${where[@]}" --strict-host-key-checking=no --worker=all "$stop_command" || true
  done
}
pids=()
train_all() {  # returns 0 when every worker exited 0
  local node i k=0 status=0
  if [[ -z "$workers" ]]; then
    if ((dry_run)); then
      workers="$(guess_workers)"
      show "${tpu[@]}" describe "${nodes[0]}" "${where[@]}" "--format=value(networkEndpoints.len())"
    else
      workers="$("${tpu[@]}" describe "${nodes[0]}" "${where[@]}" "--format=value(networkEndpoints.len())")"
    fi
  fi
  run mkdir -p "$logdir"
  pids=()
  for node in "${nodes[@]}"; do
    for ((i = 0; i < workers; i++, k++)); do
      ssh=("${tpu[@]}" ssh "$node" "${where[@]}" --strict-host-key-checking=no "--worker=$i" "--command=$train")
      echo "$(show "${ssh[@]}") > $logdir/worker-$k.log 2>&1 &"
      if ((!dry_run)); then
        "${ssh[@]}" >"$logdir/worker-$k.log" 2>&1 &
        pids+=("$!")
      fi
    done
  done
  if ((dry_run)); then
    echo "# on the first worker to fail, for each TPU VM:"
    show "${tpu[@]}" ssh "${nodes[0]}" "${where[@]}" --strict-host-key-checking=no --worker=all "$stop_command"
    return 0
  fi
  for ((i = 0; i < ${#pids[@]}; i++)); do
    if ! wait -n "${pids[@]}"; then
      status=1
      echo "tpu_vm.sh: a worker failed (see $logdir): stopping all workers" >&2
      stop_all
      wait "${pids[@]}" || true
      break
    fi
  done
  pids=()
  return "$status"
}

# Ctrl-C, a closed terminal (SIGHUP) or SIGTERM: the workers finish their step, checkpoint and exit
# (SIGTERM to each trainer), then the EXIT trap releases the capacity unless --keep. The workers' ssh run
# in their own process groups (set -m), so the terminal's signals reach only this script.
set -m
# shellcheck disable=SC2317  # called by the traps below
interrupted() {
  echo "tpu_vm.sh: $1: stopping the workers (each checkpoints first)" >&2 || true
  if ((${#pids[@]})); then
    stop_all
    wait "${pids[@]}" || true
  fi
  exit "$2"
}
trap 'interrupted SIGINT 130' INT
trap 'interrupted SIGHUP 129' HUP
trap 'interrupted SIGTERM 143' TERM
if ((!keep)); then
  trap 'release' EXIT
fi

done_line() { grep -qs '^done' "$logdir/worker-0.log"; }  # process 0's last line when the run is complete
obtain
ship
if ((dry_run)); then
  train_all
  if ((watch)); then
    echo "# --watch: until worker 0 prints 'done' (at most $max_restarts restarts): when the workers end,"
    show "${qr[@]}" describe "$name" "${where[@]}" "--format=value(state.state)"
    echo "# ACTIVE: rerun the workers as above; SUSPENDED or FAILED (preempted): request it again,"
    release
    request
    echo "# then wait until ACTIVE, ship to every worker and rerun the workers as above"
  fi
  exit 0
fi
restarts=0
while true; do
  status=0
  train_all || status=$?
  if done_line || ((!watch)); then break; fi
  sleep "$poll"  # a preempted slice's queued resource leaves ACTIVE shortly after its VMs stop
  s="$(state)"
  if [[ "$s" == ACTIVE && "$status" != 0 ]]; then
    echo "tpu_vm.sh: a worker failed on a healthy slice (see $logdir): not rerunning" >&2
    break
  fi
  if ((restarts++ >= max_restarts)); then
    echo "tpu_vm.sh: stopped after $max_restarts restarts (--max-restarts) without a finished run" >&2
    status=1
    break
  fi
  echo "# queued resource $name is $s: restart $restarts of at most $max_restarts"
  if [[ "$s" != ACTIVE ]]; then
    obtain
    ship
  fi
done
echo "# training ended with status $status; logs in $logdir"
exit "$status"
