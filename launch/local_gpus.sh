#!/usr/bin/env bash
# Train on one host with all its GPUs (or those in --gpus): one process drives every visible GPU;
# the trainer shards each batch over them. Output goes to the terminal and to <workdir>/train.log.
#
# Usage: launch/local_gpus.sh [--gpus=0,1,...] [--config=FILE[:ARG]] [--workdir=DIR] [--dry-run]
#                             [-- extra trainer flags]
# Defaults: all GPUs, --config=configs/imagenet_r50.py, --workdir=runs/<config name>[-<its argument>].
# Environment: PYTHON (default python3). Rerun the same command to resume.
set -euo pipefail

gpus=""
config="configs/imagenet_r50.py"
workdir=""
dry_run=0
extra=()
while (($#)); do
  case "$1" in
    --gpus=*) gpus="${1#*=}" ;;
    --config=*) config="${1#*=}" ;;
    --workdir=*) workdir="${1#*=}" ;;
    --dry-run) dry_run=1 ;;
    --) shift; extra=("$@"); break ;;
    *) echo "local_gpus.sh: unknown option $1 (see the header of $0)" >&2; exit 2 ;;
  esac
  shift
done
cd "$(dirname "$0")/.."
# shellcheck source=/dev/null
source launch/lib.sh
workdir="${workdir:-runs/$(run_name "$config")}"

cmd=("${PYTHON:-python3}" -m resnet_jax.main "--config=$config" "--workdir=$workdir" "${extra[@]}")
[[ -n "$gpus" ]] && cmd=(env "CUDA_VISIBLE_DEVICES=$gpus" "${cmd[@]}")
echo "$(show "${cmd[@]}") 2>&1 | tee -a $workdir/train.log"
((dry_run)) && exit 0
mkdir -p "$workdir"
"${cmd[@]}" 2>&1 | tee -a "$workdir/train.log"
