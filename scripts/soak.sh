#!/usr/bin/env bash
# Soak: constant load on one server for a long time, sampling its memory
# and descriptors, then pass/fail against the flat-memory goal.
#
#   scripts/soak.sh                         # 10 minutes, default backend
#   DURATION=3600 BACKEND=epoll scripts/soak.sh
#
# Load mix (all bounded in time, all on 127.0.0.1):
#   - wrk -c64 keep-alive GET /plaintext for the whole run;
#   - connection churn: CHURN_RATE new connections per second, each one
#     request with "Connection: close" (python3);
#   - malformed requests: BAD_RATE per second (bad request line, bare CR,
#     oversized head, a truncated chunked body), each on a new connection.
# Every SAMPLE seconds: VmRSS (KiB) and open descriptors of the server, into
# OUT (a TSV: seconds, rss_kib, fds). At the end:
#   growth = (RSS at the end - RSS at WARMUP seconds) / RSS at WARMUP,
#   scaled to 10 minutes; PASS when below GOAL_PCT (default 1 %) and the
#   server holds as many descriptors after the load as before it (plus
#   one per worker with FILES_ROOT: the open-file cache's entry).
# Exit 0 on PASS, 1 on FAIL, 2 when the run itself went wrong.
#
# Knobs (environment): DURATION (600 s), WARMUP (60 s), SAMPLE (5 s),
# TARGET (the keep-alive load's path, /plaintext), FILES_ROOT (serve
# static files from this directory; default --no-files),
# BACKEND (auto), WORKERS (2), CHURN_RATE (50), BAD_RATE (5), PORT (18622),
# GOAL_PCT (1), OUT (target/soak-<backend>.tsv), SERVER_ARGS (extra flags),
# BIN (target/release/coreloop, built if missing).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DURATION=${DURATION:-600}
WARMUP=${WARMUP:-60}
SAMPLE=${SAMPLE:-5}
BACKEND=${BACKEND:-auto}
WORKERS=${WORKERS:-2}
CHURN_RATE=${CHURN_RATE:-50}
BAD_RATE=${BAD_RATE:-5}
PORT=${PORT:-18622}
GOAL_PCT=${GOAL_PCT:-1}
OUT=${OUT:-$ROOT/target/soak-$BACKEND.tsv}
BIN=${BIN:-$ROOT/target/release/coreloop}
SERVER_ARGS=${SERVER_ARGS:-}
TARGET=${TARGET:-/plaintext}
FILES_ROOT=${FILES_ROOT:-}
if [[ -n $FILES_ROOT ]]; then files=(--root "$FILES_ROOT"); else files=(--no-files); fi
command -v wrk >/dev/null || { echo "soak: wrk not found (apt-get install wrk)" >&2; exit 2; }
[[ -x $BIN ]] || (cd "$ROOT" && cargo build --release --quiet)
(( DURATION > WARMUP )) || { echo "soak: DURATION must exceed WARMUP" >&2; exit 2; }
mkdir -p "$(dirname "$OUT")"

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

# shellcheck disable=SC2086
"$BIN" --port "$PORT" --workers "$WORKERS" --no-pin --backend "$BACKEND" \
    --log-level warn "${files[@]}" $SERVER_ARGS &
srv=$!
pids+=("$srv")
for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
    sleep 0.05
done

# Every core opens its ring, eventfd and listener as it starts; the port
# answers as soon as the first one is up. Count once the number holds
# still for half a second.
fd_count() { ls "/proc/$srv/fd" | wc -l; }
fds_idle=$(fd_count)
for _ in $(seq 20); do
    sleep 0.5
    now=$(fd_count)
    [[ $now == "$fds_idle" ]] && break
    fds_idle=$now
done
wrk -t1 -c64 -d"${DURATION}s" "http://127.0.0.1:$PORT$TARGET" >"$OUT.wrk" 2>&1 &
pids+=($!)

python3 - "$PORT" "$DURATION" "$CHURN_RATE" "$BAD_RATE" >"$OUT.side" 2>&1 <<'PY' &
import socket, sys, time
port, duration, churn, bad = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
malformed = [
    b"GET /plaintext HTTP/1.1 extra\r\nHost: a\r\n\r\n",
    b"GET /plaintext HTTP/1.1\r\nHost: a\rX: y\r\n\r\n",
    b"GET /plaintext HTTP/1.1\r\nHost: a\r\nX: " + b"y" * 20000 + b"\r\n\r\n",
    b"POST /plaintext HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
]
def one(req, read=True):
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        s.sendall(req)
        if read:
            while s.recv(65536):
                pass
    finally:
        s.close()
counts = {"churn": 0, "bad": 0, "errors": 0}
start = time.monotonic()
tick = 0
while time.monotonic() - start < duration:
    t0 = time.monotonic()
    for _ in range(churn):
        try:
            one(b"GET /plaintext HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            counts["churn"] += 1
        except OSError:
            counts["errors"] += 1
    for i in range(bad):
        try:
            # The truncated chunked body is left hanging: the server's body
            # deadline, not the client, ends it.
            req = malformed[(tick + i) % len(malformed)]
            one(req, read=not req.endswith(b"ab"))
            counts["bad"] += 1
        except OSError:
            counts["errors"] += 1
    tick += 1
    time.sleep(max(0.0, 1.0 - (time.monotonic() - t0)))
print(" ".join(f"{k}={v}" for k, v in counts.items()))
PY
pids+=($!)
side=$!

printf 'secs\trss_kib\tfds\n' >"$OUT"
start=$(date +%s)
while (( $(date +%s) - start < DURATION )); do
    kill -0 "$srv" 2>/dev/null || { echo "soak: the server died" >&2; exit 2; }
    rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$srv/status")
    fds=$(ls "/proc/$srv/fd" | wc -l)
    printf '%s\t%s\t%s\n' "$(( $(date +%s) - start ))" "$rss" "$fds" >>"$OUT"
    sleep "$SAMPLE"
done
wait "$side" || true
# The open-file cache may keep the served file open on every core.
fds_allowed=$fds_idle
[[ -z $FILES_ROOT ]] || fds_allowed=$((fds_idle + WORKERS))
# A rejected connection may linger up to --linger-timeout (2 s) after the
# load; give the descriptors 5 s to come back.
for _ in $(seq 10); do
    fds_end=$(fd_count)
    (( fds_end <= fds_allowed )) && break
    sleep 0.5
done

status=0
awk -v warm="$WARMUP" -v goal="$GOAL_PCT" -v fds_idle="$fds_idle" -v fds_end="$fds_end" -v fds_allowed="$fds_allowed" '
NR == 1 { next }
$1 >= warm && base == "" { base = $2; t0 = $1 }
{ last = $2; t1 = $1 }
END {
    if (base == "" || t1 <= t0) { print "soak: too few samples"; exit 2 }
    pct = (last - base) * 100 / base
    per10 = pct * 600 / (t1 - t0)
    verdict = (per10 < goal && fds_end <= fds_allowed) ? "PASS" : "FAIL"
    printf "soak: RSS %d KiB at %d s -> %d KiB at %d s (%+.2f%%, %+.2f%% per 10 min); fds before/after the load %d/%d; %s (goal < %s%% per 10 min)\n",
        base, t0, last, t1, pct, per10, fds_idle, fds_end, verdict, goal
    exit verdict == "PASS" ? 0 : 1
}' "$OUT" || status=$?
echo "soak: wrk: $(grep -E 'Requests/sec|requests in|Non-2xx|Socket errors' "$OUT.wrk" | tr -s ' ' | paste -sd ';' -)"
echo "soak: side load: $(cat "$OUT.side")"
exit $status
