-- Provider connections as readers see them: never the key, only its fingerprint and last four
-- characters. A member's own connection (owner_id set) is visible to that member only.
CREATE TABLE rm_connections (
    connection_id   text PRIMARY KEY,
    organization_id text NOT NULL,
    owner_id        text,
    kind            text NOT NULL,
    provider_id     text NOT NULL,
    name            text NOT NULL,
    base_url        text NOT NULL,
    headers         jsonb NOT NULL,
    models          jsonb NOT NULL,
    enabled         boolean NOT NULL,
    fingerprint     text NOT NULL,
    key_last4       text NOT NULL,
    updated_at      bigint NOT NULL
);
CREATE INDEX rm_connections_by_org ON rm_connections (organization_id, connection_id);

-- Whether members may bring their own keys, and for which providers (all if empty).
ALTER TABLE rm_organizations ADD COLUMN byok_allowed boolean NOT NULL DEFAULT false;
ALTER TABLE rm_organizations ADD COLUMN byok_providers jsonb NOT NULL DEFAULT '[]';

GRANT SELECT ON rm_connections TO oc_reader;
ALTER TABLE rm_connections ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_reads ON rm_connections FOR SELECT TO oc_reader
    USING (organization_id = ANY (oc_caller_organizations())
           AND (owner_id IS NULL OR owner_id = current_setting('oc.user_id', true)));
