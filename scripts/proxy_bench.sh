#!/usr/bin/env bash
# Reverse-proxy benchmark: coreloop --proxy against nginx proxy_pass, in
# front of the same upstream, in the same run.
#
#   scripts/proxy_bench.sh                      # DURATION=10s REPEAT=3
#   DURATION=5s REPEAT=1 scripts/proxy_bench.sh # quick look
#   CHECKS=0 scripts/proxy_bench.sh             # throughput table only
#   REPEAT=20 DURATION=3s WORKLOADS=keepalive CHECKS=0 scripts/proxy_bench.sh
#                       # many short rounds: on a noisy host, the paired
#                       # ratio's interval narrows faster than with long rounds
#
# Chain: wrk -> proxy -> upstream. The proxy under test runs one worker
# pinned to SERVER_CPU (default 0); wrk (one thread) and the upstream (nginx,
# one worker, `return 200` of a 20-byte body, keepalive_requests 10000000)
# share CLIENT_CPU (default 1): on this 2-core machine the client side is
# usually the bottleneck, so compare CPU per request, not req/s.
#
# Proxies: coreloop epoll and io_uring (`--proxy /p=http://UPSTREAM`), and
# nginx with proxy_pass, proxy_http_version 1.1, an empty Connection
# header, X-Forwarded-For/-Proto set (coreloop adds them too) and an
# upstream `keepalive 128` (>= the client concurrency). Workloads:
#   keepalive  wrk -c64, keep-alive clients
#   close      wrk -c64 with "Connection: close" (a new client connection
#              per request; upstream connections should still be reused)
# Rounds interleave the proxies (the order rotates each round). For each
# (workload, proxy) the script reports medians of req/s, the proxy's CPU
# time (utime+stime, /proc/PID/stat) per request, the ratio to nginx (of the
# medians, and the median of per-round ratios), and upstream connections
# opened per request (the upstream's stub_status "accepts" delta, minus the
# status requests themselves).
#
# With CHECKS=1 (default) two more runs follow, each on a fresh coreloop
# (epoll) proxy:
#   slow client  one client downloads a 10 MiB upstream body at 100 KiB/s
#                for SLOW_SECS (default 20) s; the proxy's RSS is sampled
#                every second and must stay within SLOW_RSS_KIB (default
#                2048) KiB of its value after the first second.
#   idle gaps    a second upstream closes keep-alive connections after
#                2 s (keepalive_timeout 2s) and logs each request's method;
#                a client sends a GET and a POST, then pauses 1.5-2.5 s,
#                for GAP_SECS (default 30) s, through coreloop with
#                --upstream-idle-timeout 10s, so the upstream is the side
#                that closes idle connections. Reports errors and whether
#                any POST reached the upstream twice.
#   restart      wrk -c64 for 8 s; at 3 s the upstream is stopped (SIGTERM) and
#                started again at once. Reports the non-2xx answers and
#                upstream connects during the run; connects must not exceed
#                the requests' concurrency (64) plus the per-core cap.
#
# Each measured run follows an unmeasured WARMUP (default 1s) of the same
# load, so a proxy that closed its idle upstream connections while the
# others ran (coreloop's --upstream-idle-timeout is 1 s) is counted in its
# steady state, not for the reconnects of every round (WARMUP=0: none).
#
# Environment: DURATION, REPEAT, WARMUP, WORKLOADS (default "keepalive close"), CHECKS, SLOW_SECS, SLOW_RSS_KIB, GAP_SECS,
# SERVER_CPU, CLIENT_CPU, BASE_PORT (default 19080; uses 5 ports), BIN
# (default target/release/coreloop, built if missing).
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10s}
REPEAT=${REPEAT:-3}
WARMUP=${WARMUP:-1s}
read -r -a WORKLOADS <<<"${WORKLOADS:-keepalive close}"
CHECKS=${CHECKS:-1}
SLOW_SECS=${SLOW_SECS:-20}
SLOW_RSS_KIB=${SLOW_RSS_KIB:-2048}
GAP_SECS=${GAP_SECS:-30}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
BASE_PORT=${BASE_PORT:-19080}
BIN=${BIN:-target/release/coreloop}
LOG_TAG=proxy-bench
TMP=$(mktemp -d)
PIDS=()
stop_pids() { printf '%s\n' "${PIDS[@]}" | tac; }
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

NGINX=$(command -v nginx || echo /usr/sbin/nginx)
if [[ ! -x $NGINX ]] || ! command -v wrk >/dev/null || ! command -v curl >/dev/null; then
    log "installing nginx-light, wrk and curl"
    SUDO=(); ((EUID == 0)) || SUDO=(sudo)
    "${SUDO[@]}" apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -qq nginx-light wrk curl >&2
    NGINX=$(command -v nginx || echo /usr/sbin/nginx)
fi
[[ -x $BIN ]] || cargo build --release >&2

UP=$BASE_PORT
declare -A PORT=([coreloop-epoll]=$((BASE_PORT + 1)) [coreloop-uring]=$((BASE_PORT + 2)) [nginx]=$((BASE_PORT + 3)))
PROXIES=(coreloop-epoll coreloop-uring nginx)
declare -A PID

# nginx workers run as an unprivileged user: the tree must be readable.
chmod 755 "$TMP"
mkdir -p "$TMP/www/p"
head -c $((10 << 20)) /dev/urandom >"$TMP/www/p/big.bin"
chmod -R a+rX "$TMP/www"

nginx_common() {
    cat <<EOF
worker_processes 1;
daemon off;
master_process on;
error_log $1/error.log warn;
pid $1/nginx.pid;
events { worker_connections 4096; }
EOF
}

start_upstream() {   # upstream nginx on CLIENT_CPU
    local dir=$TMP/upstream
    mkdir -p "$dir"
    { nginx_common "$dir"; cat <<EOF
http {
    access_log off;
    keepalive_requests 10000000;
    keepalive_timeout 60s;
    server {
        listen 127.0.0.1:$UP reuseport;
        location / { return 200 "hello from upstream\n"; }
        location = /p/big.bin { root $TMP/www; }
        location = /status { stub_status; }
    }
}
EOF
    } >"$dir/nginx.conf"
    taskset -c "$CLIENT_CPU" "$NGINX" -p "$dir/" -c "$dir/nginx.conf" -e "$dir/error.log" &
    UPSTREAM_PID=$!
    PIDS+=("$UPSTREAM_PID")
    wait_port "$UP"
}

start_proxy() {      # start_proxy NAME
    local name=$1 port=${PORT[$1]}
    case $name in
        coreloop-*)
            taskset -c "$SERVER_CPU" "$BIN" --workers 1 --cpus "$SERVER_CPU" --port "$port" \
                --backend "${name#coreloop-}" --no-files --log-level warn \
                --proxy "/p=http://127.0.0.1:$UP" >"$TMP/$name.log" 2>&1 &
            PID[$name]=$!
            ;;
        nginx)
            local dir=$TMP/nginx-proxy
            mkdir -p "$dir"
            { nginx_common "$dir"; cat <<EOF
http {
    access_log off;
    keepalive_requests 10000000;
    upstream up { server 127.0.0.1:$UP; keepalive 128; }
    server {
        listen 127.0.0.1:$port reuseport;
        location /p {
            proxy_pass http://up;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto \$scheme;
        }
    }
}
EOF
            } >"$dir/nginx.conf"
            taskset -c "$SERVER_CPU" "$NGINX" -p "$dir/" -c "$dir/nginx.conf" -e "$dir/error.log" &
            PID[$name]=$!
            ;;
    esac
    PIDS+=("${PID[$name]}")
    wait_port "$port"
    local got
    got=$(curl -s "http://127.0.0.1:$port/p/x")
    [[ $got == "hello from upstream" ]] || die "$name does not proxy: got '$got'"
}

# utime+stime in clock ticks of PID and its children threads/processes.
ticks() {
    local total=0 pid rest
    for pid in "$@" $(pgrep -P "$1" || true); do
        rest=$(sed 's/^.*) //' "/proc/$pid/stat" 2>/dev/null) || continue
        total=$((total + $(awk '{print $12 + $13}' <<<"$rest")))
    done
    echo "$total"
}

accepts() { curl -s "http://127.0.0.1:$UP/status" | awk 'NR == 3 {print $1}'; }
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR] = $1} END {print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }
# "median [lo, hi]": the median and its 95% bootstrap interval (2000
# resamples, fixed seed); just the median below 5 values.
median_ci() {
    printf '%s\n' "$@" | awk '
        function med(x, n,   i, j, t) {
            for (i = 2; i <= n; i++) { t = x[i]; for (j = i - 1; j > 0 && x[j] > t; j--) x[j + 1] = x[j]; x[j + 1] = t }
            return (n % 2) ? x[(n + 1) / 2] : (x[n / 2] + x[n / 2 + 1]) / 2
        }
        {v[NR] = $1}
        END {
            n = NR; for (i = 1; i <= n; i++) c[i] = v[i]; m = med(c, n)
            if (n < 5) { printf "%.3f", m; exit }
            srand(1)
            for (b = 1; b <= 2000; b++) { for (i = 1; i <= n; i++) c[i] = v[int(rand() * n) + 1]; s[b] = med(c, n) }
            med(s, 2000)
            printf "%.3f [%.3f, %.3f]", m, s[50], s[1951]
        }'
}
HZ=$(getconf CLK_TCK)

start_upstream
for p in "${PROXIES[@]}"; do start_proxy "$p"; done

declare -A RPS CPU CONNS RATIO
for ((round = 0; round < REPEAT; round++)); do
    for workload in "${WORKLOADS[@]}"; do
        extra=()
        [[ $workload == close ]] && extra=(-H "Connection: close")
        n=${#PROXIES[@]}
        for ((i = 0; i < n; i++)); do
            p=${PROXIES[$(((i + round) % n))]}
            if [[ ${WARMUP%s} != 0 ]]; then
                taskset -c "$CLIENT_CPU" wrk -t1 -c64 -d"$WARMUP" "${extra[@]}" "http://127.0.0.1:${PORT[$p]}/p/x" >/dev/null
            fi
            a0=$(accepts); c0=$(ticks "${PID[$p]}")
            out=$(taskset -c "$CLIENT_CPU" wrk -t1 -c64 -d"$DURATION" "${extra[@]}" "http://127.0.0.1:${PORT[$p]}/p/x")
            c1=$(ticks "${PID[$p]}"); a1=$(accepts)
            reqs=$(awk '/requests in/ {print $1}' <<<"$out")
            bad=$(awk '/Non-2xx/ {print $NF}' <<<"$out")
            [[ -n $bad ]] && log "warning: $p $workload: $bad non-2xx answers"
            cpu=$(awk -v c=$((c1 - c0)) -v r="$reqs" -v hz="$HZ" 'BEGIN {printf "%.2f", c / hz * 1e6 / r}')
            conns=$(awk -v a=$((a1 - a0 - 1)) -v r="$reqs" 'BEGIN {printf "%.5f", a / r}')
            rps=$(awk -v r="$reqs" -v d="${DURATION%s}" 'BEGIN {printf "%.0f", r / d}')
            RPS[$workload,$p]+="$rps "; CPU[$workload,$p]+="$cpu "; CONNS[$workload,$p]+="$conns "
            log "round $((round + 1)) $workload $p: $rps req/s, $cpu us/req, $conns upstream conns/req"
        done
        for p in coreloop-epoll coreloop-uring; do
            last=$(awk '{print $NF}' <<<"${CPU[$workload,$p]}")
            ng=$(awk '{print $NF}' <<<"${CPU[$workload,nginx]}")
            RATIO[$workload,$p]+="$(awk -v a="$last" -v b="$ng" 'BEGIN {printf "%.3f", a / b}') "
        done
    done
done

echo "## Reverse proxy: coreloop --proxy vs nginx proxy_pass"
echo
echo "\`scripts/proxy_bench.sh\` (DURATION=$DURATION REPEAT=$REPEAT WARMUP=$WARMUP), $(nproc) CPUs, $(uname -r). Proxy on CPU $SERVER_CPU, wrk -t1 -c64 and the upstream nginx on CPU $CLIENT_CPU (the client side saturates first: compare CPU per request). Medians of $REPEAT rounds."
echo
echo "| workload | proxy | req/s | CPU us/req | ratio to nginx (of medians) | ratio (median of rounds [95% interval]) | upstream conns/req |"
echo "|---|---|---|---|---|---|---|"
for workload in "${WORKLOADS[@]}"; do
    for p in "${PROXIES[@]}"; do
        # shellcheck disable=SC2086
        cm=$(median ${CPU[$workload,$p]})
        # shellcheck disable=SC2086
        nm=$(median ${CPU[$workload,nginx]})
        ratio=$(awk -v a="$cm" -v b="$nm" 'BEGIN {printf "%.2f", a / b}')
        paired=-
        # shellcheck disable=SC2086
        [[ $p != nginx ]] && paired=$(median_ci ${RATIO[$workload,$p]})
        # shellcheck disable=SC2086
        echo "| $workload | $p | $(median ${RPS[$workload,$p]}) | $cm | $ratio | $paired | $(median ${CONNS[$workload,$p]}) |"
    done
done

((CHECKS)) || exit 0
for p in "${PROXIES[@]}"; do kill_pid "${PID[$p]}"; done

echo
echo "### Slow client: 10 MiB at 100 KiB/s through coreloop (epoll)"
start_proxy coreloop-epoll
pid=${PID[coreloop-epoll]}
python3 - "${PORT[coreloop-epoll]}" "$SLOW_SECS" >"$TMP/slow.out" 2>&1 <<'EOF' &
import socket, sys, time
port, secs = int(sys.argv[1]), float(sys.argv[2])
s = socket.create_connection(("127.0.0.1", port))
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
s.sendall(b"GET /p/big.bin HTTP/1.1\r\nHost: x\r\n\r\n")
got, start = 0, time.time()
while time.time() - start < secs:
    got += len(s.recv(10240))
    time.sleep(0.1)
print(got)
EOF
reader=$!
PIDS+=("$reader")
sleep 1
base=$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status")
peak=$base
for ((t = 1; t < SLOW_SECS; t++)); do
    rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status")
    ((rss > peak)) && peak=$rss
    sleep 1
done
wait "$reader" || true
echo "RSS after 1 s: $base KiB; peak over ${SLOW_SECS} s: $peak KiB (growth $((peak - base)) KiB, limit $SLOW_RSS_KIB KiB); client read $(cat "$TMP/slow.out") bytes."
((peak - base <= SLOW_RSS_KIB)) && echo "Verdict: PASS" || echo "Verdict: FAIL"
kill_pid "$pid"

echo
echo "### Idle gaps: the upstream closes keep-alive connections after 2 s"
GAP_UP=$((BASE_PORT + 4))
gdir=$TMP/gap-upstream
mkdir -p "$gdir"
{ nginx_common "$gdir"; cat <<EOF
http {
    log_format m '\$request_method \$request_uri';
    access_log $gdir/access.log m;
    keepalive_timeout 2s;
    server {
        listen 127.0.0.1:$GAP_UP;
        location / { return 200 "ok\n"; }
    }
}
EOF
} >"$gdir/nginx.conf"
taskset -c "$CLIENT_CPU" "$NGINX" -p "$gdir/" -c "$gdir/nginx.conf" -e "$gdir/error.log" &
PIDS+=($!)
wait_port "$GAP_UP"
gport=$((BASE_PORT + 1))
taskset -c "$SERVER_CPU" "$BIN" --workers 1 --cpus "$SERVER_CPU" --port "$gport" --no-files \
    --log-level warn --upstream-idle-timeout 10s --proxy "/p=http://127.0.0.1:$GAP_UP" \
    >"$TMP/gap.log" 2>&1 &
gpid=$!
PIDS+=("$gpid")
wait_port "$gport"
: >"$gdir/access.log"
python3 - "$gport" "$GAP_SECS" >"$TMP/gap.out" <<'PYEOF'
import random, socket, sys, time
port, secs = int(sys.argv[1]), float(sys.argv[2])
random.seed(7)
sent = {"GET": 0, "POST": 0}
errors = 0
s = socket.create_connection(("127.0.0.1", port))
def exchange(req):
    s.sendall(req)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(4096)
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    fields = [l.split(b":", 1) for l in head.split(b"\r\n")[1:]]
    length = int(next(v for n, v in fields if n.strip().lower() == b"content-length"))
    while len(rest) < length:
        rest += s.recv(4096)
    return int(head.split(b" ")[1])
start, i = time.time(), 0
while time.time() - start < secs:
    i += 1
    for method, req in (("GET", b"GET /p/g%d HTTP/1.1\r\nHost: x\r\n\r\n" % i),
                        ("POST", b"POST /p/p%d HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi" % i)):
        sent[method] += 1
        if exchange(req) != 200:
            errors += 1
    time.sleep(random.uniform(1.5, 2.5))
print(sent["GET"], sent["POST"], errors)
PYEOF
read -r gets posts gap_errors <"$TMP/gap.out"
seen_posts=$(grep -c '^POST ' "$gdir/access.log" || true)
dup_posts=$(grep '^POST ' "$gdir/access.log" | sort | uniq -d | wc -l)
echo "Sent $gets GET and $posts POST over ${GAP_SECS} s with 1.5-2.5 s gaps: $gap_errors non-200; the upstream logged $seen_posts POSTs ($dup_posts sent twice)."
metrics=$(curl -s "http://127.0.0.1:$gport/metrics")
echo "Proxy: $(awk '/^coreloop_upstream_connects_total/ {print "connects " $2} /^coreloop_upstream_retries_total/ {print "retries " $2}' <<<"$metrics" | paste -sd, -)."
if ((gap_errors == 0 && dup_posts == 0 && seen_posts == posts)); then echo "Verdict: PASS"; else echo "Verdict: FAIL"; fi
kill_pid "$gpid"

echo
echo "### Upstream restarted mid-run (coreloop epoll, wrk -c64 for 8 s)"
start_proxy coreloop-epoll
port=${PORT[coreloop-epoll]}
connects() { curl -s "http://127.0.0.1:$port/metrics" | awk '/^coreloop_upstream_connects_total/ {s += $2} END {print s + 0}'; }
k0=$(connects)
taskset -c "$CLIENT_CPU" wrk -t1 -c64 -d8s "http://127.0.0.1:$port/p/x" >"$TMP/restart.out" &
wrk_pid=$!
sleep 3
kill_pid "$UPSTREAM_PID"
start_upstream
wait "$wrk_pid"
k1=$(connects)
reqs=$(awk '/requests in/ {print $1}' "$TMP/restart.out")
bad=$(awk '/Non-2xx/ {print $NF}' "$TMP/restart.out")
echo "Requests: $reqs; non-2xx: ${bad:-0}; upstream connects during the run: $((k1 - k0)); errors by cause:"
curl -s "http://127.0.0.1:$port/metrics" | awk '/^coreloop_upstream_errors_total/ && $2 > 0 {print "    " $0}'
