#!/usr/bin/env bash
# count_proxy.sh -- deterministic per-request cost of one proxy: user-space instructions (callgrind)
# and syscalls (strace), for a fixed number of requests. Loopback only.
#
#   bench/count_proxy.sh callgrind|strace PYTHON_SCRIPT [args...]
#   e.g. bench/count_proxy.sh callgrind turnout_entry.py
#        bench/count_proxy.sh strace fast_proxy.py --loop uvloop
#
# Wall-clock rps on the shared 2-vCPU VM varies by +-50% between runs; an instruction count does not
# (to ~1%), so it is what judges a hot-path change. The proxy (a script in this folder, given
# --listen/--upstream) runs under valgrind --tool=callgrind or strace -f -c; an nginx upstream answers
# 3 bytes on / and 16 KiB on /16k. `wrk -c$CONNS` sends WARM requests, the counters are zeroed, then it
# sends N more (a Lua counter stops wrk after N answers) and the counters are dumped.
#   callgrind: Ir (instructions executed in user space) / request, plus the top functions by Ir
#   strace   : syscalls / request by name (strace slows the proxy; the counts, not the times, matter)
# Env: N (default 4000), WARM (1000), CONNS (50), URL_PATH (/), PYTHON (the venv's), OUT (/tmp/countprox).
# Every process started here is stopped by its PID.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
MODE=$1; SCRIPT=$2; shift 2
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
OUT=${OUT:-/tmp/countprox}; URL_PATH=${URL_PATH:-/}
N=${N:-4000}; WARM=${WARM:-1000}; CONNS=${CONNS:-50}
UP_PORT=${UP_PORT:-18190}; PX_PORT=${PX_PORT:-18191}; HOST=127.0.0.1
rm -rf "$OUT"; mkdir -p "$OUT"
. "$HERE/_upstream_nginx.sh"
write_upstream_nginx "$OUT/up" "$HOST" "$UP_PORT"
# wrk's thread stops after $1 answers (all its connections count into one Lua state with -t1) and
# says so in $WRK_DONE; wrk itself would sleep out its -d, so run() then ends it with SIGINT.
cat >"$OUT/count.lua" <<'EOF'
local limit = tonumber(os.getenv("WRK_LIMIT"))
local seen = 0
response = function(status, headers, body)
  seen = seen + 1
  if status ~= 200 then io.stderr:write("status " .. status .. "\n") end
  if seen == limit then
    wrk.thread:stop()
    local f = io.open(os.getenv("WRK_DONE"), "w"); f:write("done\n"); f:close()
  end
end
done = function(summary, latency, requests)
  io.write(string.format("COUNT %d errors %d\n", summary.requests,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.status + summary.errors.timeout))
end
EOF
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill -TERM -- "-$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
setsid taskset -c 0 nginx -e "$OUT/up/error.log" -p "$OUT/up" -c "$OUT/up/nginx.conf" >/dev/null 2>&1 </dev/null &
PIDS+=($!)
case $MODE in
  callgrind) WRAP=(valgrind --tool=callgrind --callgrind-out-file="$OUT/cg.out" --dump-instr=no) ;;
  strace)    WRAP=() ;;
  *) echo "mode must be callgrind or strace" >&2; exit 2 ;;
esac
setsid taskset -c 1 "${WRAP[@]}" "$PYTHON" "$HERE/$SCRIPT" "$@" --listen $HOST:$PX_PORT \
  --upstream $HOST:$UP_PORT >"$OUT/proxy.log" 2>&1 </dev/null &
PX=$!; PIDS+=($PX)
for _ in $(seq 300); do curl -s -o /dev/null --max-time 2 "http://$HOST:$PX_PORT$URL_PATH" && break; sleep 0.2; done
run() {
  rm -f "$OUT/wrk.done"
  WRK_LIMIT=$1 WRK_DONE="$OUT/wrk.done" taskset -c 0 wrk -t1 -c"$CONNS" -d300s -s "$OUT/count.lua" \
    "http://$HOST:$PX_PORT$URL_PATH" >"$OUT/wrk.out" 2>&1 &
  local wrk_pid=$!
  while [ ! -e "$OUT/wrk.done" ] && kill -0 "$wrk_pid" 2>/dev/null; do sleep 0.05; done
  kill -INT "$wrk_pid" 2>/dev/null || true  # wrk prints its summary (and COUNT) on SIGINT
  wait "$wrk_pid" || true
  awk '/^COUNT/ {print $2, $4}' "$OUT/wrk.out"
}
read -r warm _ < <(run "$WARM")
case $MODE in
  callgrind)
    callgrind_control -z "$PX" >/dev/null
    read -r done errs < <(run "$N")
    callgrind_control -d "$PX" >/dev/null
    sleep 1
    dump=$(ls -t "$OUT"/cg.out.* | head -1)
    ir=$(awk '/^summary:/ {print $2}' "$dump")
    echo "requests $done (errors $errs): Ir $ir = $(( ir / done )) instructions/request (user space)"
    callgrind_annotate --inclusive=no "$dump" 2>/dev/null | sed -n '/^Ir/,$p' | head -40 >"$OUT/top.txt" || true
    echo "top functions by self Ir: $OUT/top.txt"
    ;;
  strace)
    strace -f -c -p "$PX" -o "$OUT/strace.txt" &
    ST=$!
    sleep 1
    read -r done errs < <(run "$N")
    kill -INT "$ST"; wait "$ST" 2>/dev/null || true
    echo "requests $done (errors $errs); syscalls per request:"
    awk -v n="$done" '$1 ~ /^[0-9.]+$/ && NF >= 5 {name=$NF; calls=$4; printf "  %-16s %6.2f\n", name, calls/n}' "$OUT/strace.txt"
    ;;
esac
