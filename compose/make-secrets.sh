#!/usr/bin/env bash
# Make the secret files compose.yaml hands to its services (compose/secrets/, not in Git):
# random passwords, a provider key-encryption key, and the NATS users' passwords as the NATS
# servers read them (nats.env, sourced into their environment at start). Existing files are kept, so it is safe to run again.
set -euo pipefail
cd "$(dirname "$0")"
mkdir -p secrets
chmod 700 secrets
random() { head -c 24 /dev/urandom | base64 | tr -d '/+=' | head -c 32; }
make() { [ -s "secrets/$1" ] || { printf '%s' "$2" > "secrets/$1"; chmod 600 "secrets/$1"; }; }

make postgres_password "$(random)"
make reader_db_password "$(random)"
make database_url "postgres://postgres:$(cat secrets/postgres_password)@postgres:5432/opencode"
make provider_keks "compose:$(head -c 32 /dev/urandom | base64 -w0)"
make oidc_client_secret "oc-web-secret"   # the development OpenID provider's; replace with yours
for service in command worker projector query; do
  make "nats_${service}_password" "$(random)"
done
make nats.env "$(for service in command worker projector query; do
  upper=$(echo "$service" | tr a-z A-Z)
  printf "OC_NATS_%s_PASSWORD='%s'\n" "$upper" "$(cat "secrets/nats_${service}_password")"
done)"
echo "secrets in $(pwd)/secrets"
