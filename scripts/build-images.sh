#!/usr/bin/env bash
# Build Turnout's test and demo images locally FROM scratch (busybox-static); nothing is pulled.
#   turnout-testapp:v1, :v2, :v3   healthy apps reporting that version
#   turnout-testapp:unhealthy      /healthz never passes (404)
#   turnout-testapp:crash          exits at once with status 3
#   turnout-testapp:fail500        healthy, but / answers 500
#   turnout-testapp:flaky          /healthz alternates pass/fail per probe (never 2 passes in a row)
#   turnout-testapp:sick           /healthz passes 3 probes, then fails for good
#   turnout-testapp:pricier        v2 whose /cgi-bin/items/ID answers price 12 instead of 10 (shadow traffic)
#   turnout-testapp:keepalive-v1, :keepalive-v2   v1/v2 on a keep-alive server that closes connections
#                                  idle for 40 ms (busybox httpd closes after every answer)
#   turnout-testapp:noterm         healthy, but ignores SIGTERM as PID 1 (docker stop kills it: exit 137)
#   turnout-testapp:schema-v1, :schema-v2, :schema-v3   read schema 1-2, 2-3, 3-3 from /data/schema (a volume;
#                                  500 otherwise), labelled turnout.schema; /app/migrate expand|contract sets it
# Rebuilds are cheap: Docker's cache makes an unchanged image a no-op.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
src="$here/compose/images/testapp"
ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
cp -r "$src/Dockerfile" "$src/app" "$ctx/"
cp /bin/busybox "$ctx/busybox"

build() {  # tag version mode [server [schema]]
  # The engine's legacy builder warns on every build; show its output only when a build fails.
  local schema=()
  [ -n "${5:-}" ] && schema=(--build-arg "SCHEMA=$5" --label "turnout.schema=$5")
  if ! out=$(DOCKER_BUILDKIT=0 docker build -q -t "turnout-testapp:$1" --build-arg "VERSION=$2" \
      --build-arg "MODE=$3" --build-arg "SERVER=${4:-httpd}" "${schema[@]}" "$ctx" 2>&1); then
    echo "$out" >&2
    echo "build-images: building turnout-testapp:$1 failed" >&2
    exit 1
  fi
  echo "built turnout-testapp:$1" >&2
}
build v1 v1 ok
build v2 v2 ok
build v3 v3 ok
build unhealthy v-unhealthy unhealthy
build crash v-crash crash
build fail500 v-fail500 fail500
build flaky v-flaky flaky
build sick v-sick sick
build pricier v2 pricier
build keepalive-v1 v1 ok keepalive
build keepalive-v2 v2 ok keepalive
build noterm v-noterm noterm
build schema-v1 v1 schema httpd 1-2
build schema-v2 v2 schema httpd 2-3
build schema-v3 v3 schema httpd 3-3
