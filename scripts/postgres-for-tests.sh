#!/usr/bin/env bash
# Installs (Debian packages) and starts a local PostgreSQL for the test suite, with a role
# `storyloop` allowed to create databases (and to end other connections to the ones it drops). Prints the URL the tests should use.
# When it had to start the cluster, it writes the cluster's version to $STORYLOOP_PG_STARTED_FILE (if set), so that
# the caller can stop what it started and nothing else.
set -euo pipefail
conf_dir=${STORYLOOP_PG_CONF_DIR:-/etc/postgresql}
if ! command -v pg_ctlcluster >/dev/null 2>&1; then
  if [ "$(id -u)" != 0 ]; then echo "PostgreSQL is not installed; run as root or install it: apt-get install postgresql" >&2; exit 1; fi
  apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2
fi
version=$(ls "$conf_dir" | sort -n | tail -1)
if [ -z "$version" ]; then echo "no PostgreSQL cluster found under $conf_dir" >&2; exit 1; fi
if ! pg_ctlcluster "$version" main status >/dev/null 2>&1; then
  pg_ctlcluster "$version" main start >&2
  if [ -n "${STORYLOOP_PG_STARTED_FILE:-}" ]; then echo "$version" > "$STORYLOOP_PG_STARTED_FILE"; fi
fi
for _ in $(seq 30); do pg_isready -q -h localhost && break; sleep 0.5; done
runuser -u postgres -- psql -q -tAc "SELECT 1 FROM pg_roles WHERE rolname='storyloop'" | grep -q 1 \
  || runuser -u postgres -- psql -q -c "CREATE ROLE storyloop LOGIN CREATEDB PASSWORD 'storyloop'" >&2
# Each test drops its database WITH (FORCE), which ends connections a test may have left open.
runuser -u postgres -- psql -q -c "GRANT pg_signal_backend TO storyloop" >&2
echo "postgresql+psycopg://storyloop:storyloop@localhost:5432/postgres"
