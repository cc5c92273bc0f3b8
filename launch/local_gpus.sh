#!/usr/bin/env bash
# Train on one host with all its GPUs (or those in --gpus): one process drives every visible GPU;
# the trainer shards each batch over them. Output goes to the terminal and to <workdir>/train.log.
usage() {
  cat <<'EOF'
Usage: launch/local_gpus.sh [--gpus=0,1,...] [--config=FILE[:ARG]] [--workdir=DIR] [--dry-run]
                            [-- extra trainer flags]
  --gpus=LIST           the GPUs to use (CUDA_VISIBLE_DEVICES)  (default: all)
  --config=FILE[:ARG]   training config                         (default: configs/imagenet_r50.py)
  --workdir=DIR         run folder                              (default: runs/<config name>[-<arg>])
  --dry-run             print the command, run nothing
  --help                this text
Environment: PYTHON (default python3). Rerun the same command to resume. Ctrl-C, SIGTERM or a closed
terminal: the trainer finishes its step and checkpoints (the log keeps being written meanwhile).
EOF
}
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
    -h | --help) usage; exit 0 ;;
    --) shift; extra=("$@"); break ;;
    *) echo "local_gpus.sh: unknown option $1 (see launch/local_gpus.sh --help)" >&2; exit 2 ;;
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
# tee ignores SIGHUP: when the terminal closes, the trainer still has somewhere to write while it checkpoints.
"${cmd[@]}" 2>&1 | (trap '' HUP; exec tee -a "$workdir/train.log")
