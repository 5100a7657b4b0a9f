#!/usr/bin/env bash
# Make sure a real Docker engine answers on /var/run/docker.sock.
# Installs docker.io (and busybox-static for the test images) when absent, starts dockerd when its
# socket does not answer, then waits for it. Idempotent; safe to run before every demo or test run.
set -euo pipefail

SOCK=/var/run/docker.sock
LOG=${TURNOUT_DOCKERD_LOG:-/var/log/turnout-dockerd.log}

need_install=()
command -v dockerd >/dev/null 2>&1 || need_install+=(docker.io)
# The images copy /bin/busybox into a FROM-scratch image: it must be the static build.
dpkg -s busybox-static >/dev/null 2>&1 || need_install+=(busybox-static)
if [ ${#need_install[@]} -gt 0 ]; then
  echo "ensure-docker: installing ${need_install[*]} with apt-get" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need_install[@]}" >/dev/null
fi

answers() { docker version --format '{{.Server.Version}}' >/dev/null 2>&1; }

if ! answers; then
  echo "ensure-docker: starting dockerd (log: $LOG)" >&2
  # Keep the engine out of our process group so that stopping a test run does not stop it.
  # --userland-proxy=false: published 127.0.0.1 ports are forwarded by the kernel (iptables) instead
  # of a docker-proxy process per port, which cost more CPU per proxied request than Turnout itself.
  setsid nohup dockerd --userland-proxy=false >"$LOG" 2>&1 < /dev/null &
  for _ in $(seq 1 120); do
    answers && break
    sleep 0.5
  done
fi
if ! answers; then
  echo "ensure-docker: the Docker engine did not answer on $SOCK within 60 s; see $LOG" >&2
  tail -n 20 "$LOG" >&2 || true
  exit 1
fi
echo "ensure-docker: Docker $(docker version --format '{{.Server.Version}}') is up" >&2
