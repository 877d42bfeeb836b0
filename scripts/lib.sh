# shellcheck shell=bash
# Shared by the benchmark scripts (sourced, not run): logging, waiting for
# a server's port, and on exit stopping every process the script started
# and removing its scratch directory. The sourcing script sets LOG_TAG and TMP
# first and defines stop_pids, which prints the PIDs to stop, in order.

log() { printf '[%s %s] %s\n' "$LOG_TAG" "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

wait_port() {   # wait_port PORT: until an HTTP server answers there (10 s)
    local i
    for ((i = 0; i < 100; i++)); do
        curl -s -o /dev/null "http://127.0.0.1:$1/" && return 0
        sleep 0.1
    done
    die "nothing answers on port $1"
}

kill_pid() {     # kill_pid PID: SIGTERM, wait up to 10 s, then SIGKILL
    local pid=$1 i
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    log "pid $pid ignored SIGTERM for 10 s; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
}

on_exit() {
    local status=$? pid
    trap - EXIT INT TERM
    for pid in $(stop_pids); do
        kill_pid "$pid"
    done
    wait 2>/dev/null || true
    rm -rf "$TMP"
    exit "$status"
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
