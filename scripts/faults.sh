#!/usr/bin/env bash
# The long form of the fault suite (docs/spec.md §4.1, docs/reliability.md): 2,000
# events over 80 records, the database cut for 20 s and 90 s (refuse and
# blackhole), the Pub/Sub emulator cut for 20 s and 90 s, 20 SIGKILLs under
# load with flaky targets, and the gap scenarios. Each scenario prints one
# `FAULTS …` line with its figures. Needs MariaDB on 127.0.0.1:3306; starts
# the emulator like scripts/test.sh. Takes about 15 minutes on 2 cores.
# Extra arguments go to the test runner (e.g. -E 'test(/faults_db_cut/)').
set -euo pipefail
cd "$(dirname "$0")/.."
export FAULTS_LONG=1
filter="test(/faults::/)"
if command -v cargo-nextest >/dev/null 2>&1; then
  # --no-capture also runs one scenario at a time: the figures then measure
  # the daemon, not a machine shared with the other scenarios.
  exec scripts/test.sh -E "$filter" --no-capture "$@"
else
  exec scripts/test.sh faults:: "$@" -- --nocapture --test-threads 1
fi
