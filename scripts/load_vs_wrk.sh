#!/usr/bin/env bash
# Responses per client-CPU-second: `coreloop load` against `wrk -t1`, one
# coreloop server pinned to CPU 0, the clients pinned to CPU 1, in
# interleaved rounds of random order. Each client's CPU time (user + sys
# of the whole process, from getrusage of its children by a small Python
# wrapper) and the responses the *server* counted in /metrics during its run
# give the figure, so both clients are measured the same way.
#
#   ROUNDS=5 DURATION=10 scripts/load_vs_wrk.sh
#   LOAD_BACKEND=epoll ROUNDS=5 scripts/load_vs_wrk.sh   # our client on epoll
#
# Prints one line per run, then per workload: medians, paired ratios (ours
# / wrk's per round), the smallest of ours against the largest of wrk's,
# and how far our own response count is from the server's.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-10}
CONNS=${CONNS:-64}
DEPTH=${DEPTH:-16}
BACKEND=${BACKEND:-auto}            # the server's
LOAD_BACKEND=${LOAD_BACKEND:-auto}  # coreloop load's
PORT=${PORT:-18090}
LOG_TAG=load_vs_wrk
TMP=$(mktemp -d)
SERVER_PID=
stop_pids() { echo "$SERVER_PID"; }
# shellcheck source=scripts/lib.sh
source scripts/lib.sh
trap on_exit EXIT INT TERM

command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
cargo build --release -q
BIN=target/release/coreloop
URL="http://127.0.0.1:$PORT/plaintext"

taskset -c 0 "$BIN" --port "$PORT" --workers 1 --cpus 0 --backend "$BACKEND" --no-files \
    --log-level warn &
SERVER_PID=$!
wait_port "$PORT"

served() {
    curl -fs "http://127.0.0.1:$PORT/metrics" |
        awk '/^coreloop_requests_total\{/ {s += $2} END {print s + 0}'
}

# cpu_of CMD...: runs CMD (its output to $TMP/out), prints the user + sys
# seconds of it and its threads.
cpu_of() {
    OUT="$TMP/out" python3 -c '
import os, resource, subprocess, sys
with open(os.environ["OUT"], "w") as out:
    subprocess.run(sys.argv[1:], stdout=out, check=False)
r = resource.getrusage(resource.RUSAGE_CHILDREN)
print(f"{r.ru_utime + r.ru_stime:.4f}")' "$@"
}

run_one() {    # run_one CLIENT WORKLOAD -> "cpu served ours_count"
    local client=$1 workload=$2 before after cpu count=0
    before=$(served)
    case "$client/$workload" in
        ours/keepalive)
            cpu=$(cpu_of taskset -c 1 "$BIN" load "$URL" --backend "$LOAD_BACKEND" -c "$CONNS" -d "${DURATION}s" -q --json - ) ;;
        ours/pipelined)
            cpu=$(cpu_of taskset -c 1 "$BIN" load "$URL" --backend "$LOAD_BACKEND" -c "$CONNS" -d "${DURATION}s" -q --pipeline "$DEPTH" --json -) ;;
        wrk/keepalive)
            cpu=$(cpu_of taskset -c 1 wrk -t1 -c "$CONNS" -d "${DURATION}s" "$URL") ;;
        wrk/pipelined)
            cpu=$(cpu_of taskset -c 1 wrk -t1 -c "$CONNS" -d "${DURATION}s" -s scripts/pipeline.lua "$URL" -- "$DEPTH") ;;
    esac
    sleep 0.5
    after=$(served)
    if [ "$client" = ours ]; then
        count=$(grep -o '"responses":[0-9]*' "$TMP/out" | head -1 | cut -d: -f2)
        count=$((count + $(grep -o '"warmup_responses":[0-9]*' "$TMP/out" | cut -d: -f2)))
    fi
    echo "$cpu $((after - before)) $count"
}

: > "$TMP/results"
for round in $(seq "$ROUNDS"); do
    for workload in keepalive pipelined; do
        order="ours wrk"
        [ $((RANDOM % 2)) = 1 ] && order="wrk ours"
        for client in $order; do
            read -r cpu n count <<<"$(run_one "$client" "$workload")"
            rate=$(awk -v n="$n" -v c="$cpu" 'BEGIN {printf "%.0f", n / c}')
            log "round $round $workload $client: $n responses, ${cpu}s client CPU, $rate per CPU-second${count:+ (own count $count)}"
            echo "$round $workload $client $rate $n $count" >>"$TMP/results"
        done
    done
done

python3 - "$TMP/results" <<'EOF'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
for w in ("keepalive", "pipelined"):
    ours = {int(r[0]): float(r[3]) for r in rows if r[1] == w and r[2] == "ours"}
    wrk = {int(r[0]): float(r[3]) for r in rows if r[1] == w and r[2] == "wrk"}
    ratios = [ours[k] / wrk[k] for k in ours if k in wrk]
    diffs = [abs(int(r[5]) - int(r[4])) / int(r[4]) * 100 for r in rows if r[1] == w and r[2] == "ours" and int(r[4]) > 0]
    print(f"{w}: responses per client CPU-second, median ours {statistics.median(ours.values()):,.0f}, "
          f"wrk {statistics.median(wrk.values()):,.0f}; paired ratio median {statistics.median(ratios):.3f} "
          f"[{min(ratios):.3f}, {max(ratios):.3f}]; smallest ours {min(ours.values()):,.0f} vs largest wrk "
          f"{max(wrk.values()):,.0f}; own count vs server: max {max(diffs):.4f}% off")
EOF
