#!/usr/bin/env bash
# Fetches the offline pretraining corpus (Jane Austen's novels, Debian package r-cran-janeaustenr)
# into data/corpus. No root needed when the package lists are present; as root it refreshes them
# when the package cannot be found.
set -euo pipefail
cd "$(dirname "$0")/.."
fetch() { .venv/bin/python -m trainer.bootstrap fetch-corpus --cache-dir data/corpus >/dev/null; }
if ! fetch 2>/dev/null; then
  if [ "$(id -u)" = 0 ]; then apt-get update -qq >/dev/null; fi
  fetch
fi
