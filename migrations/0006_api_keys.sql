-- Personal API keys.
--
-- `api_keys` is the credential store the authenticator checks on every key-authenticated
-- request: a SHA-256 of the secret (the secret itself is shown once and never stored), who it
-- acts as, the one organization it is limited to, expiry and revocation. It is written by the
-- command service before (create) or instead of waiting for (revoke) the key's events, so a
-- revocation takes effect at once. The events (`api_key.created/revoked`) feed the audit trail
-- and `rm_api_keys`, the owner's listing.

CREATE TABLE api_keys (
    key_id          text PRIMARY KEY,
    user_id         text NOT NULL REFERENCES users (user_id),
    organization_id text NOT NULL,
    secret_sha256   bytea NOT NULL,
    expires_at      timestamptz NOT NULL,
    revoked_at      timestamptz
);

CREATE TABLE rm_api_keys (
    key_id          text PRIMARY KEY,
    organization_id text NOT NULL,
    user_id         text NOT NULL,
    name            text NOT NULL,
    created_at      bigint NOT NULL,
    expires_at      bigint NOT NULL,
    revoked_at      bigint
);
CREATE INDEX rm_api_keys_by_user ON rm_api_keys (user_id, key_id);

-- A key sees only its own organization: `oc.org_scope` (set for key-authenticated reads)
-- narrows the caller's organizations to that one.
CREATE OR REPLACE FUNCTION oc_caller_organizations() RETURNS text[]
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public AS $$
    SELECT coalesce(array_agg(organization_id), '{}')
    FROM rm_members
    WHERE user_id = current_setting('oc.user_id', true)
      AND (coalesce(current_setting('oc.org_scope', true), '') = ''
           OR organization_id = current_setting('oc.org_scope', true))
$$;

GRANT SELECT ON rm_api_keys TO oc_reader;
ALTER TABLE rm_api_keys ENABLE ROW LEVEL SECURITY;
-- Keys are private to their owner.
CREATE POLICY own_keys ON rm_api_keys FOR SELECT TO oc_reader
    USING (user_id = current_setting('oc.user_id', true)
           AND organization_id = ANY (oc_caller_organizations()));
