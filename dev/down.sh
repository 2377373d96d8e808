#!/usr/bin/env bash
# `make down`: stops what `make up` started (not PostgreSQL, which it only reused or started).
set -uo pipefail
cd "$(dirname "$0")/.."
for pidfile in .dev-state/*.pid; do
  [ -e "$pidfile" ] || continue
  pid=$(cat "$pidfile")
  kill "$pid" 2>/dev/null && echo "stopped $(basename "$pidfile" .pid)"
  rm -f "$pidfile"
done
