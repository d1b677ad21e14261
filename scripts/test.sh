#!/usr/bin/env bash
# Runs the whole test suite: SQLite and PostgreSQL database tests, trainer tests with tiny models,
# and the browser tests in Debian's headless Chromium. Installs the system packages it needs when
# run as root on Debian (PostgreSQL, Chromium, curl and jq) and starts PostgreSQL itself (and stops it on exit
# when it was not running before).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
  else
    echo "warning: chromium is missing (apt-get install chromium); browser tests will fail" >&2
  fi
fi

# curl and jq: tests/test_readme_api.py runs the API examples of docs/api.md as written.
if ! command -v curl >/dev/null 2>&1 || ! command -v jq >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq curl jq >/dev/null
  else
    echo "warning: curl or jq is missing (apt-get install curl jq); the docs examples' test will be skipped" >&2
  fi
fi

# PostgreSQL: stopped again on exit when this run started it (a cluster that was running is left running).
started=$(mktemp)
stop_the_cluster_we_started() {
  if [ -s "$started" ]; then pg_ctlcluster "$(cat "$started")" main stop >&2 || true; fi
  rm -f "$started"
}
trap stop_the_cluster_we_started EXIT
STORYLOOP_TEST_POSTGRES_URL=$(STORYLOOP_PG_STARTED_FILE=$started scripts/postgres-for-tests.sh)
export STORYLOOP_TEST_POSTGRES_URL
export TOKENIZERS_PARALLELISM=false

.venv/bin/python -m pytest -q "$@"  # not exec: the trap above runs after the tests
