#!/usr/bin/env bash
# End-to-end benchmark: coreloop against nginx, same machine, same run.
#
#   scripts/bench.sh                                  # DURATION=10s REPEAT=3 BACKENDS=epoll
#   DURATION=5s REPEAT=1 scripts/bench.sh             # quick check
#   BACKENDS="epoll uring" scripts/bench.sh           # both coreloop backends and nginx
#   WORKLOADS="static4k static1m" BACKENDS="epoll uring" scripts/bench.sh
#                                                     # static files only
#
# Every server runs one worker pinned to SERVER_CPU (default 0); wrk runs one
# thread pinned to CLIENT_CPU (default 1). Workloads (the default runs the
# first four, all GET /plaintext; the static ones only when named in WORKLOADS):
#   keepalive  wrk -c64, keep-alive
#   pipeline   wrk -c64 with scripts/pipeline.lua (16 requests per write)
#   c1000      wrk -c1000, keep-alive
#   close      wrk -c64 with "Connection: close" (a new connection per request)
#   static4k   wrk -c64, keep-alive, GET /4k.bin: a 4096-byte file
#   static1m   wrk -c64, keep-alive, GET /1m.bin: a 1 MiB (1048576-byte) file
# The two files (random bytes) are written once per run into a directory
# under the run's temporary directory; coreloop serves it with --root (file
# bodies through sendfile(2) on epoll, ring reads on io_uring), nginx with
# `root` there, `sendfile on`, tcp_nopush off and an open_file_cache like
# coreloop's (NGINX_FILE_CACHE). Before measuring, every server must answer
# GET and HEAD of each selected file with 200 and the right Content-Length
# (and GET with the file's bytes), or the script stops. For these workloads
# the report adds MiB/s (wrk's Transfer/sec: heads and bodies).
# For each (workload, server) the script records req/s, p50/p99 latency,
# the server's CPU time (utime+stime from /proc/PID/stat) per completed
# request and wrk's (user+system), repeats everything REPEAT times (interleaving servers) and reports
# medians, with the CPU ratio of each coreloop backend to nginx and, when
# both run, io_uring / epoll (also paired per repetition, since the servers
# take turns within a repetition). Then it starts each server fresh, opens
# IDLE_CONNS idle keep-alive
# connections (scripts/idle_conns.py) and reports the RSS growth per
# connection. Last, it starts each server fresh once more, attaches
# `strace -c -f` to it and sends a fixed number of requests with
# scripts/fixed_load.py (keep-alive, pipelined, connection per request, all
# GET /plaintext, when WORKLOADS names any /plaintext workload; plus
# keep-alive GETs of each file of a static workload in WORKLOADS; 64
# connections), and reports syscalls per request, with a per-syscall
# breakdown per workload. Attaching to the running server (-p) leaves
# startup, the readiness probe and shutdown out of the count. strace sees
# io_uring_enter but not the operations inside the ring, and it slows the
# server enough to change how much each wake-up finds; so, when perf can
# count tracepoints, each server is started fresh once more and
# `perf stat -e raw_syscalls:sys_enter,io_uring:...` counts (untraced: counters
# only) syscalls, io_uring_enter / epoll_wait calls, io_uring SQEs submitted
# and CQEs posted, and context switches per request during PERF_SECS of wrk
# load of each workload. The markdown report goes to stdout (and RAW_DIR/report.md);
# progress goes to stderr; raw wrk output and server logs stay in RAW_DIR.
#
# Environment:
#   DURATION     wrk duration per measurement          (default 10s)
#   REPEAT       measurements per (workload, server)   (default 3; medians reported)
#   BACKENDS     coreloop --backend values, space-separated (default "epoll")
#   WORKLOADS    subset of "keepalive pipeline c1000 close static4k static1m"
#                (default "keepalive pipeline c1000 close")
#   BASE_PORT    first port; servers use BASE_PORT, BASE_PORT+1, ... (default 18080)
#   IDLE_CONNS   idle connections for the RSS test      (default 10000; 0 skips it)
#   SYSCALLS     1: measure syscalls per request with strace; 0 skips it (default 1)
#   SYSCALL_REQS requests per traced keep-alive / pipelined run (default 20000)
#   SYSCALL_CLOSE_REQS requests (= connections) per traced close run (default 5000)
#   SYSCALL_1M_REQS requests per traced static1m run (default 1000; static4k
#                uses SYSCALL_REQS)
#   NGINX_FILE_CACHE 1: nginx gets `open_file_cache max=1024;
#                open_file_cache_valid 1s;` (coreloop's --file-cache default:
#                1024 open files per core, revalidated every second); 0: nginx
#                opens and fstats the file for every request (default 1)
#   PERFSTAT     1: count syscalls / ring operations per request with perf
#                stat tracepoints under wrk load; 0 skips it; default: 1 when
#                `perf stat -e raw_syscalls:sys_enter` works
#   PERF_SECS    seconds of wrk load per perf stat count (default 5)
#   QUIET_PCT    before each measurement, wait until the whole machine is
#                below this % of one CPU busy over 1 s   (default 10)
#   QUIET_WAIT   ... for at most this many seconds, then go on (default 600)
#   FOREIGN_MAX  a measurement during which processes other than the server
#                and wrk used more than this % of one CPU is discarded and
#                repeated, up to ATTEMPTS times in all   (default 10)
#   ATTEMPTS     (default 4); the last attempt is kept and flagged
#   SERVER_CPU   CPU for the servers                    (default 0)
#   CLIENT_CPU   CPU for wrk                            (default 1)
#   RAW_DIR      where raw output goes  (default target/bench-e2e/<timestamp>)
#   SKIP_BUILD=1 do not run cargo build --release
#   COREL_ARGS   extra flags for every coreloop start (a knob experiment), e.g.
#                COREL_ARGS="--ring-batch 8 --ring-batch-wait 50us"; shown in the report
#   ACCESS_LOG   1: both servers write an access log to a file under the
#                run's temporary directory (coreloop --access-log FILE, the
#                combined format; nginx `access_log FILE combined
#                buffer=64k`); 0: both off (default 0)
#   BENCH_REV    a commit (e.g. HEAD) to benchmark instead of the work tree:
#                its `git archive` is built in target/bench-rev (read-only for
#                the repository; uncommitted changes are left out)
set -euo pipefail

DURATION=${DURATION:-10s}
REPEAT=${REPEAT:-3}
BACKENDS=${BACKENDS:-epoll}
# Extra coreloop flags for a knob experiment, e.g. COREL_ARGS="--ring-batch 8".
read -r -a COREL_EXTRA <<<"${COREL_ARGS:-}"
DEFAULT_WORKLOADS="keepalive pipeline c1000 close"
WORKLOADS_GIVEN=${WORKLOADS:+1}
WORKLOADS=${WORKLOADS:-$DEFAULT_WORKLOADS}
BASE_PORT=${BASE_PORT:-18080}
IDLE_CONNS=${IDLE_CONNS:-10000}
SERVER_CPU=${SERVER_CPU:-0}
QUIET_PCT=${QUIET_PCT:-10}
QUIET_WAIT=${QUIET_WAIT:-600}
FOREIGN_MAX=${FOREIGN_MAX:-10}
ATTEMPTS=${ATTEMPTS:-4}
CLIENT_CPU=${CLIENT_CPU:-1}
SKIP_BUILD=${SKIP_BUILD:-0}
BENCH_REV=${BENCH_REV:-}
SYSCALLS=${SYSCALLS:-1}
SYSCALL_REQS=${SYSCALL_REQS:-20000}
SYSCALL_CLOSE_REQS=${SYSCALL_CLOSE_REQS:-5000}
SYSCALL_1M_REQS=${SYSCALL_1M_REQS:-1000}
NGINX_FILE_CACHE=${NGINX_FILE_CACHE:-1}
PERFSTAT=${PERFSTAT:-auto}
PERF_SECS=${PERF_SECS:-5}
PIPELINE_DEPTH=16
MAX_CONNS=20000
PATH_PLAINTEXT=/plaintext

# The static-file workloads: the file each one GETs, and its size in bytes.
declare -A STATIC_FILE=([static4k]=4k.bin [static1m]=1m.bin)
declare -A STATIC_SIZE=([static4k]=4096 [static1m]=1048576)
PLAIN_SELECTED=""    # the /plaintext workloads in WORKLOADS
STATIC_SELECTED=""   # the static workloads in WORKLOADS
for wl in $WORKLOADS; do
    case $wl in
        keepalive | pipeline | c1000 | close) PLAIN_SELECTED+="$wl " ;;
        static4k | static1m) STATIC_SELECTED+="$wl " ;;
        *) printf 'bench: WORKLOADS: unknown workload %s (keepalive pipeline c1000 close static4k static1m)\n' "$wl" >&2; exit 1 ;;
    esac
done
[[ -n $PLAIN_SELECTED$STATIC_SELECTED ]] || { echo "bench: WORKLOADS is empty" >&2; exit 1; }
# Syscalls under strace: the three /plaintext modes as before when any
# /plaintext workload runs, and a keep-alive run per selected static file.
SYSCALL_WORKLOADS="${PLAIN_SELECTED:+keepalive pipeline close }$STATIC_SELECTED"

CMDLINE="${ACCESS_LOG:+ACCESS_LOG=$ACCESS_LOG }${BENCH_REV:+BENCH_REV=$BENCH_REV }${WORKLOADS_GIVEN:+WORKLOADS=\"$WORKLOADS\" }DURATION=$DURATION REPEAT=$REPEAT BACKENDS=\"$BACKENDS\" $0${*:+ $*}"

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
RAW_DIR=${RAW_DIR:-$ROOT/target/bench-e2e/$STAMP}
mkdir -p "$RAW_DIR"
TMP=$(mktemp -d "${TMPDIR:-/tmp}/coreloop-bench.XXXXXX")
ACCESS_LOG=${ACCESS_LOG:-0}
NGINX_ACCESS_LOG="access_log off;"
if [[ $ACCESS_LOG == 1 ]]; then
    COREL_EXTRA+=(--access-log "$TMP/coreloop-access.log")
    NGINX_ACCESS_LOG="access_log $TMP/nginx-access.log combined buffer=64k;"
fi

# ---------------------------------------------------------------- cleanup ---

SERVER_PIDS=()   # every server process we started (coreloop, nginx master)
EXTRA_PIDS=()    # nginx workers (in case the master dies first), idle client
stop_pids() { echo "${EXTRA_PIDS[@]}" "${SERVER_PIDS[@]}"; }
LOG_TAG=bench
# shellcheck source=scripts/lib.sh
source "$ROOT/scripts/lib.sh"

# ------------------------------------------------------------ environment ---

SUDO=()
if [[ $(id -u) -ne 0 ]]; then SUDO=(sudo); fi

NGINX=$(command -v nginx || true)
[[ -z $NGINX && -x /usr/sbin/nginx ]] && NGINX=/usr/sbin/nginx
if [[ -z $NGINX ]] || ! command -v wrk >/dev/null; then
    log "installing nginx-light and wrk"
    "${SUDO[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -qq nginx-light wrk >&2
    NGINX=$(command -v nginx || echo /usr/sbin/nginx)
fi
for tool in wrk taskset python3 curl getconf; do
    command -v "$tool" >/dev/null || die "$tool is required"
done
[[ -x $NGINX ]] || die "nginx not found after install"
if [[ $SYSCALLS == 1 ]] && ! command -v strace >/dev/null; then
    log "installing strace"
    DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -qq strace >&2 || true
    command -v strace >/dev/null || die "strace is required (or set SYSCALLS=0)"
fi

# perf stat with tracepoints (no hardware counters needed, so it works in
# most VMs). Keep only the events this kernel has.
# Failed calls are counted at the syscall's exit with a filter on its result.
PERF_EVENTS=()   # event names counted
PERF_ARGS=()     # perf stat arguments: -e EVENT [--filter F] ...
if [[ $PERFSTAT != 0 ]]; then
    if command -v perf >/dev/null && perf stat -e raw_syscalls:sys_enter true >/dev/null 2>&1; then
        for ev in raw_syscalls:sys_enter syscalls:sys_enter_epoll_wait syscalls:sys_enter_io_uring_enter \
            io_uring:io_uring_submit_req io_uring:io_uring_complete context-switches task-clock \
            syscalls:sys_enter_accept4 syscalls:sys_exit_accept4 syscalls:sys_enter_recvfrom \
            syscalls:sys_exit_recvfrom syscalls:sys_enter_sendto syscalls:sys_enter_writev \
            syscalls:sys_enter_epoll_ctl syscalls:sys_enter_close \
            ${STATIC_SELECTED:+syscalls:sys_enter_sendfile64 syscalls:sys_enter_openat}; do
            filter=()
            [[ $ev == syscalls:sys_exit_* ]] && filter=(--filter 'ret < 0')
            if perf stat -e "$ev" "${filter[@]}" true >/dev/null 2>&1; then
                PERF_EVENTS+=("$ev")
                PERF_ARGS+=(-e "$ev" "${filter[@]}")
            fi
        done
        PERFSTAT=1
    elif [[ $PERFSTAT == 1 ]]; then
        die "PERFSTAT=1 but \`perf stat -e raw_syscalls:sys_enter true\` fails"
    else
        log "perf cannot count tracepoints here; skipping the perf stat counts"
        PERFSTAT=0
    fi
fi

# The package's postinst may have started a system nginx; it does not matter
# (it listens on :80, we use BASE_PORT...), but it must not share our CPU.
if pgrep -x nginx >/dev/null 2>&1; then
    log "warning: an nginx we did not start is running (pids: $(pgrep -x nginx | tr '\n' ' '))"
fi

if [[ -n $BENCH_REV ]]; then
    COMMIT=$(git -C "$ROOT" rev-parse --short "$BENCH_REV^{commit}" 2>/dev/null) ||
        die "BENCH_REV=$BENCH_REV is not a commit"
    DIRTY=""
    REV_DIR=$ROOT/target/bench-rev
    # Same commit -> same file mtimes from git archive -> cargo reuses its build.
    rm -rf "$REV_DIR/src"
    mkdir -p "$REV_DIR/src"
    git -C "$ROOT" archive "$COMMIT" | tar -x -C "$REV_DIR/src"
    log "cargo build --release of $BENCH_REV ($COMMIT) in $REV_DIR"
    CARGO_TARGET_DIR="$REV_DIR/target" cargo build --release --locked \
        --manifest-path "$REV_DIR/src/Cargo.toml" >&2
    COREL_SRC=$REV_DIR/target/release/coreloop
else
    COMMIT=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
    DIRTY=""
    if [[ -n $(git -C "$ROOT" --no-optional-locks status --porcelain 2>/dev/null || true) ]]; then DIRTY="+dirty"; fi
    if [[ $SKIP_BUILD != 1 ]]; then
        log "cargo build --release"
        cargo build --release >&2
    fi
    COREL_SRC=$ROOT/target/release/coreloop
fi
[[ -x $COREL_SRC ]] || die "$COREL_SRC missing"
# Run a private copy: a concurrent cargo build must not swap the binary mid-run.
COREL="$TMP/coreloop"
cp "$COREL_SRC" "$COREL"
COREL_SHA=$(sha256sum "$COREL" | cut -c1-12)

# The files of the static workloads, random bytes, written once per run.
# Both servers serve STATIC_DIR (coreloop with --root, nginx with root), so
# the same URLs work on both; /plaintext stays a built-in route / location.
STATIC_DIR=$TMP/static
mkdir -p "$STATIC_DIR"
for wl in "${!STATIC_FILE[@]}"; do
    head -c "${STATIC_SIZE[$wl]}" /dev/urandom >"$STATIC_DIR/${STATIC_FILE[$wl]}"
    [[ $(stat -c %s "$STATIC_DIR/${STATIC_FILE[$wl]}") == "${STATIC_SIZE[$wl]}" ]] ||
        die "could not write $STATIC_DIR/${STATIC_FILE[$wl]}"
done
# A binary from before static files (BENCH_REV) has no --root: the
# /plaintext workloads still run on it, the static ones cannot.
COREL_ROOT=()
if "$COREL" --help 2>/dev/null | grep -q -- '--root'; then
    COREL_ROOT=(--root "$STATIC_DIR")
elif [[ -n $STATIC_SELECTED ]]; then
    die "WORKLOADS has static workloads ($STATIC_SELECTED) but $COREL_SRC has no --root (BENCH_REV before static files?)"
fi

CLK_TCK=$(getconf CLK_TCK)
NPROC=$(nproc)
((NPROC >= 2)) || log "warning: only $NPROC CPU(s); server and wrk will share a core"

# ---------------------------------------------------------------- helpers ---

# Sum of utime+stime (clock ticks) of the given pids. /proc/PID/stat at the
# process level covers all threads. Field 2 (comm) may hold spaces, so cut at
# the last ')': utime and stime are then fields 12 and 13.
cpu_ticks() {
    local pid total=0 rest
    for pid in "$@"; do
        rest=$(sed 's/^.*) //' "/proc/$pid/stat")
        total=$((total + $(awk '{print $12 + $13}' <<<"$rest")))
    done
    echo "$total"
}

# Busy clock ticks of the whole machine: user+nice+system+irq+softirq+steal
# from the aggregate "cpu" line of /proc/stat.
busy_ticks() { awk '$1 == "cpu" {print $2 + $3 + $4 + $7 + $8 + $9; exit}' /proc/stat; }

# wait_quiet: the benchmark shares the machine (builds, tests). Wait until
# the machine is quiet, at most QUIET_WAIT seconds; then note it and go on.
wait_quiet() {
    local b0 b1 pct waited=0
    while :; do
        b0=$(busy_ticks)
        sleep 1
        b1=$(busy_ticks)
        pct=$(((b1 - b0) * 100 / CLK_TCK))
        ((pct <= QUIET_PCT)) && return 0
        if ((waited % 30 == 0)); then
            log "machine busy ($pct% of a CPU, not us): $(ps -eo pcpu=,comm= --sort=-pcpu | head -n 3 | awk '{printf "%s %s%%; ", $2, $1}')waiting"
        fi
        waited=$((waited + 1))
        if ((waited >= QUIET_WAIT)); then
            PROBLEMS+=("machine still busy ($pct% of a CPU) after waiting ${QUIET_WAIT}s; measured anyway")
            return 0
        fi
    done
}

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

wait_ready() {   # wait_ready PORT PID NAME: until GET /plaintext answers 200
    local port=$1 pid=$2 name=$3 i
    for ((i = 0; i < 100; i++)); do
        if ! kill -0 "$pid" 2>/dev/null; then
            log "$name (pid $pid) exited during startup; see $RAW_DIR"
            return 1
        fi
        if [[ $(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port$PATH_PLAINTEXT" || true) == 200 ]]; then
            return 0
        fi
        sleep 0.1
    done
    die "$name did not answer on port $port within 10 s"
}

path_of() {          # path_of WORKLOAD: the path its requests GET
    if [[ -n ${STATIC_FILE[$1]:-} ]]; then echo "/${STATIC_FILE[$1]}"; else echo "$PATH_PLAINTEXT"; fi
}

# check_static PORT NAME: the server must answer GET and HEAD of the file of
# every selected static workload with 200 and the file's Content-Length, and
# GET with the file's bytes; stop the run otherwise.
check_static() {
    local port=$1 name=$2 wl url want code len got hdr="$TMP/check-head" body="$TMP/check-body"
    for wl in $STATIC_SELECTED; do
        url="http://127.0.0.1:$port$(path_of "$wl")"
        want=${STATIC_SIZE[$wl]}
        code=$(curl -s -D "$hdr" -o "$body" -w '%{http_code}' "$url" || true)
        len=$(awk -F': *' 'tolower($1) == "content-length" {sub(/\r$/, "", $2); print $2}' "$hdr")
        got=$(stat -c %s "$body" 2>/dev/null || echo 0)
        if [[ $code != 200 || $len != "$want" || $got != "$want" ]] || ! cmp -s "$body" "$STATIC_DIR/${STATIC_FILE[$wl]}"; then
            die "$name: GET $url answered status '$code', Content-Length '$len', $got body bytes (want 200, $want, $want bytes equal to the file)"
        fi
        code=$(curl -s -I -D "$hdr" -o /dev/null -w '%{http_code}' "$url" || true)
        len=$(awk -F': *' 'tolower($1) == "content-length" {sub(/\r$/, "", $2); print $2}' "$hdr")
        if [[ $code != 200 || $len != "$want" ]]; then
            die "$name: HEAD $url answered status '$code', Content-Length '$len' (want 200, $want)"
        fi
    done
    rm -f "$hdr" "$body"
}

# Globals set by start_server: SPID (pid to signal), MPIDS (pids whose CPU
# time counts), WPID (pid whose RSS counts: the process holding connections).
start_coreloop() {   # start_coreloop BACKEND PORT LOGFILE
    local backend=$1 port=$2 logf=$3
    taskset -c "$SERVER_CPU" "$COREL" --workers 1 --cpus "$SERVER_CPU" --port "$port" \
        --backend "$backend" --log-level warn --max-conns "$MAX_CONNS" \
        --idle-timeout 120s "${COREL_ROOT[@]}" "${COREL_EXTRA[@]}" >>"$logf" 2>&1 &
    SPID=$!
    SERVER_PIDS+=("$SPID")
    if ! wait_ready "$port" "$SPID" "coreloop ($backend)"; then
        wait "$SPID" 2>/dev/null || true
        die "coreloop ($backend) failed to start: $(tail -n 5 "$logf")"
    fi
    check_static "$port" "coreloop ($backend)"
    MPIDS=("$SPID")
    WPID=$SPID
}

nginx_conf() {       # nginx_conf DIR PORT: write DIR/nginx.conf
    local dir=$1 port=$2 mask user_line="" file_cache=""
    mkdir -p "$dir"
    # worker_cpu_affinity wants a bit mask, highest CPU first.
    mask=$(python3 -c "import sys; print(format(1 << int(sys.argv[1]), 'b').zfill(4))" "$SERVER_CPU")
    if [[ $(id -u) -eq 0 ]]; then
        # As root the master would switch workers to "nobody"; keep our user.
        user_line="user $(id -un) $(id -gn);"
    fi
    if [[ $NGINX_FILE_CACHE == 1 ]]; then
        file_cache="open_file_cache max=1024;
    open_file_cache_valid 1s;"
    fi
    cat >"$dir/nginx.conf" <<EOF
# Generated by scripts/bench.sh
$user_line
worker_processes 1;
worker_cpu_affinity $mask;
worker_rlimit_nofile $MAX_CONNS;
daemon off;
master_process on;
pid $dir/nginx.pid;
error_log $dir/error.log warn;

events {
    worker_connections $MAX_CONNS;
    use epoll;
}

http {
    $NGINX_ACCESS_LOG
    client_body_temp_path $dir/client_body;
    proxy_temp_path $dir/proxy;
    fastcgi_temp_path $dir/fastcgi;
    uwsgi_temp_path $dir/uwsgi;
    scgi_temp_path $dir/scgi;
    keepalive_requests 10000000;
    keepalive_timeout 120s;
    # Static workloads: file bodies straight from the page cache, as
    # coreloop's epoll backend sends them; no TCP_CORK (coreloop sets none).
    sendfile on;
    tcp_nopush off;
    $file_cache

    server {
        listen 127.0.0.1:$port backlog=1024;
        # Any other path: a file under the static workloads' directory.
        root $STATIC_DIR;
        default_type application/octet-stream;
        location = /plaintext {
            default_type text/plain;
            return 200 "Hello, World!";
        }
    }
}
EOF
}

start_nginx() {      # start_nginx PORT LOGFILE
    local port=$1 logf=$2 dir i kids=""
    dir="$TMP/nginx-$port-$RANDOM"
    nginx_conf "$dir" "$port"
    cp "$dir/nginx.conf" "$RAW_DIR/nginx.conf"
    taskset -c "$SERVER_CPU" "$NGINX" -p "$dir/" -c "$dir/nginx.conf" -e "$dir/error.log" \
        >>"$logf" 2>&1 &
    SPID=$!
    SERVER_PIDS+=("$SPID")
    wait_ready "$port" "$SPID" nginx || die "nginx failed to start: $(tail -n 5 "$logf" "$dir/error.log" 2>/dev/null)"
    check_static "$port" nginx
    for ((i = 0; i < 50; i++)); do
        kids=$(cat "/proc/$SPID/task/$SPID/children" 2>/dev/null || pgrep -P "$SPID" || true)
        [[ -n ${kids// /} ]] && break
        sleep 0.1
    done
    read -r -a kids_arr <<<"$kids"
    ((${#kids_arr[@]} >= 1)) || die "nginx worker not found"
    EXTRA_PIDS+=("${kids_arr[@]}")
    MPIDS=("$SPID" "${kids_arr[@]}")
    WPID=${kids_arr[0]}
    NGINX_DIRS[$SPID]=$dir
}

stop_server() {      # stop_server PID NAME: SIGTERM, wait, report exit status
    local pid=$1 name=$2 status=0
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || status=$?
    log "$name (pid $pid) exited with status $status after SIGTERM"
    STOPS=$((STOPS + 1))
    ((status == 0)) || EXIT_NOTES+=("$name exited with status $status after SIGTERM")
    if [[ -n ${NGINX_DIRS[$pid]:-} && -s ${NGINX_DIRS[$pid]}/error.log ]]; then
        cat "${NGINX_DIRS[$pid]}/error.log" >>"$RAW_DIR/nginx-error.log"
    fi
    local p keep=()
    for p in "${SERVER_PIDS[@]}"; do [[ $p == "$pid" ]] || keep+=("$p"); done
    SERVER_PIDS=("${keep[@]}")
}

# wrk latency "1.23ms" / "456.78us" / "1.02s" / "2.00m" -> microseconds
to_us() {
    awk -v v="$1" 'BEGIN {
        n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
        if (u == "us") m = 1; else if (u == "ms") m = 1000;
        else if (u == "s") m = 1000000; else if (u == "m") m = 60000000;
        else if (u == "h") m = 3600000000; else m = -1
        if (m < 0) print "nan"; else printf "%.1f\n", n * m }'
}

# wrk Transfer/sec "1.23GB" / "456.78KB" / "12.00B" (binary units) -> bytes/s
to_bytes() {
    awk -v v="$1" 'BEGIN {
        n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
        if (u == "B") m = 1; else if (u == "KB") m = 1024; else if (u == "MB") m = 1048576;
        else if (u == "GB") m = 1073741824; else if (u == "TB") m = 1099511627776; else m = -1
        if (m < 0) print "nan"; else printf "%.0f\n", n * m }'
}

fmt_mib() {          # bytes/s -> MiB/s, "n/a" if unknown
    awk -v v="$1" 'BEGIN { if (v == "nan" || v == "") print "n/a"; else printf "%.1f\n", v / 1048576 }'
}

median() {           # median N1 N2 ...
    printf '%s\n' "$@" | sort -g | awk '{a[NR] = $1} END {
        if (NR == 0) { print "nan"; exit }
        if (NR % 2) print a[(NR + 1) / 2]; else printf "%.6g\n", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}

wrk_args() {         # wrk_args WORKLOAD URL -> one argument per line
    local wl=$1 url=$2
    case $wl in
        keepalive) printf '%s\n' -t1 -c64 "-d$DURATION" --latency "$url" ;;
        pipeline) printf '%s\n' -t1 -c64 "-d$DURATION" --latency -s "$ROOT/scripts/pipeline.lua" "$url" -- "$PIPELINE_DEPTH" ;;
        c1000) printf '%s\n' -t1 -c1000 "-d$DURATION" --latency "$url" ;;
        close) printf '%s\n' -t1 -c64 "-d$DURATION" --latency -H "Connection: close" "$url" ;;
        static4k | static1m) printf '%s\n' -t1 -c64 "-d$DURATION" --latency "$url" ;;
        *) die "unknown workload $wl" ;;
    esac
}

conns_of() {
    case $1 in c1000) echo 1000 ;; *) echo 64 ;; esac
}

declare -A RPS P50 P99 CPU CPU_REP WCPU REQS XFER PORT_OF LABEL DEAD NGINX_DIRS FOREIGN

server_died() {      # server_died SERVER MESSAGE: record how it ended
    local srv=$1 msg=$2 pid status=0
    pid=${SRV_SPID[$srv]}
    wait "$pid" 2>/dev/null || status=$?
    if ((status > 128)); then
        msg+=" (killed by signal $((status - 128)): $(kill -l $((status - 128)) 2>/dev/null || echo '?'))"
    else
        msg+=" (exit status $status$( ((status == 0)) && echo ': a clean exit, e.g. after a SIGTERM we did not send'))"
    fi
    PROBLEMS+=("$msg; server log in $RAW_DIR/$srv.log")
    log "$msg"
    DEAD[$srv]=1
}
PROBLEMS=()
EXIT_NOTES=()
STOPS=0
DISCARDED=0

# run_one WORKLOAD SERVER REP ATTEMPT: one wrk measurement against a running
# server. Returns 2 (recording nothing) when other processes used more than
# FOREIGN_MAX% of a CPU and attempts remain.
run_one() {
    local wl=$1 srv=$2 rep=$3 attempt=$4 port=${PORT_OF[$2]} url out t0 t1 reqs rps p50 p99 cpu xfer
    local -a args pids
    url="http://127.0.0.1:$port$(path_of "$wl")"
    mapfile -t args < <(wrk_args "$wl" "$url")
    read -r -a pids <<<"${SRV_MPIDS[$srv]}"
    out="$RAW_DIR/wrk-$wl-$srv-$rep.txt"
    ((attempt == 1)) || out="$RAW_DIR/wrk-$wl-$srv-$rep-attempt$attempt.txt"
    printf '# taskset -c %s wrk %s\n' "$CLIENT_CPU" "${args[*]@Q}" >"$out"
    if ! kill -0 "${pids[0]}" 2>/dev/null; then
        server_died "$srv" "$wl/$srv rep $rep: SERVER DIED before the run"
        return 0
    fi
    local b0 b1 e0 e1 wrk_cpu foreign TIMEFORMAT='%U %S'
    b0=$(busy_ticks)
    e0=$EPOCHREALTIME
    t0=$(cpu_ticks "${pids[@]}")
    { time taskset -c "$CLIENT_CPU" wrk "${args[@]}" >>"$out" 2>&1 ||
        PROBLEMS+=("$wl/$srv rep $rep: wrk exited non-zero; see $out"); } 2>"$TMP/wrk-time"
    if ! kill -0 "${pids[0]}" 2>/dev/null; then
        server_died "$srv" "$wl/$srv rep $rep: SERVER DIED during the run; wrk output in $out"
        return 0
    fi
    t1=$(cpu_ticks "${pids[@]}")
    b1=$(busy_ticks)
    e1=$EPOCHREALTIME
    # CPU used by neither the server nor wrk during the run, in % of one CPU.
    wrk_cpu=$(awk '{print $1 + $2}' "$TMP/wrk-time")
    foreign=$(awk -v b=$((b1 - b0)) -v s=$((t1 - t0)) -v w="$wrk_cpu" -v hz="$CLK_TCK" \
        -v e="$(awk -v a="$e0" -v b="$e1" 'BEGIN {print b - a}')" \
        'BEGIN {f = ((b - s) / hz - w) / e * 100; printf "%.0f", f < 0 ? 0 : f}')
    if ((foreign > FOREIGN_MAX)); then
        if ((attempt < ATTEMPTS)); then
            log "$wl $srv rep $rep attempt $attempt: discarded, other processes used $foreign% of a CPU ($(awk '/^Requests\/sec:/ {print $2}' "$out") req/s, CPU $(awk -v d=$((t1 - t0)) -v hz="$CLK_TCK" -v n="$(awk '/ requests in / {print $1; exit}' "$out")" 'BEGIN {if (n > 0) printf "%.2f", d * 1e6 / hz / n}')us/req)"
            DISCARDED=$((DISCARDED + 1))
            return 2
        fi
        PROBLEMS+=("$wl/$srv rep $rep: other processes used $foreign% of a CPU during the run (threshold $FOREIGN_MAX%), still after $ATTEMPTS attempts; kept")
    fi
    FOREIGN[$wl|$srv]+="$foreign "
    reqs=$(awk '/ requests in / {print $1; exit}' "$out")
    rps=$(awk '/^Requests\/sec:/ {print $2; exit}' "$out")
    p50=$(to_us "$(awk '$1 == "50%" {print $2; exit}' "$out")")
    p99=$(to_us "$(awk '$1 == "99%" {print $2; exit}' "$out")")
    xfer=$(to_bytes "$(awk '/^Transfer\/sec:/ {print $2; exit}' "$out")")
    if [[ -z $reqs || -z $rps || $reqs == 0 ]]; then
        PROBLEMS+=("$wl/$srv rep $rep: no requests completed; see $out")
        return 0
    fi
    if grep -qE '^ *(Socket errors|Non-2xx)' "$out"; then
        PROBLEMS+=("$wl/$srv rep $rep: $(grep -E '^ *(Socket errors|Non-2xx)' "$out" | sed 's/^ *//' | paste -sd ';' -) ($reqs requests; $out)")
    fi
    cpu=$(awk -v d=$((t1 - t0)) -v hz="$CLK_TCK" -v n="$reqs" 'BEGIN {printf "%.4f", d * 1e6 / hz / n}')
    RPS[$wl|$srv]+="$rps "
    P50[$wl|$srv]+="$p50 "
    P99[$wl|$srv]+="$p99 "
    CPU[$wl|$srv]+="$cpu "
    CPU_REP[$wl|$srv|$rep]=$cpu
    WCPU[$wl|$srv]+="$(awk -v w="$wrk_cpu" -v n="$reqs" 'BEGIN {printf "%.4f", w * 1e6 / n}') "
    REQS[$wl|$srv]+="$reqs "
    XFER[$wl|$srv]+="$xfer "
    log "$wl $srv rep $rep: $rps req/s ($(fmt_mib "$xfer") MiB/s), p50 ${p50}us, p99 ${p99}us, CPU ${cpu}us/req ($((t1 - t0)) ticks, $reqs requests; other processes ${foreign}% of a CPU)"
}

fmt_lat() {          # microseconds -> "123 us" / "1.23 ms"
    awk -v v="$1" 'BEGIN { if (v == "nan" || v == "") print "n/a";
        else if (v < 1000) printf "%.0f us\n", v; else printf "%.2f ms\n", v / 1000 }'
}

# ---------------------------------------------------------------- servers ---

SERVERS=(nginx)
for b in $BACKENDS; do
    case $b in epoll | uring) ;; *) die "BACKENDS: unknown backend '$b' (epoll, uring)" ;; esac
    [[ " ${SERVERS[*]} " == *" coreloop-$b "* ]] || SERVERS+=("coreloop-$b")
done
HAVE_UE=0
if [[ " ${SERVERS[*]} " == *" coreloop-epoll "* && " ${SERVERS[*]} " == *" coreloop-uring "* ]]; then HAVE_UE=1; fi
declare -A SRV_MPIDS SRV_SPID
port=$BASE_PORT
for srv in "${SERVERS[@]}"; do
    PORT_OF[$srv]=$port
    port=$((port + 1))
    case $srv in
        nginx) LABEL[$srv]="nginx $("$NGINX" -v 2>&1 | sed 's|.*nginx/||')" ;;
        coreloop-*) LABEL[$srv]="coreloop (${srv#coreloop-})" ;;
    esac
done

start_server() {     # start_server SERVER: start and fill SRV_* globals
    local srv=$1 logf="$RAW_DIR/$1.log"
    case $srv in
        nginx) start_nginx "${PORT_OF[$srv]}" "$logf" ;;
        coreloop-*) start_coreloop "${srv#coreloop-}" "${PORT_OF[$srv]}" "$logf" ;;
    esac
    SRV_SPID[$srv]=$SPID
    SRV_MPIDS[$srv]="${MPIDS[*]}"
    SRV_WPID=$WPID
}

log "raw output: $RAW_DIR"

# How each coreloop backend sets itself up (for io_uring: the ring flags the
# kernel accepted). The measured runs log at warn, which hides these info
# lines, so start each backend once at info level and keep its startup lines.
SETUP_NOTES=()
for srv in "${SERVERS[@]}"; do
    [[ $srv == coreloop-* ]] || continue
    logf="$RAW_DIR/setup-$srv.log"
    taskset -c "$SERVER_CPU" "$COREL" --workers 1 --cpus "$SERVER_CPU" --port "${PORT_OF[$srv]}" \
        --backend "${srv#coreloop-}" --log-level info --max-conns "$MAX_CONNS" "${COREL_ROOT[@]}" "${COREL_EXTRA[@]}" >"$logf" 2>&1 &
    SPID=$!
    SERVER_PIDS+=("$SPID")
    wait_ready "${PORT_OF[$srv]}" "$SPID" "${LABEL[$srv]}" || die "${LABEL[$srv]} failed to start: $(tail -n 5 "$logf")"
    stop_server "$SPID" "${LABEL[$srv]} (setup probe)"
    note=$(grep -E 'backend|ring with flags|falling back' "$logf" | sed -E 's/^.*(core [0-9]+: )/\1/' | paste -sd ';' -)
    # The uring loop logs its ring flags only after a fallback.
    if [[ $srv == coreloop-uring ]] && ! grep -q 'ring with flags' "$logf"; then
        note+=" (no ring-flag fallback logged: SINGLE_ISSUER|DEFER_TASKRUN)"
    fi
    SETUP_NOTES+=("${LABEL[$srv]}: ${note:-no startup line found}")
done

# ------------------------------------------------------------- throughput ---

for srv in "${SERVERS[@]}"; do
    start_server "$srv"
    log "started ${LABEL[$srv]} on port ${PORT_OF[$srv]} (pids ${SRV_MPIDS[$srv]})"
done

# Same response? Record the wire size of each server's response.
RESP_NOTES=()
for srv in "${SERVERS[@]}"; do
    bytes=$(curl -s -D "$RAW_DIR/headers-$srv.txt" -o /dev/null -w '%{size_header}+%{size_download}' \
        "http://127.0.0.1:${PORT_OF[$srv]}$PATH_PLAINTEXT")
    for wl in $STATIC_SELECTED; do
        bytes+=", $(path_of "$wl") $(curl -s -D "$RAW_DIR/headers-$wl-$srv.txt" -o /dev/null -w '%{size_header}+%{size_download}' \
            "http://127.0.0.1:${PORT_OF[$srv]}$(path_of "$wl")")"
    done
    RESP_NOTES+=("${LABEL[$srv]}: $bytes bytes (head+body)")
done

log "warm-up: 2 s keep-alive per server"
for srv in "${SERVERS[@]}"; do
    taskset -c "$CLIENT_CPU" wrk -t1 -c64 -d2s "http://127.0.0.1:${PORT_OF[$srv]}$PATH_PLAINTEXT" >/dev/null 2>&1 || true
done

for ((rep = 1; rep <= REPEAT; rep++)); do
    # Alternate the server order between repetitions.
    order=("${SERVERS[@]}")
    if ((rep % 2 == 0)); then
        order=()
        for ((i = ${#SERVERS[@]} - 1; i >= 0; i--)); do order+=("${SERVERS[i]}"); done
    fi
    for wl in $WORKLOADS; do
        for srv in "${order[@]}"; do
            [[ -n ${DEAD[$srv]:-} ]] && continue
            for ((attempt = 1; attempt <= ATTEMPTS; attempt++)); do
                wait_quiet
                run_one "$wl" "$srv" "$rep" "$attempt" && break
                [[ -n ${DEAD[$srv]:-} ]] && break
            done
        done
    done
done

for srv in "${SERVERS[@]}"; do
    [[ -n ${DEAD[$srv]:-} ]] && continue
    stop_server "${SRV_SPID[$srv]}" "${LABEL[$srv]}"
done

# -------------------------------------------------------------------- RSS ---

declare -A RSS_BEFORE RSS_AFTER RSS_PER
# measure_rss SERVER: fresh server, IDLE_CONNS idle connections, RSS growth.
measure_rss() {
    local srv=$1 before after line idle_pid idle_out idle_in per
    start_server "$srv"
    sleep 0.5
    before=$(rss_kib "$SRV_WPID")
    log "RSS ${LABEL[$srv]}: $before KiB fresh; opening $IDLE_CONNS idle connections"
    coproc IDLE { exec python3 "$ROOT/scripts/idle_conns.py" --port "${PORT_OF[$srv]}" --count "$IDLE_CONNS" 2>>"$RAW_DIR/idle-$srv.log"; }
    # shellcheck disable=SC2153 # IDLE_PID is set by coproc
    idle_pid=$IDLE_PID
    idle_out=${IDLE[0]}
    idle_in=${IDLE[1]}
    EXTRA_PIDS+=("$idle_pid")
    line=""
    read -r -t 300 -u "$idle_out" line || true
    if [[ $line != ready ]]; then
        PROBLEMS+=("RSS/${LABEL[$srv]}: idle client did not get ready: $(tail -n 3 "$RAW_DIR/idle-$srv.log" | paste -sd ';' -)")
        kill_pid "$idle_pid"
        wait "$idle_pid" 2>/dev/null || true
    else
        sleep 1
        if kill -0 "$SRV_WPID" 2>/dev/null; then
            after=$(rss_kib "$SRV_WPID")
            per=$(awk -v a="$after" -v b="$before" -v n="$IDLE_CONNS" 'BEGIN {printf "%.0f", (a - b) * 1024 / n}')
            RSS_BEFORE[$srv]+="$before "
            RSS_AFTER[$srv]+="$after "
            RSS_PER[$srv]+="$per "
            log "RSS ${LABEL[$srv]}: $after KiB with $IDLE_CONNS idle connections -> $per B/conn"
        else
            PROBLEMS+=("RSS/${LABEL[$srv]}: server died while $IDLE_CONNS connections were open; see $RAW_DIR/$srv.log")
        fi
        exec {idle_in}>&-
        wait "$idle_pid" 2>/dev/null || true
    fi
    if kill -0 "${SRV_SPID[$srv]}" 2>/dev/null; then
        stop_server "${SRV_SPID[$srv]}" "${LABEL[$srv]} (RSS run)"
    fi
}

if ((IDLE_CONNS > 0)); then
    for ((rep = 1; rep <= REPEAT; rep++)); do
        for srv in "${SERVERS[@]}"; do
            [[ -n ${DEAD[$srv]:-} ]] && continue
            wait_quiet
            measure_rss "$srv"
        done
    done
fi

# --------------------------------------------------------------- syscalls ---

declare -A SYS_TOTAL SYS_ERRS SYS_REQS
syscall_reqs() {
    case $1 in close) echo "$SYSCALL_CLOSE_REQS" ;; static1m) echo "$SYSCALL_1M_REQS" ;; *) echo "$SYSCALL_REQS" ;; esac
}

traced_all() {       # traced_all PID...: every thread of every PID has a tracer
    local pid t tracer
    for pid in "$@"; do
        for t in /proc/"$pid"/task/*; do
            tracer=$(awk '/^TracerPid:/ {print $2}' "$t/status" 2>/dev/null || true)
            [[ -n $tracer && $tracer != 0 ]] || return 1
        done
    done
}

fixed_load() {       # fixed_load PORT WORKLOAD N OUTFILE (static workloads: keep-alive GETs of the file)
    local mode=$2
    [[ -n ${STATIC_FILE[$2]:-} ]] && mode=keepalive
    taskset -c "$CLIENT_CPU" python3 "$ROOT/scripts/fixed_load.py" --port "$1" --path "$(path_of "$2")" \
        --mode "$mode" --requests "$3" --conns 64 --depth "$PIPELINE_DEPTH" >"$4" 2>&1
}

# measure_syscalls SERVER: fresh server; per workload an untraced warm-up,
# then strace -c -f attached to the server for exactly N requests.
measure_syscalls() {
    local srv=$1 port=${PORT_OF[$1]} wl n trace tsv out spid i got p
    local -a pids pflags keep
    start_server "$srv"
    read -r -a pids <<<"${SRV_MPIDS[$srv]}"
    pflags=()
    for p in "${pids[@]}"; do pflags+=(-p "$p"); done
    for wl in $SYSCALL_WORKLOADS; do
        n=$(syscall_reqs "$wl")
        trace="$RAW_DIR/strace-$wl-$srv.txt"
        tsv="$RAW_DIR/syscalls-$wl-$srv.tsv"
        out="$RAW_DIR/fixed-$wl-$srv.txt"
        fixed_load "$port" "$wl" $((n < 2000 ? n : 2000)) "$out" ||
            PROBLEMS+=("syscalls $wl/$srv: warm-up failed: $(tail -n 1 "$out")")
        strace -c -f -o "$trace" "${pflags[@]}" 2>>"$RAW_DIR/strace-$srv.stderr" &
        spid=$!
        EXTRA_PIDS+=("$spid")
        for ((i = 0; i < 200; i++)); do
            traced_all "${pids[@]}" && break
            sleep 0.05
        done
        if ! traced_all "${pids[@]}"; then
            PROBLEMS+=("syscalls $wl/$srv: strace did not attach; see $RAW_DIR/strace-$srv.stderr")
            kill_pid "$spid"
            wait "$spid" 2>/dev/null || true
            continue
        fi
        fixed_load "$port" "$wl" "$n" "$out" ||
            PROBLEMS+=("syscalls $wl/$srv: fixed_load.py failed: $(tail -n 1 "$out")")
        # SIGTERM makes strace detach and write the summary (SIGINT would be
        # ignored: background jobs of a non-interactive shell ignore it).
        kill -TERM "$spid" 2>/dev/null || true
        wait "$spid" 2>/dev/null || true
        keep=()
        for p in "${EXTRA_PIDS[@]}"; do [[ $p == "$spid" ]] || keep+=("$p"); done
        EXTRA_PIDS=("${keep[@]}")
        if ! kill -0 "${pids[0]}" 2>/dev/null; then
            server_died "$srv" "syscalls $wl/$srv: SERVER DIED"
            return 0
        fi
        got=$(sed -n 's/^requests=\([0-9]*\) .*/\1/p' "$out")
        # strace -c rows: % time, seconds, usecs/call, calls, [errors,] syscall
        awk '$1 ~ /^[0-9.]+$/ && NF >= 5 && $NF != "total" {print $NF "\t" $4 "\t" (NF >= 6 ? $5 : 0)}' \
            "$trace" >"$tsv" 2>/dev/null || true
        if [[ -z $got || $got == 0 || ! -s $tsv ]]; then
            PROBLEMS+=("syscalls $wl/$srv: no result (requests '${got}'); see $out and $trace")
            continue
        fi
        ((got == n)) || PROBLEMS+=("syscalls $wl/$srv: $got of $n requests completed")
        SYS_REQS[$wl|$srv]=$got
        SYS_TOTAL[$wl|$srv]=$(awk -F'\t' '{s += $2} END {print s}' "$tsv")
        SYS_ERRS[$wl|$srv]=$(awk -F'\t' '{s += $3} END {print s}' "$tsv")
        log "syscalls $wl $srv: ${SYS_TOTAL[$wl|$srv]} syscalls (${SYS_ERRS[$wl|$srv]} failed) for $got requests"
    done
    if kill -0 "${SRV_SPID[$srv]}" 2>/dev/null; then
        stop_server "${SRV_SPID[$srv]}" "${LABEL[$srv]} (syscall run)"
    fi
}

if [[ $SYSCALLS == 1 ]]; then
    for srv in "${SERVERS[@]}"; do
        [[ -n ${DEAD[$srv]:-} ]] && continue
        wait_quiet
        measure_syscalls "$srv"
    done
fi

# ------------------------------------------------------ perf stat counts ---

declare -A PS_REQS PS_COUNT
# measure_perfstat SERVER: fresh server; per workload, perf stat counts the
# tracepoints in PERF_EVENTS on the server's processes while wrk runs for
# PERF_SECS. perf starts before wrk and stops about a second after it, so the
# count includes wrk's connects and a second of idling (a few timer wake-ups).
measure_perfstat() {
    local srv=$1 port=${PORT_OF[$1]} wl out pout ppid reqs ev cnt
    local -a pids wargs
    start_server "$srv"
    read -r -a pids <<<"${SRV_MPIDS[$srv]}"
    taskset -c "$CLIENT_CPU" wrk -t1 -c64 -d2s "http://127.0.0.1:$port$PATH_PLAINTEXT" >/dev/null 2>&1 || true
    for wl in $WORKLOADS; do
        wait_quiet
        out="$RAW_DIR/perfstat-wrk-$wl-$srv.txt"
        pout="$RAW_DIR/perfstat-$wl-$srv.csv"
        mapfile -t wargs < <(DURATION=${PERF_SECS}s wrk_args "$wl" "http://127.0.0.1:$port$(path_of "$wl")")
        perf stat -x, -o "$pout" "${PERF_ARGS[@]}" -p "$(IFS=,; echo "${pids[*]}")" -- sleep $((PERF_SECS + 2)) \
            2>>"$RAW_DIR/perfstat-$srv.stderr" &
        ppid=$!
        EXTRA_PIDS+=("$ppid")
        sleep 0.5
        taskset -c "$CLIENT_CPU" wrk "${wargs[@]}" >"$out" 2>&1 ||
            PROBLEMS+=("perf stat $wl/$srv: wrk exited non-zero; see $out")
        wait "$ppid" 2>/dev/null || PROBLEMS+=("perf stat $wl/$srv: perf failed; see $RAW_DIR/perfstat-$srv.stderr")
        local keep=() p
        for p in "${EXTRA_PIDS[@]}"; do [[ $p == "$ppid" ]] || keep+=("$p"); done
        EXTRA_PIDS=("${keep[@]}")
        if ! kill -0 "${pids[0]}" 2>/dev/null; then
            server_died "$srv" "perf stat $wl/$srv: SERVER DIED"
            return 0
        fi
        reqs=$(awk '/ requests in / {print $1; exit}' "$out")
        if [[ -z $reqs || $reqs == 0 || ! -s $pout ]]; then
            PROBLEMS+=("perf stat $wl/$srv: no result; see $out and $pout")
            continue
        fi
        PS_REQS[$wl|$srv]=$reqs
        # perf stat -x, lines: count,unit,event,... ("<not counted>" when absent)
        for ev in "${PERF_EVENTS[@]}"; do
            cnt=$(awk -F, -v e="$ev" '$3 == e && $1 ~ /^[0-9.]+$/ {print $1; exit}' "$pout")
            [[ -n $cnt ]] && PS_COUNT[$wl|$srv|$ev]=$cnt
        done
        log "perf stat $wl $srv: $reqs requests, ${PS_COUNT[$wl|$srv|raw_syscalls:sys_enter]:-?} syscalls"
    done
    if kill -0 "${SRV_SPID[$srv]}" 2>/dev/null; then
        stop_server "${SRV_SPID[$srv]}" "${LABEL[$srv]} (perf stat run)"
    fi
}

if [[ $PERFSTAT == 1 ]]; then
    for srv in "${SERVERS[@]}"; do
        [[ -n ${DEAD[$srv]:-} ]] && continue
        measure_perfstat "$srv"
    done
fi

# ----------------------------------------------------------------- report ---

wl_name() {
    case $1 in
        keepalive) echo "keep-alive, -c64" ;;
        pipeline) echo "pipelined x$PIPELINE_DEPTH, -c64" ;;
        c1000) echo "keep-alive, -c1000" ;;
        close) echo "new connection per request, -c64" ;;
        static4k) echo "4 KiB file, keep-alive, -c64" ;;
        static1m) echo "1 MiB file, keep-alive, -c64" ;;
    esac
}

syscall_report() {
    local wl srv key row
    echo "Syscalls per request: each server started fresh, \`strace -c -f -p PID\` attached (nginx: master and worker) after an untraced warm-up, then exactly N requests from \`taskset -c $CLIENT_CPU scripts/fixed_load.py --conns 64\` (HTTP/1.1; keep-alive, pipelined x$PIPELINE_DEPTH, or \`Connection: close\` with a new connection per request${STATIC_SELECTED:+; the file rows are keep-alive GETs of the file}); one run each. Failed calls (mostly EAGAIN) count; their share is in parentheses. Tracing slows the server, which changes how many events each epoll_wait returns.${STATIC_SELECTED:+ strace sees sendfile but not the file reads inside an io_uring ring (they show up as io_uring_enter only).}"
    echo
    row="| workload | requests |"
    for srv in "${SERVERS[@]}"; do row+=" ${LABEL[$srv]} |"; done
    echo "$row"
    row="|---|---:|"
    for srv in "${SERVERS[@]}"; do row+="---:|"; done
    echo "$row"
    for wl in $SYSCALL_WORKLOADS; do
        row="| $(wl_name "$wl") | $(syscall_reqs "$wl") |"
        for srv in "${SERVERS[@]}"; do
            key="$wl|$srv"
            if [[ -n ${SYS_REQS[$key]:-} ]]; then
                row+=" $(awk -v t="${SYS_TOTAL[$key]}" -v e="${SYS_ERRS[$key]}" -v n="${SYS_REQS[$key]}" 'BEGIN {printf "%.2f (%.2f)", t / n, e / n}') |"
            else
                row+=" n/a |"
            fi
        done
        echo "$row"
    done
    echo
    for wl in $SYSCALL_WORKLOADS; do syscall_breakdown "$wl"; done
}

# syscall_breakdown WORKLOAD: calls per request by syscall, one column per server.
syscall_breakdown() {
    local wl=$1 srv row
    local -a files=() cols=() reqs=()
    for srv in "${SERVERS[@]}"; do
        [[ -n ${SYS_REQS[$wl|$srv]:-} ]] || continue
        files+=("$RAW_DIR/syscalls-$wl-$srv.tsv")
        cols+=("${LABEL[$srv]}")
        reqs+=("${SYS_REQS[$wl|$srv]}")
    done
    ((${#files[@]})) || return 0
    echo "$(wl_name "$wl" | sed 's/^./\U&/'), calls per request by syscall under strace (failed calls in parentheses; calls below 0.005 per request for every server left out):"
    echo
    row="| syscall |"
    for srv in "${cols[@]}"; do row+=" $srv |"; done
    echo "$row"
    row="|---|"
    for srv in "${cols[@]}"; do row+="---:|"; done
    echo "$row"
    awk -F'\t' -v reqs="${reqs[*]}" -v nf="${#files[@]}" '
        FNR == 1 { f++ }
        { c[$1, f] = $2; e[$1, f] = $3; if (!($1 in seen)) { seen[$1] = 1; names[++k] = $1 }
          if ($2 > mx[$1]) mx[$1] = $2 }
        END {
            split(reqs, n, " ")
            # sort names by the largest call count, descending
            for (i = 1; i <= k; i++) for (j = i + 1; j <= k; j++)
                if (mx[names[j]] > mx[names[i]]) { t = names[i]; names[i] = names[j]; names[j] = t }
            for (i = 1; i <= k; i++) {
                big = 0
                for (j = 1; j <= nf; j++) if (c[names[i], j] / n[j] >= 0.005) big = 1
                if (!big) continue
                row = "| " names[i] " |"
                for (j = 1; j <= nf; j++) {
                    if ((names[i], j) in c) {
                        row = row sprintf(" %.2f", c[names[i], j] / n[j])
                        if (e[names[i], j] > 0) row = row sprintf(" (%.2f)", e[names[i], j] / n[j])
                        row = row " |"
                    } else row = row " - |"
                }
                print row
            }
        }' "${files[@]}"
    echo
}

# perfstat_report: untraced counts per request from perf stat tracepoints.
perfstat_report() {
    local wl srv key ev row n h name
    local -a evs=() heads=()
    # perf_cell KEY EVENT [SCALE]: count / requests (x SCALE), or "-"
    perf_cell() {
        if [[ -n ${PS_COUNT[$1|$2]:-} ]]; then
            awk -v c="${PS_COUNT[$1|$2]}" -v n="${PS_REQS[$1]}" -v s="${3:-1}" 'BEGIN {printf "%.2f", c * s / n}'
        else
            printf -- '-'
        fi
    }
    for ev in raw_syscalls:sys_enter syscalls:sys_enter_epoll_wait syscalls:sys_enter_io_uring_enter \
        io_uring:io_uring_submit_req io_uring:io_uring_complete context-switches task-clock; do
        [[ " ${PERF_EVENTS[*]} " == *" $ev "* ]] || continue
        evs+=("$ev")
        case $ev in
            raw_syscalls:sys_enter) heads+=("syscalls") ;;
            syscalls:sys_enter_epoll_wait) heads+=("epoll_wait") ;;
            syscalls:sys_enter_io_uring_enter) heads+=("io_uring_enter") ;;
            io_uring:io_uring_submit_req) heads+=("SQEs submitted") ;;
            io_uring:io_uring_complete) heads+=("CQEs posted") ;;
            context-switches) heads+=("context switches") ;;
            task-clock) heads+=("task-clock us") ;;
        esac
    done
    echo "Per request without strace: \`perf stat -p PID\` counting tracepoints and software events (counters only, nothing stops the server; nginx: master and worker) on a fresh server while \`wrk\` ran each workload for ${PERF_SECS} s (same wrk flags as above). Counts start 0.5 s before wrk and end about 1.5 s after, so they include wrk's connects and some idle time. syscalls counts every syscall (raw_syscalls:sys_enter); SQEs submitted counts io_uring operations started (io_uring:io_uring_submit_req; a multishot accept or receive counts once, not per completion); CQEs posted counts completions (io_uring:io_uring_complete, every multishot completion included); context switches are the server's; task-clock is the server's CPU time, a bit above the table's because every counted event costs a little."
    echo
    row="| workload | server | requests |"
    for h in "${heads[@]}"; do row+=" $h |"; done
    echo "$row"
    row="|---|---|---:|"
    for h in "${heads[@]}"; do row+="---:|"; done
    echo "$row"
    for wl in $WORKLOADS; do
        for srv in "${SERVERS[@]}"; do
            key="$wl|$srv"
            [[ -n ${PS_REQS[$key]:-} ]] || continue
            row="| $(wl_name "$wl") | ${LABEL[$srv]} | ${PS_REQS[$key]} |"
            for ev in "${evs[@]}"; do
                if [[ $ev == task-clock ]]; then   # msec -> us
                    row+=" $(perf_cell "$key" "$ev" 1000) |"
                else
                    row+=" $(perf_cell "$key" "$ev") |"
                fi
            done
            echo "$row"
        done
    done
    echo
    # The same runs, per syscall; failed calls (result < 0, mostly EAGAIN) in parentheses.
    evs=()
    for name in accept4 recvfrom sendto writev epoll_ctl close sendfile64 openat; do
        [[ " ${PERF_EVENTS[*]} " == *" syscalls:sys_enter_$name "* ]] && evs+=("$name")
    done
    ((${#evs[@]})) || return 0
    echo "The same runs, calls per request of the socket${STATIC_SELECTED:+ and file} syscalls (failed calls, result < 0, in parentheses where counted):"
    echo
    row="| workload | server |"
    for name in "${evs[@]}"; do row+=" $name |"; done
    echo "$row"
    row="|---|---|"
    for name in "${evs[@]}"; do row+="---:|"; done
    echo "$row"
    for wl in $WORKLOADS; do
        for srv in "${SERVERS[@]}"; do
            key="$wl|$srv"
            [[ -n ${PS_REQS[$key]:-} ]] || continue
            row="| $(wl_name "$wl") | ${LABEL[$srv]} |"
            for name in "${evs[@]}"; do
                row+=" $(perf_cell "$key" "syscalls:sys_enter_$name")"
                if [[ -n ${PS_COUNT[$key|syscalls:sys_exit_$name]:-} ]]; then
                    row+=" ($(perf_cell "$key" "syscalls:sys_exit_$name"))"
                fi
                row+=" |"
            done
            echo "$row"
        done
    done
    echo
}

# Paired ratios: within a repetition the servers ran back to back, so the
# ratio of two servers' CPU us/req in the same repetition cancels slow
# drifts of the machine that the medians of each server do not.
paired_report() {
    ((REPEAT > 1)) || return 0
    local -a pairs=() vals
    local srv wl pair a b r row cols
    for srv in "${SERVERS[@]}"; do
        [[ $srv == coreloop-* ]] && pairs+=("$srv/nginx")
    done
    ((HAVE_UE)) && pairs+=("coreloop-uring/coreloop-epoll")
    ((${#pairs[@]})) || return 0
    echo "CPU us/req ratios paired by repetition (the two servers measured back to back in the same repetition):"
    echo
    row="| workload | ratio |"
    cols="|---|---|"
    for ((r = 1; r <= REPEAT; r++)); do row+=" rep $r |"; cols+="---:|"; done
    echo "$row median |"
    echo "$cols---:|"
    for wl in $WORKLOADS; do
        for pair in "${pairs[@]}"; do
            a=${pair%/*}
            b=${pair#*/}
            row="| $(wl_name "$wl") | ${a#coreloop-}/${b#coreloop-} |"
            vals=()
            for ((r = 1; r <= REPEAT; r++)); do
                if [[ -n ${CPU_REP[$wl|$a|$r]:-} && -n ${CPU_REP[$wl|$b|$r]:-} ]]; then
                    vals+=("$(awk -v x="${CPU_REP[$wl|$a|$r]}" -v y="${CPU_REP[$wl|$b|$r]}" 'BEGIN {printf "%.2f", x / y}')")
                    row+=" ${vals[-1]} |"
                else
                    row+=" n/a |"
                fi
            done
            if ((${#vals[@]})); then
                row+=" $(awk -v m="$(median "${vals[@]}")" 'BEGIN {printf "%.2f", m}') |"
            else
                row+=" n/a |"
            fi
            echo "$row"
        done
    done
    echo
}

report() {
    echo "### Run $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo
    echo "Command: \`$CMDLINE\`"
    echo
    if [[ $ACCESS_LOG == 1 ]]; then
        echo "Access logs written in this run (all servers' starts): coreloop $(cat "$TMP/coreloop-access.log" 2>/dev/null | wc -l) lines, nginx $(cat "$TMP/nginx-access.log" 2>/dev/null | wc -l) lines."
        echo
    fi
    echo "- Machine: $NPROC CPUs ($(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)), kernel $(uname -r); coreloop $COMMIT$DIRTY${BENCH_REV:+ (built from git archive, work tree changes excluded)} (binary sha256 $COREL_SHA)"
    echo "- Servers: one worker pinned to CPU $SERVER_CPU; \`taskset -c $SERVER_CPU target/release/coreloop --workers 1 --cpus $SERVER_CPU --port P --backend B --log-level warn --max-conns $MAX_CONNS --idle-timeout 120s${COREL_ROOT[*]:+ --root DIR}${COREL_ARGS:+ $COREL_ARGS}\`; ${LABEL[nginx]} (Debian nginx-light) with worker_processes 1, worker_cpu_affinity, $( [[ $ACCESS_LOG == 1 ]] && echo "access_log FILE combined buffer=64k (coreloop: --access-log FILE)" || echo "access_log off"), keepalive_requests 10000000, worker_connections $MAX_CONNS, sendfile on, tcp_nopush off$( [[ $NGINX_FILE_CACHE == 1 ]] && echo ", open_file_cache max=1024 + open_file_cache_valid 1s")${STATIC_SELECTED:+, root DIR} (config generated by the script)"
    echo "- Client: \`taskset -c $CLIENT_CPU wrk -t1 -cC -d$DURATION --latency http://127.0.0.1:P/plaintext\` (+ \`-s scripts/pipeline.lua -- $PIPELINE_DEPTH\` / \`-H 'Connection: close'\`)${STATIC_SELECTED:+; static workloads GET /4k.bin (4096 bytes) or /1m.bin (1048576 bytes) instead of /plaintext, random bytes in DIR, one directory per run}; $(wrk -v 2>&1 | head -n1 | cut -d' ' -f1-2)"
    local joined
    joined=$(IFS=';'; echo "${RESP_NOTES[*]}")
    echo "- Response sizes: ${joined//;/; }"
    if ((${#SETUP_NOTES[@]})); then
        joined=$(IFS=';'; echo "${SETUP_NOTES[*]}")
        echo "- Backend setup (one start at --log-level info): ${joined//;/; }"
    fi
    echo "- Medians of $REPEAT run(s) of $DURATION each. CPU us/req = server utime+stime delta (/proc/PID/stat, all threads; nginx: master+worker) / requests completed; wrk CPU us/req = the client's user+system time (bash \`time\`) / requests completed: when wrk's CPU is saturated, a server that delivers faster is billed more of the loopback delivery into wrk's socket, so read the two together. Ratio to nginx = coreloop CPU us/req / nginx CPU us/req of the medians (lower is better)$( ((HAVE_UE)) && echo "; ratio uring/epoll = coreloop (uring) CPU us/req / coreloop (epoll) CPU us/req")${STATIC_SELECTED:+. MiB/s = the Transfer/sec of wrk (response heads and bodies, 2^20 bytes)}."
    echo
    # MiB/s only when a static workload runs (the /plaintext tables keep their shape).
    local mb_head="" mb_rule="" mb
    if [[ -n $STATIC_SELECTED ]]; then mb_head=" MiB/s |"; mb_rule="---:|"; fi
    if ((HAVE_UE)); then
        echo "| workload | server | req/s |$mb_head p50 | p99 | CPU us/req | wrk CPU us/req | ratio to nginx | ratio uring/epoll |"
        echo "|---|---|---:|$mb_rule---:|---:|---:|---:|---:|---:|"
    else
        echo "| workload | server | req/s |$mb_head p50 | p99 | CPU us/req | wrk CPU us/req | ratio to nginx |"
        echo "|---|---|---:|$mb_rule---:|---:|---:|---:|---:|"
    fi
    local wl srv key rps p50 p99 cpu wcpu ncpu ecpu ratio ue c
    for wl in $WORKLOADS; do
        ncpu=""
        [[ -n ${CPU[$wl|nginx]:-} ]] && { read -r -a v <<<"${CPU[$wl|nginx]}"; ncpu=$(median "${v[@]}"); }
        ecpu=""
        [[ -n ${CPU[$wl|coreloop-epoll]:-} ]] && { read -r -a v <<<"${CPU[$wl|coreloop-epoll]}"; ecpu=$(median "${v[@]}"); }
        for srv in "${SERVERS[@]}"; do
            key="$wl|$srv"
            if [[ -z ${RPS[$key]:-} ]]; then
                echo "| $(wl_name "$wl") | ${LABEL[$srv]} | failed |${mb_head:+ |} | | | | |$( ((HAVE_UE)) && echo ' |')"
                continue
            fi
            read -r -a v <<<"${RPS[$key]}"; rps=$(median "${v[@]}")
            read -r -a v <<<"${P50[$key]}"; p50=$(median "${v[@]}")
            read -r -a v <<<"${P99[$key]}"; p99=$(median "${v[@]}")
            read -r -a v <<<"${CPU[$key]}"; cpu=$(median "${v[@]}")
            read -r -a v <<<"${WCPU[$key]}"; wcpu=$(median "${v[@]}")
            mb=""
            if [[ -n $mb_head ]]; then
                read -r -a v <<<"${XFER[$key]}"
                mb=" $(fmt_mib "$(median "${v[@]}")") |"
            fi
            if [[ $wl == pipeline ]]; then
                c=$(conns_of "$wl")
                p50="$(fmt_lat "$(awk -v c="$c" -v d="$PIPELINE_DEPTH" -v r="$rps" 'BEGIN {printf "%.1f", c * d / r * 1e6}')") mean batch*"
                p99="n/a*"
            else
                p50=$(fmt_lat "$p50")
                p99=$(fmt_lat "$p99")
            fi
            if [[ $srv == nginx ]]; then
                ratio="1.00"
            elif [[ -n $ncpu ]]; then
                ratio=$(awk -v a="$cpu" -v b="$ncpu" 'BEGIN {printf "%.2fx", a / b}')
            else
                ratio="n/a"
            fi
            ue=""
            if ((HAVE_UE)); then
                ue=" |"
                if [[ $srv == coreloop-uring && -n $ecpu ]]; then
                    ue=" $(awk -v a="$cpu" -v b="$ecpu" 'BEGIN {printf "%.2fx", a / b}') |"
                fi
            fi
            printf '| %s | %s | %s |%s %s | %s | %s | %s | %s |%s\n' "$(wl_name "$wl")" "${LABEL[$srv]}" \
                "$(awk -v r="$rps" 'BEGIN {printf "%.0f", r}')" "$mb" "$p50" "$p99" \
                "$(awk -v c="$cpu" 'BEGIN {printf "%.2f", c}')" "$(awk -v c="$wcpu" 'BEGIN {printf "%.2f", c}')" "$ratio" "$ue"
        done
    done
    echo
    paired_report
    local all_foreign=""
    for key in "${!FOREIGN[@]}"; do all_foreign+="${FOREIGN[$key]}"; done
    if [[ -n $all_foreign ]]; then
        read -r -a v <<<"$all_foreign"
        echo "Machine load: besides the server and wrk, other processes used $(median "${v[@]}")% of one CPU in the median measurement and at most $(printf '%s\n' "${v[@]}" | sort -g | tail -n 1)% (whole-machine busy time from /proc/stat minus the server's and wrk's CPU time; each measurement started only after a 1 s sample showed the machine below $QUIET_PCT% busy). $DISCARDED measurement(s) were discarded and repeated because other processes used more than $FOREIGN_MAX% of a CPU during them."
        echo
    fi
    if [[ " $WORKLOADS " == *" pipeline "* ]]; then
        echo "\\* wrk 4.1's latency percentiles are wrong under pipelining (it times a whole batch from its write), so the pipelined row shows the mean batch latency from Little's law, connections x $PIPELINE_DEPTH / req/s, and no p99."
        echo
    fi
    if ((IDLE_CONNS > 0)); then
        echo "RSS per idle keep-alive connection ($REPEAT run(s), each on a fresh server: $IDLE_CONNS connections each served one GET /plaintext, then held open; VmRSS of the process holding the connections, nginx: the worker):"
        echo
        for srv in "${SERVERS[@]}"; do
            if [[ -n ${RSS_PER[$srv]:-} ]]; then
                read -r -a v <<<"${RSS_PER[$srv]}"
                local per_med b_med a_med
                per_med=$(median "${v[@]}")
                read -r -a v <<<"${RSS_BEFORE[$srv]}"; b_med=$(median "${v[@]}")
                read -r -a v <<<"${RSS_AFTER[$srv]}"; a_med=$(median "${v[@]}")
                echo "- ${LABEL[$srv]}: $(awk -v x="$per_med" 'BEGIN {printf "%.0f", x}') bytes/connection (median; runs: ${RSS_PER[$srv]% }; VmRSS $b_med KiB fresh -> $a_med KiB, medians)"
            else
                echo "- ${LABEL[$srv]}: not measured (see problems)"
            fi
        done
        echo
    fi
    if [[ $SYSCALLS == 1 ]]; then
        syscall_report
    fi
    if [[ $PERFSTAT == 1 ]]; then
        perfstat_report
    fi
    if ((${#EXIT_NOTES[@]})); then
        joined=$(IFS=';'; echo "${EXIT_NOTES[*]}")
        echo "Shutdown: ${joined//;/; }."
    else
        echo "Shutdown: all $STOPS server stops (SIGTERM) exited with status 0."
    fi
    echo
    if ((${#PROBLEMS[@]})); then
        echo "Problems seen:"
        echo
        local p
        for p in "${PROBLEMS[@]}"; do echo "- $p"; done
        echo
    fi
    local f
    for f in "$RAW_DIR"/*.log; do
        [[ -s $f ]] || continue
        case $f in */idle-* | */setup-*) continue ;; esac
        echo "Server output in $(basename "$f") (distinct lines, last 20):"
        echo
        echo '```'
        awk '!seen[$0]++' "$f" | tail -n 20
        echo '```'
        echo
    done
    echo "Raw wrk output: $RAW_DIR"
}

report | tee "$RAW_DIR/report.md"
