#!/usr/bin/env bash
# `make up`: starts the whole system on this machine, reusing what already runs:
# PostgreSQL (database `opencode`), a NATS server 2.10+ with JetStream, the development OpenID
# provider, the fake LLM provider and the four services. State and logs go to .dev-state/.
set -euo pipefail
cd "$(dirname "$0")/.."
deps=$(dev/deps.sh)   # (a failure stops here: set -e)
eval "$deps"
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
start oidc "$OIDC_PORT" env OIDC_PORT="$OIDC_PORT" \
  OIDC_WEB_REDIRECT_URIS=http://127.0.0.1:8082/auth/callback,http://127.0.0.1:8080/auth/callback \
  node dev/oidc/server.mjs
start fake-provider 8090 env FAKE_ADDR=127.0.0.1:8090 "$bin/fake-provider"
if [ "${CLUSTER:-}" != 1 ]; then
  start nats "$NATS_PORT" "$OC_TEST_NATS_SERVER" -c compose/nats/liveness.conf -a 127.0.0.1 -p "$NATS_PORT" -js -sd "$state/nats"
  start command-service 8081 "$bin/command-service"
  start query-service 8082 "$bin/query-service"
  start projector 8083 "$bin/projector"
  start llm-worker 8084 "$bin/llm-worker"
else
  # `make up CLUSTER=1`: three NATS nodes (stream and consumers replicated ×3), two instances
  # of every service on ports of their own, and nginx (Debian's) as the one origin on :8080.
  routes=nats://127.0.0.1:6333,nats://127.0.0.1:6334,nats://127.0.0.1:6335
  export OC_NATS_URL=nats://127.0.0.1:4333,nats://127.0.0.1:4334,nats://127.0.0.1:4335
  export OC_STREAM_REPLICAS=3
  # Two instances of every service share this machine's PostgreSQL (max_connections 100 by
  # default): pools of 7 keep them within it at full load (12 × 7 + 6 = 90; docs/scaling.md,
  # "Database connections").
  export OC_DATABASE_POOL_SIZE=${OC_DATABASE_POOL_SIZE:-7}
  for i in 0 1 2; do
    start "nats-$i" $((4333 + i)) "$OC_TEST_NATS_SERVER" -c compose/nats/liveness.conf -a 127.0.0.1 -p $((4333 + i)) -js \
      -sd "$state/nats-$i" -n "n$i" --cluster_name opencode \
      --cluster nats://127.0.0.1:$((6333 + i)) --routes "$routes"
  done
  export OC_OIDC_REDIRECT_URL=http://127.0.0.1:8080/auth/callback
  for i in 0 1; do
    start "command-service-$i" $((8081 + 10 * i)) env OC_COMMAND_ADDR=127.0.0.1:$((8081 + 10 * i)) \
      OC_COMMAND_OPS_ADDR=127.0.0.1:$((9081 + 10 * i)) "$bin/command-service"
    start "query-service-$i" $((8082 + 10 * i)) env OC_QUERY_ADDR=127.0.0.1:$((8082 + 10 * i)) \
      OC_QUERY_OPS_ADDR=127.0.0.1:$((9082 + 10 * i)) "$bin/query-service"
    start "projector-$i" $((8083 + 10 * i)) env OC_PROJECTOR_ADDR=127.0.0.1:$((8083 + 10 * i)) \
      "$bin/projector"
    start "llm-worker-$i" $((8084 + 10 * i)) env OC_WORKER_ADDR=127.0.0.1:$((8084 + 10 * i)) \
      "$bin/llm-worker"
  done
  if ! command -v nginx >/dev/null; then
    echo "  installing nginx (Debian)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nginx \
      >"$state/logs/nginx-install.log" 2>&1 \
      || { echo "  cannot install nginx; see $state/logs/nginx-install.log"; exit 1; }
  fi
  front="$PWD/$state/nginx"
  mkdir -p "$front/logs" "$front/tmp"
  chmod 777 "$front/tmp"   # nginx's workers may run as another user
  sed -e "s|command-service:8081;|127.0.0.1:8081; server 127.0.0.1:8091;|" \
      -e "s|query-service:8082;|127.0.0.1:8082; server 127.0.0.1:8092;|" \
      -e "s|^worker_processes auto;|worker_processes 2; pid $front/nginx.pid; error_log $front/logs/error.log;|" \
      -e "s|^http {|http { access_log $front/logs/access.log; client_body_temp_path $front/tmp/body; proxy_temp_path $front/tmp/proxy; fastcgi_temp_path $front/tmp/fcgi; uwsgi_temp_path $front/tmp/uwsgi; scgi_temp_path $front/tmp/scgi;|" \
      -e "s|listen 8080;|listen 127.0.0.1:8080;|" \
      compose/nginx/nginx.conf >"$front/nginx.conf"
  start front 8080 nginx -p "$front" -c "$front/nginx.conf" -g 'daemon off;'
fi

cat <<MSG

The system is up.
  writes (REST)        http://127.0.0.1:8081   e.g. POST /org {"name": "Acme"}
  reads (REST, SSE)    http://127.0.0.1:8082   e.g. GET /session/{id}/event
  one origin (CLUSTER=1) http://127.0.0.1:8080: nginx in front of two instances of each service
  OpenID provider      $OC_OIDC_ISSUER
  fake LLM provider    http://127.0.0.1:8090/v1
  operations           /healthz /readyz /metrics on 9081 (command), 9082 (query),
                       8083 (projector), 8084 (worker); logs in $state/logs/

Get a token:  TOKEN=\$(make -s token USER=alice)
Try it:       curl -s -X POST localhost:8081/org -H "authorization: Bearer \$TOKEN" \\
                -H 'content-type: application/json' -d '{"name":"Acme"}'
Stop:         make down
MSG
