#!/usr/bin/env bash
# Start or stop a private Docker engine that changes no network state on the host: no bridge, no iptables
# rules, no IP forwarding. Builds and containers use the host network. Its state lives under $SLM_DOCKER_ROOT.
#
#   scripts/private-dockerd.sh start   # prints the DOCKER_HOST to export
#   scripts/private-dockerd.sh stop    # stops it by its PID
set -euo pipefail

root="${SLM_DOCKER_ROOT:-/var/lib/slm-docker}"
sock="$root/docker.sock"
pidfile="$root/dockerd.pid"

start() {
    mkdir -p "$root"
    if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
        echo "unix://$sock"
        return
    fi
    local driver="${SLM_DOCKER_STORAGE_DRIVER:-overlay2}"
    nohup dockerd \
        --host "unix://$sock" --pidfile "$pidfile" \
        --data-root "$root/data" --exec-root "$root/exec" \
        --storage-driver "$driver" \
        --bridge=none --iptables=false --ip6tables=false --ip-forward=false --ip-masq=false \
        >"$root/dockerd.log" 2>&1 &
    for _ in $(seq 1 60); do
        if DOCKER_HOST="unix://$sock" /usr/bin/docker info >/dev/null 2>&1; then
            echo "unix://$sock"
            return
        fi
        if ! kill -0 $! 2>/dev/null; then
            break
        fi
        sleep 1
    done
    echo "dockerd did not start; its log:" >&2
    tail -20 "$root/dockerd.log" >&2
    stop
    return 1
}

stop() {
    if [ -f "$pidfile" ]; then
        local pid
        pid="$(cat "$pidfile")"
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 1 30); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 1
        done
        kill -9 "$pid" 2>/dev/null || true
        rm -f "$pidfile"
    fi
    # containerd is started by dockerd as a child; make sure none of ours is left.
    pkill -f "containerd --config $root/exec" 2>/dev/null || true
    # dockerd can leave mounts behind (its network namespace, the data root): nothing of ours stays mounted.
    findmnt -rn -o TARGET | grep "^$root" | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
