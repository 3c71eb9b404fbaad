#!/usr/bin/env bash
# A Ray cluster of several nodes on this one machine, plus an MLflow tracking server: the multi-node path (job
# submission, workers spread over nodes, a node lost mid-run) without a second machine.
#
#   cluster/local_cluster.sh start [--workers N]    # a head + N worker nodes (default 2) + the tracking server
#   cluster/local_cluster.sh status
#   cluster/local_cluster.sh kill-node NAME         # SIGKILL one worker node's raylet (e.g. worker-1): a lost node
#   cluster/local_cluster.sh add-node [NAME]        # one more worker node (default worker-<next>): a node joining
#   cluster/local_cluster.sh stop                   # everything, always (safe to run twice, or after a failure)
#   cluster/local_cluster.sh token                  # make sure a Ray auth token exists (start does this first)
#
# Each node is a separate `ray start` with its own CPUs (HEAD_CPUS, WORKER_CPUS) and a custom resource
# `node:<name>` (node:head, node:worker-1, ...), so work can be pinned to a node. Token auth is on: every node starts
# with RAY_AUTH_MODE=token, and the token is ~/.ray/auth_token (made here when missing, readable by its owner only);
# clients set RAY_AUTH_MODE=token too. The dashboard and job server (http://127.0.0.1:8265) and the tracking server
# listen on 127.0.0.1 only; Ray's other ports (the GCS on RAY_PORT, the Ray Client server on 10001, the raylets,
# agents and workers) listen on this machine's network address: token auth guards the GCS and the job server, a
# firewall should keep the rest private (SECURITY.md).
# Settings (environment): RAY_PORT (6380), DASHBOARD_PORT (8265), HEAD_CPUS (1), WORKER_CPUS (1), MLFLOW_PORT (5000),
# FOVEA_MLFLOW_DIR (see mlflow_server.sh).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
ray_port="${RAY_PORT:-6380}"
dashboard_port="${DASHBOARD_PORT:-8265}"
head_cpus="${HEAD_CPUS:-1}"
worker_cpus="${WORKER_CPUS:-1}"
export RAY_AUTH_MODE=token RAY_DISABLE_USAGE_STATS=1

command -v ray >/dev/null || { echo "local_cluster.sh: ray not found (activate the venv first)" >&2; exit 1; }

# Token auth needs the token before `ray start --head`: Ray 2.60 makes one for a local ray.init(), not for `ray start`
# (which then fails, or starts without auth when RAY_AUTH_MODE is unset). The token itself is never printed.
ensure_token() {
    [ -n "${RAY_AUTH_TOKEN:-}" ] && return 0
    ray get-auth-token --generate >/dev/null 2>&1 || { echo "local_cluster.sh: no Ray auth token could be made" >&2; exit 1; }
    local file="${RAY_AUTH_TOKEN_PATH:-$HOME/.ray/auth_token}"
    if [ -f "$file" ]; then chmod 600 "$file"; fi
}

token_location() {
    if [ -n "${RAY_AUTH_TOKEN:-}" ]; then
        echo "Ray auth token: in \$RAY_AUTH_TOKEN"
    else
        echo "Ray auth token: ${RAY_AUTH_TOKEN_PATH:-$HOME/.ray/auth_token}"
    fi
}

start() {
    local workers=2
    while [ $# -gt 0 ]; do
        case "$1" in
            --workers) workers="$2"; shift 2 ;;
            *) echo "local_cluster.sh: unknown option $1" >&2; exit 2 ;;
        esac
    done
    if python3 -c "import socket, sys; sys.exit(socket.socket().connect_ex(('127.0.0.1', $ray_port)) != 0)"; then
        echo "a Ray cluster already runs at 127.0.0.1:$ray_port (cluster/local_cluster.sh stop first)" >&2
        exit 1
    fi
    ensure_token
    # a failure half-way leaves nothing running
    trap 'echo "local_cluster.sh: start failed; stopping what was started" >&2; stop >/dev/null 2>&1' ERR
    # the nodes share one machine: health checks every second instead of every 3 s (a lost node is declared dead
    # after 5 failed ones, as by default, so after ~5 s instead of ~15 s; each still waits up to 10 s for a busy node)
    ray start --head --node-ip-address=127.0.0.1 --port="$ray_port" --num-cpus="$head_cpus" \
        --resources='{"node:head": 1}' --include-dashboard=true --dashboard-host=127.0.0.1 \
        --dashboard-port="$dashboard_port" --disable-usage-stats --system-config='{"health_check_period_ms": 1000}' \
        >/dev/null
    local i
    rm -rf "${TMPDIR:-/tmp}/ray-$ray_port-"worker-*  # the last cluster's worker nodes (kept until now: their logs)
    for i in $(seq 1 "$workers"); do
        start_worker "worker-$i"
    done
    "$here/mlflow_server.sh" start >/dev/null
    trap - ERR
    echo "Ray head + $workers worker nodes at 127.0.0.1:$ray_port; job server http://127.0.0.1:$dashboard_port"
    echo "MLflow tracking server http://127.0.0.1:${MLFLOW_PORT:-5000}"
    echo "  export RAY_AUTH_MODE=token"
    echo "  ray job submit --address http://127.0.0.1:$dashboard_port --working-dir . \\"
    echo "      --runtime-env cluster/runtime_env.yaml -- python jobs/train_mvit.py --preset smoke \\"
    echo "      track.uri=http://127.0.0.1:${MLFLOW_PORT:-5000} train.storage_path=/tmp/fovea-shared/runs"
}

start_worker() {
    # its own temp dir: nodes sharing one would unpack a job's working_dir over each other (on real machines each
    # node has its own disk anyway)
    ray start --address="127.0.0.1:$ray_port" --node-ip-address=127.0.0.1 --num-cpus="$worker_cpus" \
        --resources="{\"node:$1\": 1}" --temp-dir="${TMPDIR:-/tmp}/ray-$ray_port-$1" --disable-usage-stats >/dev/null
}

add_node() {
    local name="${1:-}" i=1
    if [ -z "$name" ]; then  # a name no node of this cluster had, lost ones included
        while [ -n "$(raylet_of "worker-$i")" ] || [ -d "${TMPDIR:-/tmp}/ray-$ray_port-worker-$i" ]; do i=$((i + 1)); done
        name="worker-$i"
    fi
    [ -z "$(raylet_of "$name")" ] || { echo "local_cluster.sh: node $name already runs" >&2; exit 1; }
    start_worker "$name"
    echo "added node $name ($worker_cpus CPUs)"
}

# the raylet (and so the node) whose command line carries the resource node:NAME
raylet_of() {
    ps -eo pid,args | awk -v name="node:$1," '/ray\/raylet\/raylet / && index($0, name) { print $1 }'
}

kill_node() {
    local name="${1:?usage: local_cluster.sh kill-node NAME (e.g. worker-1)}" pid
    pid="$(raylet_of "$name")"
    [ -n "$pid" ] || { echo "local_cluster.sh: no running node $name" >&2; exit 1; }
    kill -KILL "$pid"
    echo "killed node $name (raylet pid $pid)"
}

stop() {
    ray stop --force >/dev/null 2>&1 || true
    "$here/mlflow_server.sh" stop >/dev/null 2>&1 || true
    echo "local cluster stopped"
}

status() {
    ray status --address "127.0.0.1:$ray_port" || { echo "no Ray cluster at 127.0.0.1:$ray_port"; exit 3; }
    "$here/mlflow_server.sh" status
}

case "${1:-}" in
    start) shift; start "$@" ;;
    stop) stop ;;
    status) status ;;
    kill-node) kill_node "${2:-}" ;;
    add-node) add_node "${2:-}" ;;
    token) ensure_token; token_location ;;
    *) echo "usage: $0 start [--workers N] | status | kill-node NAME | add-node [NAME] | stop | token" >&2; exit 2 ;;
esac
