#!/usr/bin/env bash
# Server memory per idle keep-alive connection, at several connection
# counts, on each backend: a fresh one-worker server per measurement,
# N connections that each got one response and then sit idle
# (scripts/idle_conns.py), and (VmRSS with N - VmRSS fresh) / N.
#
#   scripts/idle_mem.sh                       # 1000 10000 19000, epoll and uring
#   COUNTS="10000" BACKENDS=uring scripts/idle_mem.sh
#
# Prints one line per (backend, count). Needs python3; raises its own
# open-files limit to the hard limit (19000 connections need 20000).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
COUNTS=${COUNTS:-"1000 10000 19000"}
BACKENDS=${BACKENDS:-"epoll uring"}
PORT=${PORT:-18611}
BIN=${BIN:-$ROOT/target/release/coreloop}
ulimit -n "$(ulimit -Hn)"
[[ -x $BIN ]] || (cd "$ROOT" && cargo build --release --quiet)

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

for backend in $BACKENDS; do
    for n in $COUNTS; do
        "$BIN" --workers 1 --no-pin --port "$PORT" --backend "$backend" \
            --max-conns $((n + 100)) --idle-timeout 300s --log-level warn --no-files &
        srv=$!
        for _ in $(seq 100); do
            (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
            sleep 0.05
        done
        sleep 0.3
        before=$(rss_kib "$srv")
        coproc IDLE { exec python3 "$ROOT/scripts/idle_conns.py" --port "$PORT" --count "$n"; }
        read -r -t 300 -u "${IDLE[0]}" ready || ready=""
        sleep 0.5
        after=$(rss_kib "$srv")
        exec {IDLE[1]}>&-
        wait "$IDLE_PID" 2>/dev/null || true
        kill -TERM "$srv"
        wait "$srv" || true
        if [[ $ready != ready ]]; then
            echo "idle_mem: $backend $n: the idle client did not get ready" >&2
            exit 1
        fi
        echo "$backend conns=$n rss_fresh=${before}KiB rss_idle=${after}KiB per_conn=$(((after - before) * 1024 / n))B"
    done
done
