#!/usr/bin/env bash
# Coordinated omission, measured: a constant rate (open loop) for SECS
# seconds against one coreloop worker, once quiet and once with the server
# stopped (SIGSTOP) for STALL seconds at STALL_AT. Prints corrected and
# uncorrected percentiles of both runs next to the model's.
#
# The model, for a rate R at half the server's capacity: requests meant
# during the stall wait for its end, then the backlog drains at the spare
# capacity R, in about the stall's length; latency is spread evenly over
# 0..STALL across 2*STALL*R requests, so the fraction above x is
# 2*(STALL - x)/SECS, and percentile q sits at STALL - (1 - q)*SECS/2
# (p99 0.70 s and p99.9 0.97 s for 1 s in 60 s).
#
# RATE defaults to half the capacity measured first: a 5-s closed loop
# with the same connections, client and server.
#
#   SECS=60 scripts/stall.sh
set -euo pipefail
cd "$(dirname "$0")/.."

RATE=${RATE:-}
SECS=${SECS:-60}
STALL_AT=${STALL_AT:-30}
STALL=${STALL:-1}
CONNS=${CONNS:-64}
PORT=${PORT:-18210}
LOG_TAG=stall
TMP=$(mktemp -d)
SERVER_PID=
stop_pids() { echo "$SERVER_PID"; }
# shellcheck source=scripts/lib.sh
source scripts/lib.sh
trap on_exit EXIT INT TERM

cargo build --release -q
BIN=target/release/coreloop
taskset -c 0 "$BIN" --port "$PORT" --workers 1 --cpus 0 --no-files --log-level warn &
SERVER_PID=$!
wait_port "$PORT"

if [ -z "$RATE" ]; then
    taskset -c 1 "$BIN" load "http://127.0.0.1:$PORT/plaintext" -d 5s -c "$CONNS" -q \
        --json "$TMP/capacity.json" >/dev/null
    capacity=$(grep -o '"responses_per_second":[0-9.]*' "$TMP/capacity.json" | cut -d: -f2)
    RATE=$(awk -v c="$capacity" 'BEGIN {printf "%.0f", c / 2}')
    log "capacity ${capacity}/s (closed loop, $CONNS connections): rate $RATE/s"
fi

for kind in quiet stall; do
    taskset -c 1 "$BIN" load "http://127.0.0.1:$PORT/plaintext" -R "$RATE" -d "${SECS}s" \
        -c "$CONNS" -q --json "$TMP/$kind.json" --hgrm "$TMP/$kind.hgrm" >"$TMP/$kind.txt" &
    LOAD=$!
    if [ "$kind" = stall ]; then
        sleep "$STALL_AT"
        kill -STOP "$SERVER_PID"
        sleep "$STALL"
        kill -CONT "$SERVER_PID"
    fi
    wait "$LOAD"
    log "$kind run:"
    sed 's/^/    /' "$TMP/$kind.txt" >&2
done

python3 - "$TMP" "$STALL" "$SECS" <<'EOF'
import json, sys
tmp, stall, secs = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
runs = {k: json.load(open(f"{tmp}/{k}.json")) for k in ("quiet", "stall")}
def ms(us): return f"{us / 1000:.2f} ms"
print("| run | corrected p50 | p99 | p99.9 | uncorrected p50 | p99 | p99.9 | send lag p99 |")
print("|---|---|---|---|---|---|---|---|")
for k, r in runs.items():
    c, u, l = r["latency_us"], r["uncorrected_latency_us"], r["send_lag_us"]
    print(f"| {k} | {ms(c['p50'])} | {ms(c['p99'])} | {ms(c['p99.9'])} | {ms(u['p50'])} | {ms(u['p99'])} | {ms(u['p99.9'])} | {ms(l['p99'])} |")
for q, name in ((0.99, "p99"), (0.999, "p99.9")):
    model = stall - (1 - q) * secs / 2
    got = runs["stall"]["latency_us"][name] / 1e6
    print(f"model {name} {model:.3f} s, measured {got:.3f} s ({(got / model - 1) * 100:+.1f}%)")
EOF
