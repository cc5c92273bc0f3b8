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
