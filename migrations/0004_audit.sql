-- The audit trail organization admins read: membership, role, organization and workspace
-- changes, derived from the event log by the projector (one row per event, so rebuildable).

CREATE TABLE rm_audit (
    event_id        text PRIMARY KEY,   -- the envelope id, <aggregateID>:<sequence>
    organization_id text NOT NULL,
    time            bigint NOT NULL,
    actor           text,               -- usr_… or service:<name>; never personal data
    event_type      text NOT NULL,
    details         jsonb NOT NULL      -- the event's properties
);
CREATE INDEX rm_audit_by_org ON rm_audit (organization_id, time DESC, event_id DESC);

GRANT SELECT ON rm_audit TO oc_reader;
ALTER TABLE rm_audit ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_reads ON rm_audit FOR SELECT TO oc_reader
    USING (organization_id = ANY (oc_caller_organizations()));
