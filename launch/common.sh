# shellcheck shell=bash
# Helpers shared by the launch scripts (sourced, not run).
#
# `run CMD...` prints the command (shell-quoted, prefixed with "+ ") and runs it, or only prints
# it when DRY_RUN=1. Every command a launcher would execute goes through `run`, so --dry-run
# shows exactly what a real run does.

DRY_RUN=${DRY_RUN:-0}

# One argument quoted for a POSIX shell: as is when it is plain, else in single quotes.
shq() {
  local q="'\\''"
  if [[ "$1" =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//\'/$q}"
  fi
}

# Print "+ cmd arg ..." with each argument quoted so it can be pasted into a shell.
print_cmd() {
  local out="+" arg
  for arg in "$@"; do
    out+=" $(shq "$arg")"
  done
  printf '%s\n' "$out"
}

run() {
  print_cmd "$@"
  if [[ "$DRY_RUN" != 1 ]]; then
    "$@"
  fi
}

die() {
  printf 'error: %s\n' "$*" >&2
  exit 2
}

# Join the remaining arguments into one string, each shell-quoted (for remote command lines).
quote_args() {
  local out="" arg
  for arg in "$@"; do
    out+=" $(shq "$arg")"
  done
  printf '%s' "${out# }"
}

# The python module of a task: train -> maestro_jax.train, generate -> maestro_jax.generate.
task_module() {
  case "$1" in
    train) printf 'maestro_jax.train' ;;
    generate) printf 'maestro_jax.generate' ;;
    *) die "unknown task '$1' (train | generate)" ;;
  esac
}
