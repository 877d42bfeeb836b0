#!/usr/bin/env bash
# Zero-downtime upgrades under load, for longer than the suite runs them.
#
#   SECS=600 scripts/upgrade.sh            # both backends, 10 minutes each
#   SECS=600 BACKEND=uring scripts/upgrade.sh
#
# Runs tests/upgrade.rs's load (connection churn, 100 keep-alive clients
# with GETs and POSTs, 20 slow proxied responses) with, per minute, 10
# upgrades alternating two builds, one --workers change and three bad new
# processes; prints the figures and fails on any lost request, reset, or
# old process past its drain deadline. Churn of 5,000 new connections per
# second or more is checked here (not in the suite: it is a rate).
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${SECS:-600}
# Every upgrade opens new upstream and client connections: the hard limit.
ulimit -n "$(ulimit -Hn)"
MIN_CHURN=${MIN_CHURN:-5000}
out=$(mktemp)
full=${LOG:-target/upgrade-$(date +%Y%m%d-%H%M%S).log}
mkdir -p "$(dirname "$full")"
trap 'rm -f "$out"' EXIT
# The servers' own lines (and a failure's dump of them) go to $full only.
UPGRADE_SECS=$SECS UPGRADE_BACKEND=${BACKEND:-} \
    cargo test --release --test upgrade upgrades_lose_nothing_under_load -- --nocapture 2>&1 \
    | tee "$full" | grep -v '^coreloop\[' | tee "$out"
grep -q 'test result: ok' "$out" || { echo "upgrade: FAIL (server logs: $full)" >&2; exit 1; }
status=0
while read -r backend rate; do
    if (( rate < MIN_CHURN )); then
        echo "upgrade: $backend churn $rate/s is below $MIN_CHURN/s" >&2
        status=1
    fi
done < <(sed -n 's/^\([a-z]*\): .* churn [0-9]* connections (\([0-9]*\)\/s).*/\1 \2/p' "$out")
[ "$status" = 0 ] && echo "upgrade: PASS"
exit "$status"
