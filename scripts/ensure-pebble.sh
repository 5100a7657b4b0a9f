#!/bin/sh
# The ACME tests run Debian's pebble (an ACME test CA) and pebble-challtestsrv (its DNS) on loopback;
# openssl is there for making certificates by hand. Installs what is missing (as root, like
# scripts/ensure-docker.sh); does nothing when both are present.
set -eu
missing=""
command -v pebble >/dev/null 2>&1 && command -v pebble-challtestsrv >/dev/null 2>&1 || missing="pebble"
command -v openssl >/dev/null 2>&1 || missing="$missing openssl"
[ -z "$missing" ] && exit 0
echo "installing$missing" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# shellcheck disable=SC2086
apt-get install -y -qq $missing >/dev/null
