# The two commands of the README: `make up` (the whole system) and `make test` (every test).
.PHONY: up down token test lint schemas bench deploy-check chaos

up:
	@dev/up.sh

down:
	@dev/down.sh

# A bearer token for a demo user (alice, bob, carol, or any name): make token USER=alice
token:
	@node dev/oidc/token.mjs $(USER) $${OC_OIDC_ISSUER:-http://127.0.0.1:3000}

# Installs/starts PostgreSQL, NATS 2.10+ and the OpenID provider's package if missing, builds the
# service binaries the end-to-end tests start, and runs every test.
test:
	@deps=$$(dev/deps.sh) && eval "$$deps" && \
	cargo build --workspace --bins && \
	if cargo nextest --version >/dev/null 2>&1; then \
		cargo nextest run --workspace --no-fail-fast; \
	else \
		cargo test --workspace --no-fail-fast; \
	fi

lint:
	cargo fmt --all --check
	cargo clippy --all-targets -- -D warnings

# Benchmarks against release binaries (numbers go in docs/performance.md, never in tests).
bench:
	@deps=$$(dev/deps.sh) && eval "$$deps" && \
	cargo build --release --workspace --bins && \
	cargo bench -p e2e-tests

# Regenerate the checked-in JSON Schemas and OpenAPI documents after changing bus or API types.
schemas:
	UPDATE_SCHEMAS=1 cargo test -p schemas checked_in

# Validates compose/ (Compose Specification), the Kubernetes manifests and the NATS configurations,
# offline.
deploy-check:
	@dev/deploy-check.sh

# The fault suite's long profile: 1,000 prompts while service instances are killed and restarted
# one after another, and 1,000 more while NATS nodes are killed or frozen and PostgreSQL crashes
# (the short profiles, 48 and 80 prompts, are part of `make test`).
chaos:
	@deps=$$(dev/deps.sh) && eval "$$deps" && \
	cargo build --workspace --bins && \
	OC_CHAOS_PROMPTS=$${OC_CHAOS_PROMPTS:-1000} cargo nextest run -p e2e-tests --no-capture chaos
