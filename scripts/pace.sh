#!/usr/bin/env bash
# Server CPU per request at equal pace: `coreloop load` sends a constant
# rate (open loop) to coreloop (epoll, io_uring) and nginx in turn, each
# server one worker pinned to CPU 0, the client pinned to CPU 1, rounds
# interleaved in random order. The server's CPU time (utime + stime from
# /proc, nginx's master and worker) over the run divided by the requests
# the client got answered. At equal pace the figure does not depend on how
# fast a server could go, which wrk's closed loop mixes in.
#
#   ROUNDS=3 SECS=5 scripts/pace.sh
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
SECS=${SECS:-5}
# workload name, rate, load flags
WORKLOADS=(
    "keepalive-c64 40000 -c 64"
    "keepalive-c1000 40000 -c 1000"
    "pipelined-c8-d16 80000 -c 8 --pipeline 16"
    "conn-per-request 5000 -c 64 --conn-per-request"
)
LOG_TAG=pace
TMP=$(mktemp -d)
PIDS=()
stop_pids() { echo "${PIDS[@]}"; }
# shellcheck source=scripts/lib.sh
source scripts/lib.sh
trap on_exit EXIT INT TERM

command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] ||
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light >/dev/null; }
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
cargo build --release -q
BIN=target/release/coreloop
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

cat >"$TMP/nginx.conf" <<EOF
user $(id -un) $(id -gn);
worker_processes 1;
worker_cpu_affinity 0001;
worker_rlimit_nofile 16384;
daemon off;
pid $TMP/nginx.pid;
error_log $TMP/nginx-error.log warn;
events { worker_connections 16384; use epoll; }
http {
    access_log off;
    keepalive_requests 10000000;
    keepalive_timeout 120s;
    client_body_temp_path $TMP/body;
    server {
        listen 127.0.0.1:18201 backlog=4096;
        location = /plaintext { default_type text/plain; return 200 "Hello, World!"; }
    }
}
EOF

start() {   # start SERVER -> sets PORT and CPIDS (processes whose CPU counts)
    case $1 in
        nginx)
            taskset -c 0 "$NGINX" -p "$TMP/" -c "$TMP/nginx.conf" -e "$TMP/nginx-error.log" &
            PORT=18201 ;;
        *)
            taskset -c 0 "$BIN" --port 18202 --workers 1 --cpus 0 --backend "${1#coreloop-}" \
                --no-files --log-level warn --max-conns 16384 --backlog 4096 &
            PORT=18202 ;;
    esac
    local pid=$!
    PIDS+=("$pid")
    wait_port "$PORT"
    CPIDS="$pid $( (pgrep -P "$pid" || true) | tr "\n" " ")"
}

cpu_ticks() { for p in $CPIDS; do awk '{print $14 + $15}' "/proc/$p/stat"; done | awk '{s += $1} END {print s}'; }

: >"$TMP/results"
HZ=$(getconf CLK_TCK)
for round in $(seq "$ROUNDS"); do
    for w in "${WORKLOADS[@]}"; do
        read -r name rate flags <<<"$w"
        for server in $(printf '%s\n' coreloop-epoll coreloop-uring nginx | shuf); do
            start "$server"
            before=$(cpu_ticks)
            # shellcheck disable=SC2086
            taskset -c 1 "$BIN" load "http://127.0.0.1:$PORT/plaintext" -R "$rate" -d "${SECS}s" \
                --warmup 1s -q --json "$TMP/out.json" $flags >/dev/null
            after=$(cpu_ticks)
            kill_pid "${PIDS[-1]}"
            n=$(grep -o '"responses":[0-9]*' "$TMP/out.json" | head -1 | cut -d: -f2)
            w_n=$(grep -o '"warmup_responses":[0-9]*' "$TMP/out.json" | cut -d: -f2)
            errs=$(grep -o '"errors":{[^}]*}' "$TMP/out.json")
            p99=$(grep -o '"latency_us":{[^}]*}' "$TMP/out.json" | grep -o '"p99":[0-9]*' | cut -d: -f2)
            us=$(awk -v t=$((after - before)) -v hz="$HZ" -v n=$((n + w_n)) 'BEGIN {printf "%.3f", t / hz / n * 1e6}')
            log "round $round $name $server: $((n + w_n)) responses, server ${us} us CPU per request, p99 ${p99} us, $errs"
            echo "$name $server $us $p99" >>"$TMP/results"
        done
    done
done

python3 - "$TMP/results" <<'EOF'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
names = list(dict.fromkeys(r[0] for r in rows))
print("| workload | coreloop epoll us/req | coreloop io_uring us/req | nginx us/req | epoll/nginx | io_uring/nginx |")
print("|---|---|---|---|---|---|")
for n in names:
    med = {s: statistics.median(float(r[2]) for r in rows if r[0] == n and r[1] == s)
           for s in ("coreloop-epoll", "coreloop-uring", "nginx")}
    print(f"| {n} | {med['coreloop-epoll']:.2f} | {med['coreloop-uring']:.2f} | {med['nginx']:.2f} | "
          f"{med['coreloop-epoll'] / med['nginx']:.2f} | {med['coreloop-uring'] / med['nginx']:.2f} |")
EOF
