#!/usr/bin/env bash
# A two-node Docker Swarm on this one machine, for the Swarm tests (tests/swarm/, marker `swarm`).
#
#   scripts/swarm-lab.sh up       make it (idempotent: what already exists is kept)
#   scripts/swarm-lab.sh down     remove everything `up` made (idempotent)
#   scripts/swarm-lab.sh status   show what exists
#
# Layout: a bridge turnout-lab0 (10.231.0.1/24) in the root network namespace, and per node a network
# namespace turnout-lab-nX holding one end of a veth pair (10.231.0.1X) whose other end is on the bridge.
# Each node runs its own dockerd (own --data-root, --exec-root, --pidfile, its managed containerd and
# -H unix:///run/turnout-lab/nX.sock), started through `nsenter --net=` (not `ip netns exec`, which
# remounts /sys so dockerd fails with "Devices cgroup isn't mounted"). n1 is the manager, n2 a worker.
# The controller (root namespace) reaches both nodes' addresses over the bridge. The main engine's
# FORWARD policy is DROP and br_netfilter hands bridged frames to it, so node-to-node frames need one
# ACCEPT rule (commented turnout-lab; `down` deletes it). Nothing else of the main engine is touched:
# the test images are copied with `docker save | docker load` (read-only on the main engine), never pulled.
set -euo pipefail

RUN=/run/turnout-lab
DATA=/var/lib/turnout-lab
BRIDGE=turnout-lab0
BRIDGE_ADDR=10.231.0.1
NODES=(n1 n2)
declare -A ADDR=([n1]=10.231.0.11 [n2]=10.231.0.12)
RULE=(FORWARD -i "$BRIDGE" -o "$BRIDGE" -m comment --comment turnout-lab -j ACCEPT)
IMAGES_FROM=${SWARM_LAB_IMAGES:-turnout-testapp}  # repository whose tags every node gets

say() { echo "swarm-lab: $*" >&2; }
die() { say "$*"; exit 1; }
netns() { echo "turnout-lab-$1"; }
sock() { echo "unix://$RUN/$1.sock"; }
ldocker() { local node=$1; shift; docker -H "$(sock "$node")" "$@"; }
pid_of() { local f="$RUN/$1/dockerd.pid"; [ -s "$f" ] && kill -0 "$(cat "$f")" 2>/dev/null && cat "$f"; }

up_network() {
  if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
    ip link add "$BRIDGE" type bridge
    ip addr add "$BRIDGE_ADDR/24" dev "$BRIDGE"
  fi
  ip link set "$BRIDGE" up
  iptables -C "${RULE[@]}" 2>/dev/null || iptables -I "${RULE[0]}" 1 "${RULE[@]:1}"
  for node in "${NODES[@]}"; do
    local ns; ns=$(netns "$node")
    [ -e "/var/run/netns/$ns" ] || ip netns add "$ns"
    if ! ip link show "tl-$node" >/dev/null 2>&1; then
      ip link add "tl-$node" type veth peer name eth0 netns "$ns"
      ip link set "tl-$node" master "$BRIDGE" up
      ip -n "$ns" addr add "${ADDR[$node]}/24" dev eth0
    fi
    ip -n "$ns" link set lo up
    ip -n "$ns" link set eth0 up
    ip -n "$ns" route replace default via "$BRIDGE_ADDR"
  done
}

close_inherited_fds() {
  local pid=$BASHPID fd
  for fd in $(ls "/proc/$pid/fd"); do
    [ "$fd" -gt 2 ] && eval "exec $fd>&-"
  done
  return 0
}

up_daemon() {
  local node=$1 dir="$RUN/$1"
  mkdir -p "$dir" "$DATA/$node"
  if ! pid_of "$node" >/dev/null; then
    echo '{}' >"$dir/daemon.json"
    # setsid: the daemon outlives this script; it is stopped by the PID in its pidfile.
    # DOCKER_SERVICE_PREFER_OFFLINE_IMAGE: a Swarm agent otherwise tries to pull every task's image
    # (and waits ~10 s for DNS to fail here) before using the local copy. Nothing is ever pulled.
    # It keeps no descriptor of this script's beyond 0-2: a lock its caller holds (`flock -s LOCK
    # scripts/swarm-lab.sh up`) would otherwise stay held, by the daemon, for as long as the lab runs.
    ( close_inherited_fds
      DOCKER_SERVICE_PREFER_OFFLINE_IMAGE=1 exec setsid nsenter --net="/var/run/netns/$(netns "$node")" \
        dockerd --config-file "$dir/daemon.json" --data-root "$DATA/$node" --exec-root "$dir/exec" \
        --pidfile "$dir/dockerd.pid" -H "$(sock "$node")" --cgroup-parent "turnout-lab-$node" \
    ) >"$dir/dockerd.log" 2>&1 </dev/null &
  fi
  for _ in $(seq 1 300); do
    ldocker "$node" version >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  tail -20 "$dir/dockerd.log" >&2 || true
  die "dockerd on $node did not answer on $(sock "$node") within 30 s (log: $dir/dockerd.log)"
}

up_images() {
  local node=$1 want have
  want=$(docker images --no-trunc --format '{{.Repository}}:{{.Tag}} {{.ID}}' "$IMAGES_FROM" | sort)
  [ -n "$want" ] || die "no $IMAGES_FROM images on the main engine: run scripts/build-images.sh first"
  have=$(ldocker "$node" images --no-trunc --format '{{.Repository}}:{{.Tag}} {{.ID}}' "$IMAGES_FROM" | sort)
  if [ "$want" != "$have" ]; then
    # shellcheck disable=SC2046  # one tag per word
    docker save $(cut -d' ' -f1 <<<"$want") | ldocker "$node" load -q >/dev/null
    say "loaded $(wc -l <<<"$want") $IMAGES_FROM images on $node"
  fi
}

up_swarm() {
  local state
  state=$(ldocker n1 info --format '{{.Swarm.LocalNodeState}}')
  if [ "$state" != active ]; then
    ldocker n1 swarm init --advertise-addr "${ADDR[n1]}" --listen-addr "${ADDR[n1]}:2377" \
      --default-addr-pool 10.232.0.0/16 >/dev/null
  fi
  local token; token=$(ldocker n1 swarm join-token -q worker)
  for node in "${NODES[@]:1}"; do
    state=$(ldocker "$node" info --format '{{.Swarm.LocalNodeState}}')
    if [ "$state" != active ]; then
      ldocker "$node" swarm join --token "$token" --advertise-addr "${ADDR[$node]}" \
        --listen-addr "${ADDR[$node]}:2377" "${ADDR[n1]}:2377" >/dev/null
    fi
  done
  for _ in $(seq 1 300); do
    [ "$(ldocker n1 node ls --filter role=worker --format '{{.Status}}' | grep -c Ready)" -ge 1 ] && return 0
    sleep 0.1
  done
  die "worker node(s) not Ready in the swarm within 30 s"
}

cmd_up() {
  [ "$(id -u)" = 0 ] || die "needs root (network namespaces, dockerd)"
  for tool in dockerd docker nsenter ip iptables; do
    command -v "$tool" >/dev/null || die "$tool not found"
  done
  mkdir -p "$RUN" "$DATA"
  up_network
  for node in "${NODES[@]}"; do up_daemon "$node"; done
  for node in "${NODES[@]}"; do up_images "$node"; done
  up_swarm
  say "up: manager $(sock n1), nodes ${ADDR[n1]} ${ADDR[n2]}"
}

stop_daemon() {
  local node=$1 pid ns
  if pid=$(pid_of "$node"); then
    kill -TERM "$pid"
    for _ in $(seq 1 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && { say "dockerd $pid on $node ignored SIGTERM for 30 s: SIGKILL"; kill -KILL "$pid"; }
  fi
  # Whatever still runs in the node's namespace (a shim left by a killed daemon) is stopped by its PID.
  ns=$(netns "$node")
  if [ -e "/var/run/netns/$ns" ]; then
    for pid in $(ip netns pids "$ns"); do kill -KILL "$pid" 2>/dev/null || true; done
  fi
}

unmount_under() {  # every mount point below $1, deepest first
  local m
  for m in $(awk -v p="$1/" 'index($2, p) == 1 {print $2}' /proc/mounts | sort -r); do
    umount -l "$m" 2>/dev/null || true
  done
}

cmd_down() {
  [ "$(id -u)" = 0 ] || die "needs root"
  for node in "${NODES[@]}"; do stop_daemon "$node"; done
  for node in "${NODES[@]}"; do
    unmount_under "$RUN/$node"
    unmount_under "$DATA/$node"
    [ -e "/var/run/netns/$(netns "$node")" ] && ip netns delete "$(netns "$node")"
    ip link show "tl-$node" >/dev/null 2>&1 && ip link delete "tl-$node"
  done
  ip link show "$BRIDGE" >/dev/null 2>&1 && ip link delete "$BRIDGE"
  while iptables -C "${RULE[@]}" 2>/dev/null; do iptables -D "${RULE[@]}"; done
  rm -rf "$RUN" "$DATA"
  say "down"
}

cmd_status() {
  local rc=0 node pid
  ip link show "$BRIDGE" >/dev/null 2>&1 && echo "bridge $BRIDGE: present" || { echo "bridge $BRIDGE: absent"; rc=1; }
  iptables -C "${RULE[@]}" 2>/dev/null && echo "iptables ACCEPT rule: present" || { echo "iptables ACCEPT rule: absent"; rc=1; }
  for node in "${NODES[@]}"; do
    if pid=$(pid_of "$node"); then
      echo "$node: dockerd $pid, swarm $(ldocker "$node" info --format '{{.Swarm.LocalNodeState}}' 2>/dev/null || echo '?'), ${ADDR[$node]}, $(sock "$node")"
    else
      echo "$node: no dockerd"; rc=1
    fi
  done
  pid_of n1 >/dev/null && ldocker n1 node ls 2>/dev/null || true
  return $rc
}

case "${1:-}" in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
