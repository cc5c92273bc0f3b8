# shellcheck shell=bash
# Helpers sourced by the launch scripts.

# show CMD...: print a command as a shell would read it back, quoting only the words that need it.
show() {
  local out=() w
  for w in "$@"; do
    if [[ "$w" =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then out+=("$w"); else out+=("${w@Q}"); fi
  done
  echo "${out[*]}"
}

# run_name CONFIG: the default workdir's last part: the config file's name and its argument, so that
# configs/imagenet_r34.py:C and configs/imagenet_r34.py do not share a workdir (-> imagenet_r34-C).
run_name() {
  local stem arg
  stem=$(basename "${1%%:*}" .py)
  if [[ $1 != *:* ]]; then echo "$stem"; return; fi
  arg=${1#*:}
  echo "$stem-${arg//[^A-Za-z0-9_.-]/-}"
}
