#!/usr/bin/env bash
# The hot path's cost of routing rules and of shadow traffic, through bench/harness.sh (wrk -t1 -c50 and a
# c=1 run, interleaved rounds, medians; loopback only), three proxies per run beside the anchors:
#
#   MODE=rules  (default)  turnout           this tree, `python -m proxy`: one pool, no rules (today's service)
#                          turnout-before    BEFORE_SRC's proxy/ (required: e.g. `git archive 681cca9 proxy |
#                                            tar -x -C /tmp/before`), the same command: today's cost before rules
#                          turnout-rules3    this tree, bench/rules_proxy.py --rules 3: a stable pool and a
#                                            weight-0 canary, three rules to it that wrk's requests do not match
#   MODE=match             turnout, turnout-rules3, and turnout-match: three rules, the last matching every
#                          request (each one routed by a rule to the canary pool, on the same upstream)
#   MODE=mirror            turnout, and a mirror at PERCENT (10) of the requests to a canary that is dead
#                          (turnout-mirror-dead) or answers after SLOW seconds (turnout-mirror-slow)
#   MODE=serve-rules       the same question on `turnout serve` as users run it (its defaults: access log
#                          on; bench/serve_target.sh), beside nginx with its log on (nginx-log):
#                          serve          this tree, a service without rules
#                          serve-rules3   this tree, the same service with three rules (RULES=3)
#                          serve-before   BEFORE_SRC (required: a whole checkout of the commit before
#                                         rules, e.g. `git archive a45f469 | tar -x -C /tmp/before`)
#
#   flock -x /tmp/turnout-machine.lock env BEFORE_SRC=/tmp/before REPS=5 bench/rules_bench.sh
#   flock -x /tmp/turnout-machine.lock env MODE=mirror REPS=5 bench/rules_bench.sh
# DISTINCT_HEADS=1 makes every request head new (nothing remembered: rules are matched every time).
# Other variables as in harness.sh (DURATION, REPS, URL_PATHS, LAT_REPS, WORK, ...).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
PY="${TURNOUT_PYTHON:-$ROOT/.venv/bin/python}"
MODE=${MODE:-rules}
PERCENT=${PERCENT:-10}
SLOW=${SLOW:-1.0}

export WORK=${WORK:-/tmp/turnout-bench-rules-$MODE}
export REPS=${REPS:-5}
export DURATION=${DURATION:-10}
export URL_PATHS=${URL_PATHS:-/}
export PYTHON="$PY"
export CANDIDATE_NAME=turnout
export CANDIDATE_CMD="env -C $ROOT $PY -m proxy --listen 127.0.0.1:\$CANDIDATE_PORT --upstream \$UPSTREAM"
RULES_CMD="env -C $ROOT $PY bench/rules_proxy.py --upstream \$UPSTREAM"
case "$MODE" in
  rules)
    : "${BEFORE_SRC:?MODE=rules needs BEFORE_SRC: a directory holding the proxy/ of the commit before rules}"
    export BASELINE_NAME=turnout-before
    export BASELINE_CMD="env -C $BEFORE_SRC ${BEFORE_PYTHON:-$PY} -m proxy --listen 127.0.0.1:\$BASELINE_PORT --upstream \$UPSTREAM"
    export EXTRA_NAME=turnout-rules3
    export EXTRA_CMD="$RULES_CMD --listen 127.0.0.1:\$EXTRA_PORT --rules 3" ;;
  match)
    export BASELINE_NAME=turnout-rules3
    export BASELINE_CMD="$RULES_CMD --listen 127.0.0.1:\$BASELINE_PORT --rules 3"
    export EXTRA_NAME=turnout-match
    export EXTRA_CMD="$RULES_CMD --listen 127.0.0.1:\$EXTRA_PORT --rules 3 --match" ;;
  mirror)
    export BASELINE_NAME=turnout-mirror-dead
    export BASELINE_CMD="$RULES_CMD --listen 127.0.0.1:\$BASELINE_PORT --mirror dead --percent $PERCENT"
    export EXTRA_NAME=turnout-mirror-slow
    export EXTRA_CMD="$RULES_CMD --listen 127.0.0.1:\$EXTRA_PORT --mirror slow --slow $SLOW --percent $PERCENT" ;;
  serve-rules)
    : "${BEFORE_SRC:?MODE=serve-rules needs BEFORE_SRC: a whole checkout of the commit before rules}"
    export MORE_TARGETS="serve 18096 $HERE/serve_target.sh serve 18096 \$UPSTREAM
serve-rules3 18095 env RULES=3 $HERE/serve_target.sh serve-rules3 18095 \$UPSTREAM
serve-before 18094 env TURNOUT_SRC=$BEFORE_SRC $HERE/serve_target.sh serve-before 18094 \$UPSTREAM"
    export ONLY=${ONLY:-"direct nginx-log serve serve-before serve-rules3"} ;;
  *) echo "rules_bench.sh: MODE must be rules, match, mirror or serve-rules" >&2; exit 2 ;;
esac
export ONLY=${ONLY:-"direct nginx turnout $BASELINE_NAME $EXTRA_NAME"}
exec "$HERE/harness.sh"
