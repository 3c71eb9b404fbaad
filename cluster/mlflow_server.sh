#!/usr/bin/env bash
# A local MLflow tracking server for fovea: SQL backend (SQLite here) + an artifact root it serves itself, so
# workers on any node log over HTTP and need no shared disk for artifacts.
#
#   cluster/mlflow_server.sh start      # then: export MLFLOW_TRACKING_URI=http://127.0.0.1:5000
#   cluster/mlflow_server.sh status
#   cluster/mlflow_server.sh stop
#
# Settings (environment):
#   MLFLOW_HOST (127.0.0.1; 0.0.0.0 to serve other nodes)   MLFLOW_PORT (5000)   MLFLOW_WORKERS (2)
#   FOVEA_MLFLOW_DIR   where the database, artifacts, pid and log live ($FOVEA_HOME/mlflow-server)
#   MLFLOW_BACKEND_STORE_URI   (sqlite:///$FOVEA_MLFLOW_DIR/mlflow.db; postgresql://... on a cluster)
#   MLFLOW_ARTIFACTS_DESTINATION   ($FOVEA_MLFLOW_DIR/artifacts; s3://bucket/prefix on a cluster)
#   MLFLOW_AUTH=basic   MLflow's basic-auth app (users in $FOVEA_MLFLOW_DIR/basic_auth.db; the first start needs
#                       MLFLOW_AUTH_ADMIN_PASSWORD; clients set MLFLOW_TRACKING_USERNAME/PASSWORD; see README)
#   MLFLOW_SERVER_ARGS  more `mlflow server` options, e.g. "--allowed-hosts mlflow.example.com"
set -euo pipefail

dir="${FOVEA_MLFLOW_DIR:-${FOVEA_HOME:-$HOME/.cache/fovea}/mlflow-server}"
host="${MLFLOW_HOST:-127.0.0.1}"
port="${MLFLOW_PORT:-5000}"
workers="${MLFLOW_WORKERS:-2}"
backend="${MLFLOW_BACKEND_STORE_URI:-sqlite:///$dir/mlflow.db}"
# printed without its password (postgresql://mlflow:***@db...): the server gets it from its environment, not its
# command line, which every user of the machine can read in `ps`
shown_backend="$(printf '%s' "$backend" | sed -E 's#^([A-Za-z][A-Za-z0-9+.-]*://)[^/@]*@#\1***@#')"
artifacts="${MLFLOW_ARTIFACTS_DESTINATION:-$dir/artifacts}"
pidfile="$dir/server.pid"
logfile="$dir/server.log"
probe_host="$host"
[ "$probe_host" = "0.0.0.0" ] && probe_host=127.0.0.1
url="http://$probe_host:$port"

# alive, and not a zombie: where nothing reaps orphans (PID 1 of many containers), a crashed server stays a zombie
# that `kill -0` still finds, and a restart would answer "already running" with no server behind it
running() {
    [ -f "$pidfile" ] || return 1
    local pid state
    pid="$(cat "$pidfile")"
    kill -0 "$pid" 2>/dev/null || return 1
    state="$(ps -o stat= -p "$pid" 2>/dev/null || true)"
    [ -n "$state" ] && [ "${state#Z}" = "$state" ]
}

healthy() {
    python3 - "$url/health" <<'PY' 2>/dev/null
import sys, urllib.request
try:
    sys.exit(0 if urllib.request.urlopen(sys.argv[1], timeout=2).status == 200 else 1)
except Exception:
    sys.exit(1)
PY
}

start() {
    if running; then
        echo "mlflow server already running (pid $(cat "$pidfile")) at $url"
        return 0
    fi
    command -v mlflow >/dev/null || { echo "mlflow_server.sh: mlflow not found (activate the venv first)" >&2; exit 1; }
    (umask 077 && mkdir -p "$dir" "$artifacts" 2>/dev/null) || true  # the store, its users and artifacts: owner only
    local auth=()
    if [ "${MLFLOW_AUTH:-}" = "basic" ]; then
        auth=(--app-name basic-auth)
        # The auth app keeps users in its own database; MLflow has no default admin password: the first start
        # creates the admin user from MLFLOW_AUTH_ADMIN_PASSWORD.
        if [ -z "${MLFLOW_AUTH_CONFIG_PATH:-}" ]; then
            export MLFLOW_AUTH_CONFIG_PATH="$dir/basic_auth.ini"
            [ -f "$MLFLOW_AUTH_CONFIG_PATH" ] || cat >"$MLFLOW_AUTH_CONFIG_PATH" <<INI
[mlflow]
default_permission = READ
database_uri = sqlite:///$dir/basic_auth.db
admin_username = ${MLFLOW_AUTH_ADMIN_USERNAME:-admin}
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
INI
        fi
        if ! python3 -c "import flask_wtf" 2>/dev/null; then
            echo "mlflow_server.sh: MLFLOW_AUTH=basic needs MLflow's auth extra: pip install -e '.[auth]'" >&2
            exit 2
        fi
        # the auth app's CSRF protection needs a key that stays the same across restarts (and across servers)
        if [ -z "${MLFLOW_FLASK_SERVER_SECRET_KEY:-}" ]; then
            [ -f "$dir/secret_key" ] || (umask 077 && python3 -c "import secrets; print(secrets.token_hex(32))" >"$dir/secret_key")
            MLFLOW_FLASK_SERVER_SECRET_KEY="$(cat "$dir/secret_key")"
            export MLFLOW_FLASK_SERVER_SECRET_KEY
        fi
        if [ ! -f "$dir/basic_auth.db" ] && [ -z "${MLFLOW_AUTH_ADMIN_PASSWORD:-}" ]; then
            echo "mlflow_server.sh: MLFLOW_AUTH=basic needs MLFLOW_AUTH_ADMIN_PASSWORD for the first start" >&2
            exit 2
        fi
    fi
    # GenAI job execution (extra worker processes) is of no use to fovea: off unless asked for
    export MLFLOW_SERVER_ENABLE_JOB_EXECUTION="${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}"
    # setsid: the server and its worker processes form one process group, which stop() ends together
    # shellcheck disable=SC2086
    MLFLOW_BACKEND_STORE_URI="$backend" setsid mlflow server --artifacts-destination "$artifacts" \
        --host "$host" --port "$port" --workers "$workers" "${auth[@]}" ${MLFLOW_SERVER_ARGS:-} \
        >"$logfile" 2>&1 </dev/null &
    echo $! >"$pidfile"
    for _ in $(seq 1 120); do
        if healthy; then
            echo "mlflow server running (pid $(cat "$pidfile")) at $url"
            echo "  backend $shown_backend | artifacts $artifacts | log $logfile"
            echo "  export MLFLOW_TRACKING_URI=$url"
            return 0
        fi
        if ! running; then
            echo "mlflow_server.sh: the server exited; last lines of $logfile:" >&2
            tail -n 20 "$logfile" >&2
            rm -f "$pidfile"
            exit 1
        fi
        sleep 0.5
    done
    echo "mlflow_server.sh: no answer from $url/health after 60 s (see $logfile)" >&2
    exit 1
}

stop() {
    if ! running; then
        echo "mlflow server not running"
        rm -f "$pidfile"
        return 0
    fi
    local pid
    pid="$(cat "$pidfile")"
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid"
    for _ in $(seq 1 40); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.25
    done
    kill -KILL -- "-$pid" 2>/dev/null || true
    rm -f "$pidfile"
    echo "mlflow server stopped"
}

status() {
    if running && healthy; then
        echo "mlflow server running (pid $(cat "$pidfile")) at $url, backend $shown_backend"
    elif running; then
        echo "mlflow server process $(cat "$pidfile") is up but $url/health does not answer"
        exit 1
    else
        echo "mlflow server not running"
        exit 3
    fi
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    restart) stop; start ;;
    status) status ;;
    *) echo "usage: $0 start|stop|restart|status" >&2; exit 2 ;;
esac
