#!/usr/bin/env bash
# A `turnout serve` for the proxy benchmark, started as users start it: the daemon with a turnout.toml
# whose one service routes to the benchmark's upstream (static upstreams: no container involved).
#
#   bench/serve_target.sh NAME PORT UPSTREAM [KEY=VALUE ...]    # extra [proxy] settings, TOML values
#   e.g. bench/serve_target.sh serve-nolog 18096 127.0.0.1:18080 access_log=false
#
# Its state dir is $WORK/NAME; logs go to stderr as they do for a user (the harness sends them to a file).
# RULES=N (1-3) gives the service N routing rules that the benchmark's requests do not match (issue 14's
# "three rules": a header, a cookie hash and a query regex). TURNOUT_SRC=DIR runs the `turnout serve` of
# another checkout (e.g. `git archive OLD | tar -x -C DIR`) with this tree's interpreter.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
PY="${TURNOUT_PYTHON:-$ROOT/.venv/bin/python}"
SRC="${TURNOUT_SRC:-$ROOT}"
RULES=${RULES:-0}
name=$1 port=$2 upstream=$3; shift 3
dir="${WORK:-/tmp/turnout-bench}/$name"
rm -rf "$dir" && mkdir -p "$dir"
{
  echo "[proxy]"
  echo "listen = \"127.0.0.1:$port\""
  echo "state_dir = \"$dir/state\""
  for setting in "$@"; do echo "${setting%%=*} = ${setting#*=}"; done
  echo
  echo "[services.bench]"
  echo "upstreams = [\"$upstream\"]"
  rules=(
    'name = "insiders"\nmatch = { header = { "X-Canary" = "always" } }'
    'name = "beta-10pct"\nmatch = { hash = { cookie = "account_id", percent = 10 } }'
    'name = "preview"\nmatch = { query = { preview = "regex:[0-9]+" } }'
  )
  for ((i = 0; i < RULES && i < ${#rules[@]}; i++)); do
    printf '\n[[services.bench.rules]]\n%b\nto = "canary"\n' "${rules[$i]}"
  done
} >"$dir/turnout.toml"
cd "$SRC"
exec "$PY" -m controller.cli serve --config "$dir/turnout.toml"
