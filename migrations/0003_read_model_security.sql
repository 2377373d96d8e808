-- A second wall around tenant data: row-level security on the read models.
--
-- The query service reads as role `oc_reader` with `oc.user_id` set to the caller, so a query
-- that forgot its `organization_id` filter still sees only the caller's organizations. Every
-- route filters by organization anyway; this holds even if one does not.

-- Roles are shared by every database of the cluster, and several databases may be migrated at
-- once (tests do), so creation tolerates a concurrent creator.
DO $$
BEGIN
    CREATE ROLE oc_reader NOLOGIN;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL;
END $$;

GRANT USAGE ON SCHEMA public TO oc_reader;
GRANT SELECT ON rm_organizations, rm_members, rm_workspaces, rm_sessions, rm_messages TO oc_reader;
-- Positions hold only aggregate ids and sequences (for read-your-writes), no tenant data.
GRANT SELECT ON rm_positions TO oc_reader;

-- The caller's organizations. SECURITY DEFINER: it reads rm_members as the owner, so the policy
-- on rm_members can use it without recursing into itself.
CREATE FUNCTION oc_caller_organizations() RETURNS text[]
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public AS $$
    SELECT coalesce(array_agg(organization_id), '{}')
    FROM rm_members
    WHERE user_id = current_setting('oc.user_id', true)
$$;
REVOKE ALL ON FUNCTION oc_caller_organizations() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION oc_caller_organizations() TO oc_reader;

ALTER TABLE rm_organizations ENABLE ROW LEVEL SECURITY;
ALTER TABLE rm_members ENABLE ROW LEVEL SECURITY;
ALTER TABLE rm_workspaces ENABLE ROW LEVEL SECURITY;
ALTER TABLE rm_sessions ENABLE ROW LEVEL SECURITY;
ALTER TABLE rm_messages ENABLE ROW LEVEL SECURITY;

CREATE POLICY tenant_reads ON rm_organizations FOR SELECT TO oc_reader
    USING (organization_id = ANY (oc_caller_organizations()));
CREATE POLICY tenant_reads ON rm_members FOR SELECT TO oc_reader
    USING (organization_id = ANY (oc_caller_organizations()));
CREATE POLICY tenant_reads ON rm_workspaces FOR SELECT TO oc_reader
    USING (organization_id = ANY (oc_caller_organizations()));
CREATE POLICY tenant_reads ON rm_sessions FOR SELECT TO oc_reader
    USING (organization_id = ANY (oc_caller_organizations()));
CREATE POLICY tenant_reads ON rm_messages FOR SELECT TO oc_reader
    USING (organization_id = ANY (oc_caller_organizations()));
