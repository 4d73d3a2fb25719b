#!/usr/bin/env bash
# Two daemons on two databases splitting one raw stream by ordering key
# (docs/capacity.md §d). Partition p = first 8 bytes of SHA-256(ordering key)
# as a big-endian unsigned integer, mod 2; each partition is its own topology
# (Pub/Sub project id split-p{p}-<run>) and its own MariaDB database.
# Publishes N events (default 10,000) over 200 records, waits for both daemons
# to drain, then checks: 0 lost / 0 doubled per partition, no record in both
# databases, merged events in version order per record, `verify` exit 0 on
# each database, and prints the drain rates. --kill SIGKILLs daemon p0 once
# mid-run and restarts it.
#
# Usage: scripts/split-run.sh [--events N] [--records R] [--kill]
# Needs: the Pub/Sub emulator (127.0.0.1:8085, scripts/services.sh), MariaDB on
# 127.0.0.1:3306 (root, empty password), the `mysql` client, python3 (stdlib
# only). The binary: $SPLIT_BIN, else target/debug/event-backbone (copied to
# target/split/ first, so a rebuild during the run cannot swap it).
# Cleans up on exit: daemons killed, topics/subscriptions deleted, databases
# dropped (SPLIT_KEEP_DB=1 keeps them).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
work=$root/target/split
mkdir -p "$work"
run_id=$(date +%H%M%S)$RANDOM
bin=${SPLIT_BIN:-}
if [ -z "$bin" ]; then
  cp target/debug/event-backbone "$work/event-backbone-$run_id"
  bin=$work/event-backbone-$run_id
fi
export PUBSUB_EMULATOR_HOST=${PUBSUB_EMULATOR_HOST:-127.0.0.1:8085}
pidfile=$work/pids-$run_id

# The Python driver stops its daemons itself; this is the backstop should it
# die first (only the pids it recorded, never a pattern).
cleanup() {
  if [ -s "$pidfile" ]; then
    for pid in $(cat "$pidfile"); do kill -9 "$pid" 2>/dev/null || true; done
  fi
  rm -f "$pidfile"
  [ -z "${SPLIT_BIN:-}" ] && rm -f "$bin"
  return 0
}
trap cleanup EXIT INT TERM

python3 scripts/split_run.py --binary "$bin" --run-id "$run_id" --workdir "$work" \
  --config-dir "$root/config" "$@"
