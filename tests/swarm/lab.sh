#!/bin/bash
# A multi-node Docker Swarm on ONE machine for the tests: one dockerd per network namespace on a
# private bridge (from the project's testbed/swarmlab.sh; names made unique per run so two test
# runs cannot collide).
#
#   lab.sh setup | teardown | stop N [SIG] | start N
#
# Environment: LAB (state dir), TAG (unique, <= 6 chars), NET (e.g. 10.77.3: nodes NET.11..),
# NODES (4), MANAGERS (3), ROOTFS (the test image's root, a directory), STORAGE (dockerd's
# storage driver: vfs works on any filesystem, overlay2 is much faster for big images).
# Nodes: nodeN = $NET.(10+N) in netns ep$TAG-nN; a client host in netns ep$TAG-c = $NET.100; the
# bridge is ep$TAG (NET.1). Each node sees its own engine's socket at $LAB/engine/docker.sock
# (a bind mount in its mount namespace): the same path on every node, as /var/run/docker.sock is
# on real ones, for services that mount it. Nothing else on the
# host is touched but FORWARD rules for this bridge (removed by teardown): the root namespace's
# bridge netfilter would otherwise apply the host's FORWARD policy to frames between nodes.
set -euo pipefail

LAB=${LAB:?state dir}; TAG=${TAG:?unique tag}; NET=${NET:?like 10.77.3}
NODES=${NODES:-4}; MANAGERS=${MANAGERS:-3}; ROOTFS=${ROOTFS:-$LAB/rootfs}; STORAGE=${STORAGE:-vfs}
SELF=$(readlink -f "$0")
BR=ep$TAG
IMAGE=local/bb:2
ns() { echo "ep$TAG-n$1"; }
ip_of() { echo "$NET.$((10 + $1))"; }
d() { local n=$1; shift; docker -H "unix://$LAB/node$n/docker.sock" "$@"; }
log() { echo "[$(date +%T.%3N)] $*" >&2; }
alive() { [ -n "$1" ] && kill -0 "$1" 2>/dev/null; }

# Runs INSIDE "ip netns exec": 'ip netns exec' remounts /sys, which drops the cgroup mounts:
# mount the host's hierarchies again (same options, same hierarchy), then exec dockerd.
_dockerd() {
  local n=$1 dir=$LAB/node$1
  while read -r src mnt type opts _; do
    case "$mnt" in /sys/fs/cgroup|/sys/fs/cgroup/*) ;; *) continue ;; esac
    case "$type" in tmpfs|cgroup|cgroup2) ;; *) continue ;; esac
    mkdir -p "$mnt"
    mount -t "$type" -o "$opts" "$src" "$mnt"
  done < "$dir/host.mounts"
  echo "nameserver $NET.1" > "$dir/resolv.conf"     # nothing answers: fast failure, nothing leaves
  mount --bind "$dir/resolv.conf" /etc/resolv.conf  # in this private mount namespace only
  hostname "node$n"                                 # own UTS namespace: distinct node names
  mount --bind "$dir" "$LAB/engine"                 # this node's socket at $LAB/engine/docker.sock
  export DOCKER_SERVICE_PREFER_OFFLINE_IMAGE=1      # else each task tries a registry first
  exec dockerd --data-root "$dir/data" --exec-root "$dir/exec" \
    -H "unix://$dir/docker.sock" --pidfile "$dir/dockerd.pid" --config-file "$dir/daemon.json" \
    --storage-driver "$STORAGE" --bip "172.30.$n.1/24" --cgroup-parent "/ep$TAG-node$n" --shutdown-timeout 2
}

start_dockerd() {
  local n=$1 dir=$LAB/node$1
  mkdir -p "$dir"
  echo '{}' > "$dir/daemon.json"
  cat /proc/self/mounts > "$dir/host.mounts"
  setsid ip netns exec "$(ns "$n")" unshare --uts "$SELF" _dockerd "$n" > "$dir/dockerd.log" 2>&1 < /dev/null &
  local i
  for i in $(seq 1 120); do
    d "$n" version --format '{{.Server.Version}}' >/dev/null 2>&1 && return 0
    sleep 0.25
  done
  log "node$n dockerd did not come up"; tail -20 "$dir/dockerd.log" >&2; return 1
}

setup() {
  mkdir -p "$LAB/engine"
  ip link add "$BR" type bridge
  ip addr add "$NET.1/24" dev "$BR"
  ip link set "$BR" up
  iptables -I FORWARD 1 -i "$BR" -o "$BR" -m comment --comment "ep$TAG" -j ACCEPT
  local n pids=()
  for n in $(seq 1 "$NODES"); do
    ip netns add "$(ns "$n")"
    ip link add "ep$TAG-v$n" type veth peer name eth0 netns "$(ns "$n")"
    ip link set "ep$TAG-v$n" master "$BR" up
    ip -n "$(ns "$n")" link set lo up
    ip -n "$(ns "$n")" addr add "$(ip_of "$n")/24" dev eth0
    ip -n "$(ns "$n")" link set eth0 up
    ip -n "$(ns "$n")" route add default via "$NET.1"
  done
  ip netns add "ep$TAG-c"
  ip link add "ep$TAG-vc" type veth peer name eth0 netns "ep$TAG-c"
  ip link set "ep$TAG-vc" master "$BR" up
  ip -n "ep$TAG-c" link set lo up
  ip -n "ep$TAG-c" addr add "$NET.100/24" dev eth0
  ip -n "ep$TAG-c" link set eth0 up
  for n in $(seq 1 "$NODES"); do start_dockerd "$n" & pids+=($!); done
  for p in "${pids[@]}"; do wait "$p"; done
  d 1 swarm init --advertise-addr "$(ip_of 1)" --listen-addr "$(ip_of 1):2377" >/dev/null
  local mtok wtok tok
  mtok=$(d 1 swarm join-token -q manager); wtok=$(d 1 swarm join-token -q worker)
  for n in $(seq 2 "$NODES"); do
    tok=$wtok; [ "$n" -le "$MANAGERS" ] && tok=$mtok
    d "$n" swarm join --token "$tok" --advertise-addr "$(ip_of "$n")" --listen-addr "$(ip_of "$n"):2377" \
      "$(ip_of 1):2377" >/dev/null
  done
  # the same image (same ID) on every node: import once, save, load elsewhere
  tar -C "$ROOTFS" -c . | d 1 import - "$IMAGE" >/dev/null
  d 1 save "$IMAGE" > "$LAB/image.tar"
  pids=()
  for n in $(seq 2 "$NODES"); do d "$n" load -q -i "$LAB/image.tar" >/dev/null & pids+=($!); done
  for p in "${pids[@]}"; do wait "$p"; done
}

our_pids() {  # dockerd, its containerd/shims/docker-proxy (their command lines name our dirs)
  # -ww: whole command lines. Without it ps cuts them at $COLUMNS, which pytest-xdist sets to 80
  # in its workers: a shim's -address (our dir) was cut off, so the shims of the nodes the tests
  # kill were never found and stayed, orphaned, after every parallel run.
  local n=$1 dir=$LAB/node$1 dpid=none
  [ -s "$dir/dockerd.pid" ] && dpid=$(cat "$dir/dockerd.pid")
  ps -ww -eo pid=,ppid=,comm=,args= | awk -v d="$dir/" -v dp="$dpid" '$3 != "awk" && ($1==dp || $2==dp || index($0, d)) {print $1}'
}

teardown() {
  local n p i any
  for n in $(seq 1 "$NODES"); do
    p=$(cat "$LAB/node$n/dockerd.pid" 2>/dev/null || true)
    alive "$p" && kill -CONT "$p" && kill -TERM "$p"
  done
  for i in $(seq 1 60); do
    any=0
    for n in $(seq 1 "$NODES"); do
      p=$(cat "$LAB/node$n/dockerd.pid" 2>/dev/null || true); alive "$p" && any=1
    done
    [ $any = 0 ] && break; sleep 0.25
  done
  log "teardown: dockerds stopped"
  # Until a sweep finds none: a containerd that outlived its dockerd (a slow stop on a loaded
  # machine) may start a shim after the sweep's ps and before its KILL; that shim, orphaned, would
  # stay forever (seen with the suite in 4 xdist workers beside other load).
  for i in $(seq 1 20); do
    any=0
    for n in $(seq 1 "$NODES"); do
      for p in $(our_pids "$n") $(cat /sys/fs/cgroup/pids/ep$TAG-node$n/*/cgroup.procs 2>/dev/null || true); do
        [ "$p" = "$$" ] && continue
        if alive "$p"; then kill -KILL "$p" 2>/dev/null || true; any=1; fi
      done
    done
    sleep 0.3
    [ $any = 0 ] && break
  done
  log "teardown: leftovers killed"
  for n in $(seq 1 "$NODES"); do
    for c in /sys/fs/cgroup/*/ep$TAG-node$n /sys/fs/cgroup/ep$TAG-node$n; do
      [ -d "$c" ] && find "$c" -depth -type d -exec rmdir {} \; 2>/dev/null || true
    done
    ip link del "ep$TAG-v$n" 2>/dev/null || true
    ip netns del "$(ns "$n")" 2>/dev/null || true
  done
  ip link del "ep$TAG-vc" 2>/dev/null || true
  ip netns del "ep$TAG-c" 2>/dev/null || true
  ip link del "$BR" 2>/dev/null || true
  while iptables -D FORWARD -i "$BR" -o "$BR" -m comment --comment "ep$TAG" -j ACCEPT 2>/dev/null; do :; done
  for m in $(awk -v l="$LAB/" 'index($5, l) == 1 {print $5}' /proc/self/mountinfo | sort -r); do umount -l "$m" || true; done
  log "teardown: network gone, deleting $LAB"
  rm -rf "$LAB"
  log "teardown: done"
}

case "${1:-}" in
  setup) setup ;;
  teardown) teardown ;;
  stop) p=$(cat "$LAB/node$2/dockerd.pid"); kill "-${3:-TERM}" "$p"; while alive "$p"; do sleep 0.1; done ;;
  start) start_dockerd "$2" ;;
  _dockerd) _dockerd "$2" ;;
  *) echo "usage: $0 setup|teardown|stop N [SIG]|start N" >&2; exit 2 ;;
esac
