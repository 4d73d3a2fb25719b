# shellcheck shell=bash
# Sourced by scripts/services.sh, scripts/test.sh and .ci/run: processes are
# stopped by the pid their starter recorded, never by name, so nothing can
# hit another checkout's emulator or a service somebody else started.
#
# A pid file holds one line, "<pid> <start time> [note]": the start time
# (field 22 of /proc/<pid>/stat, in clock ticks since boot) tells a process
# from a later one that reused its pid, so a stale file stops nothing.
#
# BACKBONE_TEST_PID_DIR: a directory per test run. Whoever starts a process
# for the run (services.sh, a later script starting a browser, a test)
# drops a pid file in it; the run's trap stops each one (pids_stop_dir).

# Start time of a live (not zombie) process; fails when there is none.
pid_starttime() {
  local stat rest
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  # The command name (field 2) may hold spaces and ')': count from the last ')'.
  rest=${stat##*) }
  # shellcheck disable=SC2086 # split the fields on purpose
  set -- $rest
  [ "$1" != Z ] || return 1
  echo "${20}"
}

# pid_write FILE PID [NOTE]: records PID (and its start time) in FILE.
pid_write() {
  local start
  start=$(pid_starttime "$2") || return 1
  mkdir -p "$(dirname "$1")"
  echo "$2 $start ${3:-}" >"$1.tmp" && mv "$1.tmp" "$1"
}

# pid_live FILE: prints the pid when FILE names a process that still runs
# (same pid, same start time); fails otherwise.
pid_live() {
  local pid start note now
  [ -f "$1" ] || return 1
  read -r pid start note <"$1" || [ -n "${pid:-}" ] || return 1
  case $pid in '' | *[!0-9]*) return 1 ;; esac
  now=$(pid_starttime "$pid") || return 1
  # A file written by start-stop-daemon holds the pid alone: trust it.
  [ -z "$start" ] || [ "$start" = "$now" ] || return 1
  echo "$pid"
}

# pid_note FILE: the note recorded with the pid (e.g. the emulator's patch).
pid_note() {
  local pid start note
  read -r pid start note <"$1" 2>/dev/null || true
  echo "${note:-}"
}

# pid_stop FILE [GRACE_SECONDS]: SIGTERM, then SIGKILL after the grace; the
# file is removed either way. Prints the pid stopped; fails when none ran.
pid_stop() {
  local pid grace=${2:-10} i
  if ! pid=$(pid_live "$1"); then
    rm -f "$1"
    return 1
  fi
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < grace * 10; i++)); do
    pid_live "$1" >/dev/null || break
    sleep 0.1
  done
  if pid_live "$1" >/dev/null; then
    kill -KILL "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
      pid_live "$1" >/dev/null || break
      sleep 0.1
    done
  fi
  rm -f "$1"
  echo "$pid"
}

# pids_stop_dir DIR [STATE_DIR]: stops every process with a pid file in
# DIR, saying so; then removes the pid files in STATE_DIR (services.sh's own
# records) whose process is gone.
pids_stop_dir() {
  local f pid
  if [ -d "$1" ]; then
    for f in "$1"/*.pid; do
      [ -e "$f" ] || continue
      if pid=$(pid_stop "$f" 10); then
        echo "Stopped $(basename "$f" .pid) (pid $pid), started by this run."
      fi
    done
  fi
  [ -n "${2:-}" ] && [ -d "$2" ] || return 0
  for f in "$2"/*.pid; do
    [ -e "$f" ] || continue
    pid_live "$f" >/dev/null || rm -f "$f"
  done
}

# session_sweep SID: stops what is left of a session this script created
# (setsid), e.g. a test's child whose test was killed before its guard ran.
# Prints one line per process it had to stop.
session_sweep() {
  local sid=$1 stat rest left=() entry p i alive
  for stat in /proc/[0-9]*/stat; do
    p=${stat#/proc/}
    p=${p%/stat}
    [ "$p" != "$$" ] || continue
    rest=$(cat "$stat" 2>/dev/null) || continue
    rest=${rest##*) }
    # shellcheck disable=SC2086 # split the fields on purpose
    set -- $rest
    # Field 6 is the session id (field 3 is $1); zombies only wait for their parent.
    [ "$4" = "$sid" ] && [ "$1" != Z ] && left+=("$p:${20}")
  done
  [ ${#left[@]} -gt 0 ] || return 0
  for entry in "${left[@]}"; do
    p=${entry%%:*}
    echo "Stopping pid $p ($(tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null | cut -c1-120)), left over by the test run."
    kill -TERM "$p" 2>/dev/null || true
  done
  for ((i = 0; i < 50; i++)); do
    alive=0
    for entry in "${left[@]}"; do
      [ "$(pid_starttime "${entry%%:*}")" = "${entry#*:}" ] && alive=1
    done
    [ "$alive" = 1 ] || return 0
    sleep 0.1
  done
  for entry in "${left[@]}"; do
    p=${entry%%:*}
    [ "$(pid_starttime "$p")" = "${entry#*:}" ] && kill -KILL "$p" 2>/dev/null
  done
  return 0
}
