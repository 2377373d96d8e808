-- The organization a session belongs to, from the event store, for the one read that must not
-- wait for the projector: opening a session's event stream right after creating the session
-- (query-service/src/access.rs, `session_as_committed`). SECURITY DEFINER: readers cannot read
-- `events` themselves; this reveals the organization of a session id the caller already holds,
-- and the service answers only after checking the caller's membership in it.
CREATE FUNCTION oc_session_organization(id text) RETURNS text
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public AS $$
    SELECT metadata->>'organization_id' FROM events
    WHERE aggregate_type = 'session' AND aggregate_id = id AND sequence = 1
$$;
REVOKE ALL ON FUNCTION oc_session_organization(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION oc_session_organization(text) TO oc_reader;
