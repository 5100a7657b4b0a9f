#!/usr/bin/env bash
# Turnout's proxy beside direct-to-upstream, nginx and HAProxy, in one run (loopback only).
#
# Uses harness.sh (the shared reverse-proxy harness): an nginx upstream with a 3-byte body on / and a
# 16 KiB file on /16k, wrk -t1 -c50 (and a c=1 run for added latency), interleaved rounds, medians.
# wrk and the upstream run on CPU 0, the proxy under test on CPU 1 (its own core).
# Our proxy runs with routing, per-pool metrics and header handling on, exactly as in production.
#
#   bench/proxy_bench.sh                 # REPS=5 DURATION=10: about 6 minutes
#   REPS=3 DURATION=5 bench/proxy_bench.sh
#   BEFORE_SRC=/tmp/old bench/proxy_bench.sh   # also an older proxy/ (see below), interleaved
#   ALSO_PYTHON=/other/venv/bin/python bench/proxy_bench.sh   # also this proxy/ on another interpreter
#   SERVE=1 bench/proxy_bench.sh         # also `turnout serve` as users run it (the daemon, access log on:
#                                        # "serve"; access_log = false: "serve-nolog"), beside nginx with
#                                        # its log off ("nginx") and on ("nginx-log", buffered combined log)
#   SERVE=1 SERVE_BEFORE=/tmp/old bench/proxy_bench.sh   # also an older checkout's `turnout serve`
# Results: $WORK/summary.txt and $WORK/runs.csv (default /tmp/turnout-bench).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
PY="${TURNOUT_PYTHON:-$ROOT/.venv/bin/python}"

for tool in wrk nginx haproxy curl; do
  if ! command -v "$tool" >/dev/null; then
    echo "proxy_bench: installing wrk nginx-light haproxy curl with apt-get" >&2
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk nginx-light haproxy curl >/dev/null
    break
  fi
done

export WORK=${WORK:-/tmp/turnout-bench}
export REPS=${REPS:-5}
export DURATION=${DURATION:-10}
export CANDIDATE_NAME=turnout
export PYTHON="$PY"
export CANDIDATE_CMD="$PY -m proxy --listen 127.0.0.1:\$CANDIDATE_PORT --upstream \$UPSTREAM"
# BEFORE_SRC=DIR: also bench the proxy/ package found in DIR (an older checkout, e.g. made with
# `git archive OLDCOMMIT proxy | tar -x -C DIR`) as "turnout-before", interleaved with this one.
# BEFORE_PYTHON: the interpreter for it (default: the same as this one's).
if [ -n "${BEFORE_SRC:-}" ]; then
  export BASELINE_NAME=turnout-before
  export BASELINE_CMD="env -C $BEFORE_SRC ${BEFORE_PYTHON:-$PY} -m proxy --listen 127.0.0.1:\$BASELINE_PORT --upstream \$UPSTREAM"
fi
# ALSO_PYTHON=PY: also bench this proxy/ on another interpreter (a venv with its dependencies), as
# "turnout-also", interleaved: what the interpreter alone is worth.
if [ -n "${ALSO_PYTHON:-}" ]; then
  export EXTRA_NAME=turnout-also
  export EXTRA_CMD="env -C $ROOT $ALSO_PYTHON -m proxy --listen 127.0.0.1:\$EXTRA_PORT --upstream \$UPSTREAM"
fi
# SERVE=1: `turnout serve` itself, its defaults (access log on) and with the log off, beside both nginxes.
if [ "${SERVE:-0}" = 1 ]; then
  export MORE_TARGETS="serve 18096 $HERE/serve_target.sh serve 18096 \$UPSTREAM
serve-nolog 18095 $HERE/serve_target.sh serve-nolog 18095 \$UPSTREAM access_log=false"
  # SERVE_BEFORE=DIR: also `turnout serve` (log on) from an older checkout DIR (with its bench/), as
  # "serve-before": what a change to the logged path is worth, in the same run.
  if [ -n "${SERVE_BEFORE:-}" ]; then
    MORE_TARGETS="$MORE_TARGETS
serve-before 18094 $SERVE_BEFORE/bench/serve_target.sh serve-before 18094 \$UPSTREAM"
  fi
fi
export ONLY=${ONLY:-"direct nginx haproxy turnout${BEFORE_SRC:+ turnout-before}${ALSO_PYTHON:+ turnout-also}$([ "${SERVE:-0}" = 1 ] && echo " nginx-log serve serve-nolog${SERVE_BEFORE:+ serve-before}")"}
exec "$HERE/harness.sh"
