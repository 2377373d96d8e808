-- Notifications the query services listen to (query-service/src/notifications.rs), so waiting
-- for the read models or for a change of access holds no pooled connection and polls nothing.

-- `rm_progress`: the read models of an aggregate moved (payload: the aggregate id). Sent at the
-- projector's commit, once per aggregate and transaction (PostgreSQL folds equal payloads).
CREATE FUNCTION notify_rm_progress() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('rm_progress', NEW.aggregate_id);
    RETURN NULL;
END $$;

CREATE TRIGGER notify_rm_progress AFTER INSERT OR UPDATE ON rm_positions
    FOR EACH ROW EXECUTE FUNCTION notify_rm_progress();

-- The last committed sequence of an aggregate, for the readers that must refuse a consistency
-- token no write ever reached. SECURITY DEFINER: readers cannot read `events` themselves; this
-- reveals one number about an id the caller already holds. The aggregate type follows from the
-- id's prefix, so the lookup uses the primary key.
CREATE FUNCTION oc_committed_sequence(id text) RETURNS bigint
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public AS $$
    SELECT coalesce(max(sequence), 0) FROM events
    WHERE aggregate_type = CASE split_part(id, '_', 1)
            WHEN 'org' THEN 'organization' WHEN 'wrk' THEN 'workspace'
            WHEN 'ses' THEN 'session' WHEN 'key' THEN 'api_key' END
      AND aggregate_id = id
$$;
REVOKE ALL ON FUNCTION oc_committed_sequence(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION oc_committed_sequence(text) TO oc_reader;

-- `oc_access`: a user's right to read may have shrunk (payload: the user id): a membership
-- removed or changed, an API key revoked, a browser session signed out, an account erased.
-- Open event streams of that user re-check their access when it arrives.
CREATE FUNCTION notify_access_user() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('oc_access', OLD.user_id);
    RETURN NULL;
END $$;

CREATE TRIGGER notify_access AFTER UPDATE OR DELETE ON rm_members
    FOR EACH ROW EXECUTE FUNCTION notify_access_user();
CREATE TRIGGER notify_access AFTER UPDATE OR DELETE ON rm_workspace_members
    FOR EACH ROW EXECUTE FUNCTION notify_access_user();
CREATE TRIGGER notify_access AFTER UPDATE OF revoked_at ON api_keys
    FOR EACH ROW EXECUTE FUNCTION notify_access_user();
CREATE TRIGGER notify_access AFTER UPDATE OF revoked_at ON login_sessions
    FOR EACH ROW EXECUTE FUNCTION notify_access_user();
CREATE TRIGGER notify_access AFTER UPDATE OF erased_at ON users
    FOR EACH ROW EXECUTE FUNCTION notify_access_user();
