#!/usr/bin/env bash
# Where does a server's CPU time go under one workload? Starts the server
# the way scripts/bench.sh does (one worker pinned to SERVER_CPU), loads it
# with wrk pinned to CLIENT_CPU, and samples it with
# `perf record -F FREQ -g -p PID -- sleep SECS` in the middle of the load.
#
#   scripts/profile.sh uring close        # coreloop --backend uring, Connection: close
#   scripts/profile.sh epoll keepalive
#   scripts/profile.sh nginx close
#
# SERVER: epoll | uring | nginx. WORKLOAD: keepalive | pipeline | c1000 | close
# (the wrk flags of scripts/bench.sh). Prints to stdout, and keeps in OUT:
#   - user/kernel split: the server's utime/stime over the sampling window
#     (/proc/PID/stat) and the share of samples in user and kernel code;
#   - the top symbols by self time: perf report --no-children --sort symbol;
#   - the top symbols by inclusive time (perf report --children), which
#     groups the kernel's work by entry point (io_uring_enter, close, ...);
#   - requests served in the window (wrk is not stopped at its edges, so
#     the server's own CPU time over the window / wrk's req/s over its whole
#     run gives an approximate CPU us/req).
# perf.data and the full report stay in OUT for a closer look
# (perf report -i OUT/perf.data).
#
# Environment:
#   BIN          coreloop binary (default: target/bench-rev/target/release/coreloop
#                if scripts/bench.sh built one with BENCH_REV, else target/release/coreloop)
#   PORT         (default 18180)   SECS   seconds sampled (default 5)
#   FREQ         sampling frequency (default 999)
#   SERVER_CPU   (default 0)       CLIENT_CPU (default 1)
#   OUT          output directory (default target/profile/<server>-<workload>-<timestamp>)
set -euo pipefail

SERVER=${1:?usage: scripts/profile.sh epoll|uring|nginx keepalive|pipeline|c1000|close}
WORKLOAD=${2:?usage: scripts/profile.sh epoll|uring|nginx keepalive|pipeline|c1000|close}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PORT=${PORT:-18180}
SECS=${SECS:-5}
FREQ=${FREQ:-999}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
OUT=${OUT:-$ROOT/target/profile/$SERVER-$WORKLOAD-$(date -u +%Y%m%dT%H%M%SZ)}
if [[ -z ${BIN:-} ]]; then
    BIN=$ROOT/target/release/coreloop
    [[ -x $ROOT/target/bench-rev/target/release/coreloop ]] && BIN=$ROOT/target/bench-rev/target/release/coreloop
fi
URL="http://127.0.0.1:$PORT/plaintext"
mkdir -p "$OUT"
TMP=$(mktemp -d "${TMPDIR:-/tmp}/coreloop-profile.XXXXXX")

PIDS_TO_STOP=()
stop_pids() { echo "${PIDS_TO_STOP[@]}"; }
LOG_TAG=profile
# shellcheck source=scripts/lib.sh
source "$ROOT/scripts/lib.sh"

command -v perf >/dev/null || die "perf is required"
command -v wrk >/dev/null || die "wrk is required"

case $WORKLOAD in
    keepalive) WRK=(-t1 -c64) ;;
    pipeline) WRK=(-t1 -c64 -s "$ROOT/scripts/pipeline.lua") ;;
    c1000) WRK=(-t1 -c1000) ;;
    close) WRK=(-t1 -c64 -H "Connection: close") ;;
    *) die "unknown workload $WORKLOAD" ;;
esac
WRK_TAIL=()
[[ $WORKLOAD == pipeline ]] && WRK_TAIL=(-- 16)

wait_ready() {
    local i
    for ((i = 0; i < 100; i++)); do
        kill -0 "$SPID" 2>/dev/null || die "server exited during startup; see $OUT/server.log"
        [[ $(curl -s -o /dev/null -w '%{http_code}' "$URL" || true) == 200 ]] && return 0
        sleep 0.1
    done
    die "server did not answer on port $PORT"
}

case $SERVER in
    epoll | uring)
        [[ -x $BIN ]] || die "$BIN missing (cargo build --release)"
        cp "$BIN" "$TMP/coreloop"   # a private copy: a rebuild must not swap it mid-run
        # perf resolves symbols by path, so keep the copy until the report is done.
        taskset -c "$SERVER_CPU" "$TMP/coreloop" --workers 1 --cpus "$SERVER_CPU" --port "$PORT" \
            --backend "$SERVER" --log-level warn --max-conns 20000 --idle-timeout 120s \
            >"$OUT/server.log" 2>&1 &
        SPID=$!
        PIDS_TO_STOP+=("$SPID")
        wait_ready
        PIDS=("$SPID")
        LABEL="coreloop --backend $SERVER ($(sha256sum "$BIN" | cut -c1-12))"
        ;;
    nginx)
        NGINX=$(command -v nginx || echo /usr/sbin/nginx)
        [[ -x $NGINX ]] || die "nginx not found"
        mask=$(python3 -c "import sys; print(format(1 << int(sys.argv[1]), 'b').zfill(4))" "$SERVER_CPU")
        user_line=""
        [[ $(id -u) -eq 0 ]] && user_line="user $(id -un) $(id -gn);"
        cat >"$TMP/nginx.conf" <<EOF
$user_line
worker_processes 1;
worker_cpu_affinity $mask;
worker_rlimit_nofile 20000;
daemon off;
master_process on;
pid $TMP/nginx.pid;
error_log $TMP/error.log warn;
events { worker_connections 20000; use epoll; }
http {
    access_log off;
    client_body_temp_path $TMP/client_body;
    proxy_temp_path $TMP/proxy;
    fastcgi_temp_path $TMP/fastcgi;
    uwsgi_temp_path $TMP/uwsgi;
    scgi_temp_path $TMP/scgi;
    keepalive_requests 10000000;
    keepalive_timeout 120s;
    server {
        listen 127.0.0.1:$PORT backlog=1024;
        location = /plaintext { default_type text/plain; return 200 "Hello, World!"; }
    }
}
EOF
        taskset -c "$SERVER_CPU" "$NGINX" -p "$TMP/" -c "$TMP/nginx.conf" -e "$TMP/error.log" \
            >"$OUT/server.log" 2>&1 &
        SPID=$!
        PIDS_TO_STOP+=("$SPID")
        wait_ready
        read -r -a kids <<<"$(cat "/proc/$SPID/task/$SPID/children")"
        ((${#kids[@]})) || die "nginx worker not found"
        PIDS=("$SPID" "${kids[@]}")
        LABEL="nginx $("$NGINX" -v 2>&1 | sed 's|.*nginx/||') (master + worker)"
        ;;
    *) die "unknown server $SERVER (epoll, uring, nginx)" ;;
esac

ticks() {   # utime stime (clock ticks) summed over PIDS
    local pid u=0 s=0 rest
    for pid in "${PIDS[@]}"; do
        rest=$(sed 's/^.*) //' "/proc/$pid/stat")
        u=$((u + $(awk '{print $12}' <<<"$rest")))
        s=$((s + $(awk '{print $13}' <<<"$rest")))
    done
    echo "$u $s"
}

log "$LABEL on CPU $SERVER_CPU, pids ${PIDS[*]}; warm-up 2 s"
taskset -c "$CLIENT_CPU" wrk "${WRK[@]}" -d2s "$URL" "${WRK_TAIL[@]}" >/dev/null 2>&1 || true

WRK_SECS=$((SECS + 4))
log "wrk $WORKLOAD for ${WRK_SECS} s; perf record -F $FREQ -g for $SECS s from second 2"
taskset -c "$CLIENT_CPU" wrk "${WRK[@]}" -d"${WRK_SECS}s" "$URL" "${WRK_TAIL[@]}" >"$OUT/wrk.txt" 2>&1 &
WPID=$!
PIDS_TO_STOP+=("$WPID")
sleep 2
read -r u0 s0 <<<"$(ticks)"
t0=$EPOCHREALTIME
perf record -F "$FREQ" -g -o "$OUT/perf.data" -p "$(IFS=,; echo "${PIDS[*]}")" -- sleep "$SECS" \
    2>"$OUT/perf-record.log"
read -r u1 s1 <<<"$(ticks)"
t1=$EPOCHREALTIME
wait "$WPID" || die "wrk failed; see $OUT/wrk.txt"

CLK=$(getconf CLK_TCK)
RPS=$(awk '/^Requests\/sec:/ {print $2}' "$OUT/wrk.txt")
perf report -i "$OUT/perf.data" --no-children --sort symbol -g none --stdio 2>/dev/null >"$OUT/report-symbols.txt"
perf report -i "$OUT/perf.data" --no-children --sort symbol --stdio 2>/dev/null >"$OUT/report-callgraph.txt"
perf report -i "$OUT/perf.data" --no-children --sort dso -g none --stdio 2>/dev/null >"$OUT/report-dso.txt"
perf report -i "$OUT/perf.data" --children --sort symbol -g none --stdio 2>/dev/null >"$OUT/report-children.txt"
[[ $SERVER == nginx ]] || rm -f "$TMP/coreloop"

{
    echo "## $LABEL, workload $WORKLOAD"
    echo
    echo "wrk: $(grep -E '^Requests/sec' "$OUT/wrk.txt") over ${WRK_SECS} s (wrk ${WRK[*]})"
    awk -v u=$((u1 - u0)) -v s=$((s1 - s0)) -v hz="$CLK" -v a="$t0" -v b="$t1" -v r="$RPS" 'BEGIN {
        w = b - a; us = u / hz; ss = s / hz
        printf "server CPU over the %.2f s window: user %.2f s, system %.2f s (%.0f%% / %.0f%%), %.0f%% of a CPU busy\n",
            w, us, ss, (us + ss > 0 ? 100 * us / (us + ss) : 0), (us + ss > 0 ? 100 * ss / (us + ss) : 0), 100 * (us + ss) / w
        if (r > 0) printf "approx. CPU per request: user %.2f us + system %.2f us = %.2f us (window CPU / (wrk req/s x window))\n",
            us * 1e6 / (r * w), ss * 1e6 / (r * w), (us + ss) * 1e6 / (r * w) }'
    awk '$1 ~ /%$/ { p = $1; sub(/%/, "", p); if ($2 == "[k]") k += p; else if ($2 == "[.]") u += p; else o += p }
        END { printf "samples: kernel [k] %.1f%%, user [.] %.1f%%, other %.1f%%\n", k, u, o }' "$OUT/report-symbols.txt"
    echo
    echo "Top symbols by self time (perf report --no-children --sort symbol):"
    echo
    awk '/^ +[0-9.]+%/ && n++ < 30' "$OUT/report-symbols.txt"
    echo
    echo "Inclusive time (self + callees; perf report --children --sort symbol), top 45:"
    echo
    awk '/^ +[0-9.]+%/ && n++ < 45' "$OUT/report-children.txt"
    echo
    echo "By object (perf report --sort dso):"
    echo
    awk '/^ +[0-9.]+%/ && n++ < 8' "$OUT/report-dso.txt"
    echo
    echo "(full reports and perf.data in $OUT)"
} | tee "$OUT/summary.txt"
