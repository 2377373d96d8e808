#!/usr/bin/env bash
# `make up`: starts the whole system on this machine, reusing what already runs:
# PostgreSQL (database `opencode`), a NATS server 2.10+ with JetStream, the development OpenID
# provider, the fake LLM provider and the four services. State and logs go to .dev-state/.
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(dev/deps.sh)"
state=.dev-state
mkdir -p "$state/logs" "$state/nats"

NATS_PORT=${NATS_PORT:-4333}   # not 4222: the machine's packaged (too old) NATS may sit there
OIDC_PORT=${OIDC_PORT:-3000}
export OC_DATABASE_URL=${OC_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/opencode}
export OC_NATS_URL=${OC_NATS_URL:-nats://127.0.0.1:$NATS_PORT}
export OC_OIDC_ISSUER=${OC_OIDC_ISSUER:-http://127.0.0.1:$OIDC_PORT}
export OC_PROVIDER_BASE_URL=${OC_PROVIDER_BASE_URL:-http://127.0.0.1:8090/v1}

# Provider keys are sealed under a key-encryption key; development makes one, once, and keeps it
# with the rest of its state (a deployment brings its own: OC_PROVIDER_KEKS=id:base64 of 32 bytes).
if [ -z "${OC_PROVIDER_KEKS:-}" ]; then
  [ -s "$state/provider-kek" ] || echo "dev:$(head -c 32 /dev/urandom | base64 -w0)" >"$state/provider-kek"
  OC_PROVIDER_KEKS=$(cat "$state/provider-kek")
  export OC_PROVIDER_KEKS
fi
# The fake provider (and self-hosted models in development) listen on loopback.
export OC_PROVIDER_ALLOW_PRIVATE_URLS=${OC_PROVIDER_ALLOW_PRIVATE_URLS:-true}

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
start() { # name port command...
  local name=$1 port=$2; shift 2
  if listening "$port"; then echo "  $name: already running on :$port"; return; fi
  nohup "$@" >"$state/logs/$name.log" 2>&1 &
  echo $! >"$state/$name.pid"
  for _ in $(seq 1 150); do listening "$port" && break; sleep 0.2; done
  listening "$port" || { echo "  $name failed to start; see $state/logs/$name.log"; exit 1; }
  echo "  $name: started on :$port"
}

psql -h 127.0.0.1 -U postgres -tc "SELECT 1 FROM pg_database WHERE datname = 'opencode'" | grep -q 1 \
  || psql -h 127.0.0.1 -U postgres -qc "CREATE DATABASE opencode"

profile=${PROFILE:-debug}   # `make up PROFILE=release` for optimised binaries
echo "building ($profile)…"
if [ "$profile" = release ]; then cargo build --quiet --release --workspace --bins; else cargo build --quiet --workspace --bins; fi
bin=target/$profile
echo "starting:"
start nats "$NATS_PORT" "$OC_TEST_NATS_SERVER" -a 127.0.0.1 -p "$NATS_PORT" -js -sd "$state/nats"
start oidc "$OIDC_PORT" env OIDC_PORT="$OIDC_PORT" node dev/oidc/server.mjs
start fake-provider 8090 env FAKE_ADDR=127.0.0.1:8090 "$bin/fake-provider"
start command-service 8081 "$bin/command-service"
start query-service 8082 "$bin/query-service"
start projector 8083 "$bin/projector"
start llm-worker 8084 "$bin/llm-worker"

cat <<MSG

The system is up.
  writes (REST)        http://127.0.0.1:8081   e.g. POST /org {"name": "Acme"}
  reads (REST, SSE)    http://127.0.0.1:8082   e.g. GET /session/{id}/event
  OpenID provider      $OC_OIDC_ISSUER
  fake LLM provider    http://127.0.0.1:8090/v1
  operations           /healthz /readyz /metrics on 9081 (command), 9082 (query),
                       8083 (projector), 8084 (worker); logs in $state/logs/

Get a token:  TOKEN=\$(make -s token USER=alice)
Try it:       curl -s -X POST localhost:8081/org -H "authorization: Bearer \$TOKEN" \\
                -H 'content-type: application/json' -d '{"name":"Acme"}'
Stop:         make down
MSG
