#!/usr/bin/env bash
# A/B experiment on one coreloop knob: two flag sets, interleaved rounds in
# randomized order (A then B, or B then A, per round), the server restarted
# for every measurement, server pinned to SERVER_CPU and wrk to CLIENT_CPU.
# Reports the server CPU per request (utime+stime from /proc / requests) of
# each side per round, the paired ratio B/A per round, its median and a
# bootstrap 95% interval. A = B (the same flags twice) is the A/A control:
# its interval shows the noise floor a real effect must clear.
#
#   A="" B="--accept single" scripts/ab.sh
#   A="" B="" ROUNDS=8 scripts/ab.sh                 # A/A control
#   A="--backend epoll" B="--backend uring" WRK_ARGS="-c64" scripts/ab.sh
#
# Environment: A, B (flags added to the server command), ROUNDS (default
# 8), DURATION (wrk, default 5s), WRK_ARGS (default "-c64"), PATH_Q
# (default /plaintext), SERVER_CPU (0), CLIENT_CPU (1), PORT (18280),
# SKIP_BUILD=1, SEED (shuffle seed, default: the date).
set -euo pipefail
cd "$(dirname "$0")/.."
LOG_TAG=ab
TMP=$(mktemp -d "${TMPDIR:-/tmp}/coreloop-ab.XXXXXX")
SERVER_PID=""
stop_pids() { [[ -n $SERVER_PID ]] && echo "$SERVER_PID"; return 0; }
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

A=${A-}
B=${B-}
ROUNDS=${ROUNDS:-8}
DURATION=${DURATION:-5s}
WRK_ARGS=${WRK_ARGS:--c64}
PATH_Q=${PATH_Q:-/plaintext}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
PORT=${PORT:-18280}
SEED=${SEED:-$(date +%s)}

command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
command -v curl >/dev/null || { apt-get update -qq && apt-get install -y -qq curl; }
[[ ${SKIP_BUILD:-0} == 1 ]] || cargo build --release --quiet
BIN=target/release/coreloop
TICKS=$(getconf CLK_TCK)

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# measure FLAGS: prints "CPU_US_PER_REQ REQUESTS"
measure() {
    local flags=$1 before after reqs out
    # shellcheck disable=SC2086
    taskset -c "$SERVER_CPU" "$BIN" --workers 1 --cpus "$SERVER_CPU" --port "$PORT" \
        --no-files --log-level warn $flags >>"$TMP/server.log" 2>&1 &
    SERVER_PID=$!
    for _ in $(seq 100); do
        curl -sf -o /dev/null "http://127.0.0.1:$PORT/healthz" && break
        kill -0 "$SERVER_PID" 2>/dev/null || die "server exited: $(tail -n 3 "$TMP/server.log")"
        sleep 0.05
    done
    before=$(cpu_ticks "$SERVER_PID")
    # shellcheck disable=SC2086
    out=$(taskset -c "$CLIENT_CPU" wrk -t1 $WRK_ARGS -d"$DURATION" "http://127.0.0.1:$PORT$PATH_Q")
    after=$(cpu_ticks "$SERVER_PID")
    kill_pid "$SERVER_PID"
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=""
    reqs=$(awk '/requests in/ {print $1}' <<<"$out")
    [[ ${reqs:-0} -gt 0 ]] || die "wrk completed no request: $out"
    awk -v b="$before" -v a="$after" -v r="$reqs" -v t="$TICKS" \
        'BEGIN { printf "%.4f %d\n", (a - b) / t * 1e6 / r, r }'
}

log "A: '${A}'  B: '${B}'  ($ROUNDS rounds, wrk -t1 $WRK_ARGS -d$DURATION $PATH_Q, seed $SEED)"
RANDOM=$SEED
ratios=()
echo "| round | order | A us/req | B us/req | B/A |"
echo "|---:|---|---:|---:|---:|"
for ((r = 1; r <= ROUNDS; r++)); do
    if ((RANDOM % 2)); then order="AB"; else order="BA"; fi
    for side in $(grep -o . <<<"$order"); do
        if [[ $side == A ]]; then read -r a_us _ < <(measure "$A"); else read -r b_us _ < <(measure "$B"); fi
    done
    [[ -n ${a_us:-} && -n ${b_us:-} ]] || die "round $r: a measurement failed (see above)"

    ratio=$(awk -v a="$a_us" -v b="$b_us" 'BEGIN { printf "%.4f", b / a }')
    ratios+=("$ratio")
    echo "| $r | $order | $a_us | $b_us | $ratio |"
done
python3 - "$SEED" "${ratios[@]}" <<'PY'
import random, statistics, sys
seed, xs = int(sys.argv[1]), [float(x) for x in sys.argv[2:]]
rng = random.Random(seed)
boots = sorted(statistics.median(rng.choices(xs, k=len(xs))) for _ in range(10000))
lo, hi = boots[249], boots[9749]
print(f"\nPaired B/A CPU per request: median {statistics.median(xs):.3f}, "
      f"bootstrap 95% interval [{lo:.3f}, {hi:.3f}] over {len(xs)} rounds "
      f"({'no difference shown' if lo <= 1.0 <= hi else 'B differs from A'}).")
PY
