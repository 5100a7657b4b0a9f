#!/usr/bin/env bash
# Build Turnout itself as a container image (turnout:local, for compose/turnout.yml) without pulling.
#   BASE   the image to build on [python:3.11-slim when the engine has it, else turnout-base:bookworm]
#   TAG    the image to build [turnout:local]
# With no registry, the base is made here: a minimal Debian bookworm with python3 (debootstrap from the
# Debian mirror apt already uses), imported with `docker import`. Turnout's dependencies (pyproject.toml's,
# and its build backend) go in as wheels built on this host (`pip wheel`, PyPI) and kept per dependency
# list in $TURNOUT_WHEEL_CACHE [~/.cache/turnout/image-wheels], so the build itself needs no network and
# the image's dependency layer stays cached: after a change to Turnout's source alone, a rebuild only
# reinstalls Turnout (seconds).
# Also installs docker-compose (Debian's) when absent, for `docker-compose -f compose/turnout.yml up`.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
TAG=${TAG:-turnout:local}
LOCAL_BASE=turnout-base:bookworm
pip=${PIP:-$here/.venv/bin/pip}
python=${PYTHON:-$here/.venv/bin/python}

have_image() { docker image inspect "$1" >/dev/null 2>&1; }

need_debs=()
command -v docker-compose >/dev/null || need_debs+=(docker-compose)
if [ -z "${BASE:-}" ] && ! have_image python:3.11-slim && ! have_image "$LOCAL_BASE"; then
  command -v debootstrap >/dev/null || need_debs+=(debootstrap)
fi
if [ ${#need_debs[@]} -gt 0 ]; then
  echo "build-turnout-image: installing ${need_debs[*]}" >&2
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_debs[@]}" >/dev/null
fi

if [ -z "${BASE:-}" ]; then
  if have_image python:3.11-slim; then
    BASE=python:3.11-slim
  else
    BASE=$LOCAL_BASE
    if ! have_image "$BASE"; then
      root=$(mktemp -d)
      trap 'rm -rf "$root"' EXIT
      mirror=$(sed -n 's/^URIs: *\(http[^ ]*debian\)$/\1/p' /etc/apt/sources.list.d/debian.sources 2>/dev/null \
               | head -n 1)
      echo "build-turnout-image: making $BASE with debootstrap (about a minute)" >&2
      debootstrap --variant=minbase --include=python3,python3-venv bookworm "$root" \
        "${mirror:-http://deb.debian.org/debian}" >"$root.log" 2>&1 \
        || { tail -n 20 "$root.log" >&2; echo "build-turnout-image: debootstrap failed" >&2; exit 1; }
      rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root.log"
      tar -C "$root" -c . | docker import - "$BASE" >/dev/null
      rm -rf "$root"
      trap - EXIT
    fi
  fi
fi

ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
cp "$here/compose/turnout/Dockerfile" "$ctx/"

# The dependency wheels, built once per dependency list and interpreter: the Dockerfile's dependency layer
# is cached on exactly these bytes (freshly built wheels would differ, and reinstall everything).
"$python" - "$here/pyproject.toml" >"$ctx/requirements.txt" <<'EOF'
import sys
import tomllib

with open(sys.argv[1], "rb") as f:
    pyproject = tomllib.load(f)
print("\n".join([*pyproject["project"]["dependencies"], *pyproject["build-system"]["requires"]]))
EOF
key=$( { cat "$ctx/requirements.txt"
         "$python" -c 'import sys, sysconfig; print(sys.implementation.cache_tag, sysconfig.get_platform())'
       } | sha256sum | cut -c1-16)
cache=${TURNOUT_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/turnout/image-wheels}
if [ ! -d "$cache/$key" ]; then
  mkdir -p "$cache"
  fresh=$(mktemp -d "$cache/.$key.XXXXXX")
  if ! "$pip" wheel -q --disable-pip-version-check -w "$fresh" -r "$ctx/requirements.txt" \
      >"$ctx/pip.log" 2>&1; then
    rm -rf "$fresh"
    cat "$ctx/pip.log" >&2
    echo "build-turnout-image: pip wheel failed" >&2
    exit 1
  fi
  mv -T "$fresh" "$cache/$key" 2>/dev/null || rm -rf "$fresh"  # another build made it meanwhile
fi
cp -r "$cache/$key" "$ctx/wheels"

# Turnout's source, installed into the image on top of that layer.
mkdir "$ctx/src"
tar -C "$here" --exclude=__pycache__ -c pyproject.toml README.md proxy controller | tar -C "$ctx/src" -x
if ! out=$(DOCKER_BUILDKIT=0 docker build -q -t "$TAG" --build-arg "BASE=$BASE" "$ctx" 2>&1); then
  echo "$out" >&2
  echo "build-turnout-image: building $TAG failed" >&2
  exit 1
fi
echo "built $TAG (on $BASE)" >&2
