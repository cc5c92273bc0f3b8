#!/usr/bin/env bash
# Train on a Cloud TPU VM or pod slice: create it, install this project on every worker, run the same
# training command on every worker (jax.distributed.initialize() in resnet_jax.main finds the others),
# one log per worker, stop all workers at the first failure, then delete the VM.
#
# Usage: launch/tpu_vm.sh [options] [-- extra trainer flags, e.g. --config.data.tfds_dir=gs://B/tfds]
#   --name=NAME               TPU VM name                  (default: resnet-jax-$USER)
#   --zone=ZONE               zone                         (default: us-central2-b)
#   --accelerator-type=TYPE   slice                        (default: v4-8, one host with 4 chips)
#   --version=VERSION         TPU software version         (default: from TYPE; v4: tpu-ubuntu2204-base)
#   --project=PROJECT         Google Cloud project         (default: gcloud's configured one)
#   --spot                    create a Spot VM
#   --config=FILE[:ARG]       training config              (default: configs/imagenet_r50.py)
#   --workdir=DIR             shared by all workers        (default: gs://$BUCKET/resnet_jax/<config name>[-<arg>])
#   --workers=N               hosts in the slice           (default: asked from gcloud; --dry-run guesses)
#   --python=PYTHON           interpreter for the venv     (default: python3.11, installed with apt)
#   --keep                    keep the VM at the end (rerun with the same --name to resume)
#   --dry-run                 print every command, run none
# Commits ship, not the working tree: the workers get `git archive HEAD`. Logs: logs/<name>/worker-<i>.log.
set -euo pipefail

name="resnet-jax-${USER:-user}"
zone="us-central2-b"
type="v4-8"
version=""
project=""
spot=0
config="configs/imagenet_r50.py"
workdir=""
workers=""
python="python3.11"
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
    --spot) spot=1 ;;
    --config=*) config="${1#*=}" ;;
    --workdir=*) workdir="${1#*=}" ;;
    --workers=*) workers="${1#*=}" ;;
    --python=*) python="${1#*=}" ;;
    --keep) keep=1 ;;
    --dry-run) dry_run=1 ;;
    --) shift; extra=("$@"); break ;;
    *) echo "tpu_vm.sh: unknown option $1 (see the header of $0)" >&2; exit 2 ;;
  esac
  shift
done

# shellcheck source=/dev/null
source "$(dirname "$0")/lib.sh"
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

# The default software version of each TPU generation.
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
  show "$@"
  ((dry_run)) || "$@"
}

root="$(cd "$(dirname "$0")/.." && pwd)"
jax_version="$(sed -n 's/^jax==//p' "$root/requirements.txt")"
# shellcheck disable=SC2088  # "~" expands on the workers
venv="~/resnet_jax_venv"
pkg="${TMPDIR:-/tmp}/resnet_jax-${name}.tar.gz"
logdir="logs/${name}"
tpu=(gcloud compute tpus tpu-vm)
where=("--zone=$zone")
[[ -n "$project" ]] && where+=("--project=$project")
ssh=("${tpu[@]}" ssh "$name" "${where[@]}" --strict-host-key-checking=no)

# 1. The VM (reused when it exists, e.g. after --keep).
if ((!dry_run)) && "${tpu[@]}" describe "$name" "${where[@]}" >/dev/null 2>&1; then
  echo "# reusing the existing TPU VM $name"
else
  create=("${tpu[@]}" create "$name" "${where[@]}" "--accelerator-type=$type" "--version=$version")
  ((spot)) && create+=(--spot)
  run "${create[@]}"
fi
if ((!keep)); then
  trap 'run "${tpu[@]}" delete "$name" "${where[@]}" --quiet' EXIT
  trap 'exit 143' TERM  # so that the EXIT trap also runs when the script is terminated
fi

# 2. The project on every worker: the committed tree, a venv with the pinned requirements and jax[tpu].
run git -C "$root" archive --format=tar.gz -o "$pkg" HEAD
run "${tpu[@]}" scp "$pkg" "$name:resnet_jax.tar.gz" "${where[@]}" --worker=all
install="command -v $python >/dev/null || { sudo apt-get -qq update && sudo apt-get -qq install -y $python $python-venv; }"
install+=" && rm -rf ~/resnet_jax && mkdir ~/resnet_jax && tar -xzf ~/resnet_jax.tar.gz -C ~/resnet_jax"
install+=" && $python -m venv $venv && $venv/bin/pip install -q -r ~/resnet_jax/requirements.txt"
install+=" 'jax[tpu]==$jax_version'"
run "${ssh[@]}" --worker=all "--command=$install"

# 3. The same training command on every worker, one ssh each so that each has its own log and exit
#    status (--worker=all would interleave the logs and report only when all have ended).
if [[ -z "$workers" ]]; then
  if ((dry_run)); then
    workers="$(guess_workers)"
    show "${tpu[@]}" describe "$name" "${where[@]}" "--format=value(networkEndpoints.len())"
  else
    workers="$("${tpu[@]}" describe "$name" "${where[@]}" "--format=value(networkEndpoints.len())")"
  fi
fi
printf -v flags ' %q' "--config=$config" "--workdir=$workdir" "${extra[@]}"
train="cd ~/resnet_jax && echo \$\$ > /tmp/resnet_jax.pid && exec $venv/bin/python -m resnet_jax.main$flags"
run mkdir -p "$logdir"
for ((i = 0; i < workers; i++)); do
  echo "$(show "${ssh[@]}" "--worker=$i" "--command=$train") > $logdir/worker-$i.log 2>&1 &"
  ((dry_run)) || "${ssh[@]}" "--worker=$i" "--command=$train" >"$logdir/worker-$i.log" 2>&1 &
done

# 4. The first worker to fail stops all the others.
# shellcheck disable=SC2016  # $(...) runs on the workers
stop=("${ssh[@]}" --worker=all '--command=kill $(cat /tmp/resnet_jax.pid) 2>/dev/null || true')
if ((dry_run)); then
  echo "# on the first worker to fail:"
  show "${stop[@]}"
  exit 0
fi
status=0
for ((i = 0; i < workers; i++)); do
  if ! wait -n; then
    status=1
    echo "tpu_vm.sh: a worker failed (see $logdir): stopping all workers" >&2
    "${stop[@]}" || true
    wait || true
    break
  fi
done
echo "# training ended with status $status; logs in $logdir"
exit "$status"
