#!/usr/bin/env bash
# HTTPS termination: `turnout serve` with [proxy.tls] beside nginx terminating TLS with the same
# certificate, in front of the same upstream, interleaved in one run (loopback only).
#
# Three loads per round, each with wrk -t1 -c$CONNS for $DURATION s:
#   keepalive   requests/s over kept-alive TLS connections
#   handshake   every request on a new connection (-H "Connection: close"): TLS handshakes/s as wrk
#               makes them: it keeps each connection's session (SSL_clear after a clean shutdown), so
#               with session tickets on (both servers' default) these are resumed handshakes (PSK with
#               ECDHE: no certificate signature)
#   full        the same against a second pair with session tickets off (nginx ssl_session_tickets off,
#               turnout session_tickets = false): every handshake a full one
# wrk and the upstream (nginx answering "ok\n" on /) run on CPU 0; the proxy under test on CPU 1, one
# process (nginx: worker_processes 1). Rounds rotate the order; the table shows medians and, per round,
# turnout/nginx ratios. Both speak TLS 1.3 (X25519, the same ECDSA P-256 certificate) through the
# system's OpenSSL, ALPN http/1.1, access logs off.
#
#   bench/tls_bench.sh                         # REPS=5 DURATION=8: about 5 minutes
#   REPS=3 DURATION=5 bench/tls_bench.sh
# Results: $WORK/summary.txt and $WORK/runs.csv (default /tmp/turnout-tls-bench).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
PY="${TURNOUT_PYTHON:-$ROOT/.venv/bin/python}"
WORK=${WORK:-/tmp/turnout-tls-bench}
REPS=${REPS:-5}
DURATION=${DURATION:-8}
CONNS=${CONNS:-50}
LOAD_CPU=${LOAD_CPU:-0}
PROXY_CPU=${PROXY_CPU:-1}
UPSTREAM_PORT=18180
NGINX_PORT=18444
TURNOUT_PORT=18443
TURNOUT_PLAIN_PORT=18199
NGINX_FULL_PORT=18446
TURNOUT_FULL_PORT=18445
TURNOUT_FULL_PLAIN_PORT=18198
HOST=127.0.0.1            # never anything but loopback
# shellcheck source=bench/_upstream_nginx.sh
. "$HERE/_upstream_nginx.sh"

for tool in wrk nginx openssl curl taskset setsid; do
  command -v "$tool" >/dev/null || { echo "missing tool: $tool (apt-get install wrk nginx-light openssl curl)" >&2; exit 2; }
done
rm -rf "$WORK"; mkdir -p "$WORK"/{certs,logs,front,state,state-full}
chmod 700 "$WORK/state" "$WORK/state-full"
RUNS="$WORK/runs.csv"
echo "rep,load,target,rps,errors" >"$RUNS"

declare -a PIDS=()
cleanup() {
  local pid i
  for pid in "${PIDS[@]}"; do kill -TERM -- "-$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do
    for i in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL -- "-$pid" 2>/dev/null || true
  done
  wait 2>/dev/null || true
}
trap cleanup EXIT
start() {  # NAME CPU CMD...: in a session of its own, pinned, stopped by its PID at exit
  local name=$1 cpu=$2; shift 2
  setsid taskset -c "$cpu" "$@" >"$WORK/logs/$name.log" 2>&1 </dev/null &
  PIDS+=("$!")
}
wait_https() {  # NAME PORT
  local i
  for i in $(seq 300); do
    curl -sk -o /dev/null --max-time 1 --resolve "bench.test:$2:$HOST" "https://bench.test:$2/" && return 0
    sleep 0.1
  done
  echo "$1 did not answer on $2; log:" >&2; cat "$WORK/logs/$1.log" >&2; exit 1
}

# One certificate for both: ECDSA P-256, SAN bench.test.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 -subj /CN=bench.test \
  -addext subjectAltName=DNS:bench.test -keyout "$WORK/certs/bench.key" -out "$WORK/certs/bench.crt" \
  2>/dev/null
chmod 600 "$WORK/certs/bench.key"

write_upstream_nginx "$WORK/up" "$HOST" "$UPSTREAM_PORT"
start upstream "$LOAD_CPU" nginx -p "$WORK/up" -c "$WORK/up/nginx.conf"

nginx_server() {  # PORT TICKETS(on|off)
  cat <<CONF
  server {
    listen $HOST:$1 ssl default_server;
    ssl_certificate $WORK/certs/bench.crt; ssl_certificate_key $WORK/certs/bench.key;
    ssl_protocols TLSv1.2 TLSv1.3; ssl_session_tickets $2;
    location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
CONF
}
cat >"$WORK/front/nginx.conf" <<CONF
worker_processes 1; daemon off; pid $WORK/front/nginx.pid; error_log $WORK/front/error.log warn;
events { worker_connections 4096; }
http {
  access_log off; keepalive_timeout 65; keepalive_requests 1000000;
  client_body_temp_path $WORK/front/tmp_body; proxy_temp_path $WORK/front/tmp_proxy;
  fastcgi_temp_path $WORK/front/tmp_fcgi; uwsgi_temp_path $WORK/front/tmp_uwsgi; scgi_temp_path $WORK/front/tmp_scgi;
  upstream up { server $HOST:$UPSTREAM_PORT; keepalive 64; }
$(nginx_server "$NGINX_PORT" on)
$(nginx_server "$NGINX_FULL_PORT" off)
}
CONF
start nginx "$PROXY_CPU" nginx -p "$WORK/front" -c "$WORK/front/nginx.conf"

turnout_config() {  # STATE PLAIN_PORT TLS_PORT TICKETS(true|false)
  cat <<CONF
[proxy]
listen = "$HOST:$2"
state_dir = "$1"
access_log = false          # as nginx's
max_connections = 10000
[proxy.tls]
listen = "$HOST:$3"
certs_dir = "$WORK/certs"
default = "bench.test"      # wrk sends the URL's host (an IP) as SNI
redirect_http = false
session_tickets = $4
[services.bench]
upstreams = ["$HOST:$UPSTREAM_PORT"]
CONF
}
turnout_config "$WORK/state" "$TURNOUT_PLAIN_PORT" "$TURNOUT_PORT" true >"$WORK/turnout.toml"
turnout_config "$WORK/state-full" "$TURNOUT_FULL_PLAIN_PORT" "$TURNOUT_FULL_PORT" false >"$WORK/turnout-full.toml"
start turnout "$PROXY_CPU" "$PY" -m controller.cli --state-dir "$WORK/state" serve --config "$WORK/turnout.toml"
start turnout-full "$PROXY_CPU" "$PY" -m controller.cli --state-dir "$WORK/state-full" serve \
  --config "$WORK/turnout-full.toml"

wait_https nginx "$NGINX_PORT"
wait_https turnout "$TURNOUT_PORT"
wait_https turnout-full "$TURNOUT_FULL_PORT"

run() {  # REP LOAD TARGET PORT
  local rep=$1 load=$2 target=$3 port=$4 out rps errors
  local extra=()
  [ "$load" != keepalive ] && extra=(-H "Connection: close")
  out=$(taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d"${DURATION}s" "${extra[@]}" "https://$HOST:$port/" 2>&1)
  echo "$out" >"$WORK/logs/wrk-$rep-$load-$target.txt"
  rps=$(echo "$out" | awk '/^Requests\/sec/ {print $2}')
  errors=$(echo "$out" | awk '/Socket errors|Non-2xx/ {for (i=1;i<=NF;i++) if ($i ~ /^[0-9]+,?$/) s+=$i} END {print s+0}')
  echo "$rep,$load,$target,${rps:-0},$errors" >>"$RUNS"
  printf '  round %d %-9s %-7s %10s req/s  errors %s\n' "$rep" "$load" "$target" "${rps:-0}" "$errors"
}

# Warm each (first handshakes, the upstream's pooled connections, Python's caches).
for port in "$NGINX_PORT" "$TURNOUT_PORT" "$NGINX_FULL_PORT" "$TURNOUT_FULL_PORT"; do
  taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d2s "https://$HOST:$port/" >/dev/null
done
port_of() {  # LOAD TARGET
  case "$1:$2" in
    full:nginx) echo "$NGINX_FULL_PORT" ;; full:turnout) echo "$TURNOUT_FULL_PORT" ;;
    *:nginx) echo "$NGINX_PORT" ;; *) echo "$TURNOUT_PORT" ;;
  esac
}
for rep in $(seq "$REPS"); do
  for load in keepalive handshake full; do
    if [ $(((rep + ${#load}) % 2)) -eq 0 ]; then order="nginx turnout"; else order="turnout nginx"; fi
    for target in $order; do run "$rep" "$load" "$target" "$(port_of "$load" "$target")"; done
  done
done
# How turnout's handshakes went (full or resumed), from its /metrics.
for state in state state-full; do
  curl -s --unix-socket "$WORK/$state/admin.sock" http://turnout/metrics | grep '^turnout_tls_handshakes_total' |
    sed "s/^/$state: /" >>"$WORK/handshakes.txt" || true
done

python3 - "$RUNS" >"$WORK/summary.txt" <<'PY'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1])))
print(f"{'load':<10} {'nginx rps':>10} {'turnout rps':>12} {'ratio':>6}  per-round ratios            errors")
for load in ("keepalive", "handshake", "full"):
    by = {}
    for r in rows:
        if r["load"] == load:
            by.setdefault(r["rep"], {})[r["target"]] = (float(r["rps"]), int(r["errors"]))
    ratios = [v["turnout"][0] / v["nginx"][0] for v in by.values() if v.get("nginx", (0,))[0]]
    ngx = statistics.median(v["nginx"][0] for v in by.values())
    tur = statistics.median(v["turnout"][0] for v in by.values())
    errs = sum(v[t][1] for v in by.values() for t in v)
    print(f"{load:<10} {ngx:>10.0f} {tur:>12.0f} {statistics.median(ratios):>6.2f}  "
          f"{' '.join(f'{x:.2f}' for x in ratios):<27} {errs}")
PY
cat "$WORK/handshakes.txt" >>"$WORK/summary.txt"
cat "$WORK/summary.txt"
