#!/bin/sh
# The socket-activation tests start `turnout serve` under Debian's systemd-socket-activate (package
# `systemd`), which passes listening sockets as systemd does, without systemd running as PID 1.
# Installs it when missing (as root, like scripts/ensure-docker.sh); does nothing when present.
set -eu
command -v systemd-socket-activate >/dev/null 2>&1 && exit 0
echo "installing systemd (for systemd-socket-activate)" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends systemd >/dev/null
