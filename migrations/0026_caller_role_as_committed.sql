-- The caller's role in an organization, from the event store, for the read that must not wait
-- for the projector (query-service/src/access.rs, `session_as_committed`): a session created
-- a moment ago in an organization created a moment ago, whose owner's membership the read
-- models may not show yet. The last membership event naming the caller decides; a removal
-- means no role. SECURITY DEFINER: readers cannot read `events` themselves; this answers only
-- for the caller (`oc.user_id`, as the read models' row-level security), never another user.
CREATE FUNCTION oc_caller_role_as_committed(org text) RETURNS text
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public AS $$
    SELECT CASE WHEN event_type = 'organization.member_removed' THEN NULL
                ELSE payload->'properties'->>'role' END
    FROM events
    WHERE aggregate_type = 'organization' AND aggregate_id = org
      AND event_type IN ('organization.member_added', 'organization.member_role_changed',
                         'organization.member_removed')
      AND payload->'properties'->>'userID' = current_setting('oc.user_id', true)
    ORDER BY sequence DESC
    LIMIT 1
$$;
REVOKE ALL ON FUNCTION oc_caller_role_as_committed(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION oc_caller_role_as_committed(text) TO oc_reader;
