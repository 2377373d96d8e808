-- Spend, counted where every command-service instance sees it at once, so budgets hold however
-- many replicas run. Exact integers of micro-dollars throughout.
--
-- * Spent: a completed reply's cost is added by a trigger on the event store, in the same
--   transaction as its `message.completed` event: counted exactly once, never lost, whoever
--   (or whatever instance) commits it.
-- * Reserved: when a prompt is accepted under one or more budgets, the most its reply can cost
--   is held (`prompt_admit`, one statement, serialised per budgeted scope); the completion
--   releases it, and so does a failed command (`spend_release`) or, for a reservation whose
--   command never committed (an instance died between the two), the sweep after a TTL.
--
-- A budget admits a prompt only if spent + reserved + the prompt's most stays within its
-- amount, so concurrent prompts cannot together go over it; only a reply that costs more than
-- its estimate can (see docs/architecture.md, "Budgets").

-- Per scope (the keys of `schemas::budget::BudgetScope::counter_key`: org:<org>, ws:<ws>,
-- member:<org>:<usr>, key:<key>), per hour ('h') and per UTC day ('d'), the spend paid with the
-- organization's keys and, apart, with members' own keys.
CREATE TABLE spend_counters (
    scope           text NOT NULL,
    granularity     "char" NOT NULL CHECK (granularity IN ('h', 'd')),
    bucket          timestamp NOT NULL,   -- UTC start of the hour or day
    own_key         boolean NOT NULL,
    organization_id text NOT NULL,
    spent           bigint NOT NULL DEFAULT 0,
    reserved        bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (scope, granularity, bucket, own_key)
);

-- Held for accepted prompts whose reply has not completed.
CREATE TABLE spend_reservations (
    session_id      text NOT NULL,
    message_id      text NOT NULL,        -- the assistant message the reply will be
    organization_id text NOT NULL,
    scopes          text[] NOT NULL,
    own_key         boolean NOT NULL,
    hour            timestamp NOT NULL,   -- where the amount was added
    amount          bigint NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (session_id, message_id)
);
CREATE INDEX spend_reservations_by_age ON spend_reservations (created_at);

-- The window of a budget's period at `now_ts` (UTC): which counters it sums, from when, and
-- when it next moves (a day's or month's end; a rolling window's current hour's end).
CREATE FUNCTION spend_window(period text, hours integer, now_ts timestamp,
    OUT granularity "char", OUT from_ts timestamp, OUT until_ts timestamp)
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE period WHEN 'rolling' THEN 'h' ELSE 'd' END::"char",
           CASE period
               WHEN 'day' THEN date_trunc('day', now_ts)
               WHEN 'month' THEN date_trunc('month', now_ts)
               ELSE date_trunc('hour', now_ts) - make_interval(hours => greatest(hours, 1) - 1)
           END,
           CASE period
               WHEN 'day' THEN date_trunc('day', now_ts) + interval '1 day'
               WHEN 'month' THEN date_trunc('month', now_ts) + interval '1 month'
               ELSE date_trunc('hour', now_ts) + interval '1 hour'
           END
$$;

-- What `p_scope` has spent and holds in a window (own keys' spend only if `include_own`).
CREATE FUNCTION spend_used(p_scope text, include_own boolean, gran "char", from_ts timestamp,
    OUT spent bigint, OUT reserved bigint)
LANGUAGE sql STABLE AS $$
    SELECT coalesce(sum(c.spent), 0)::bigint, coalesce(sum(c.reserved), 0)::bigint
    FROM spend_counters c
    WHERE c.scope = p_scope AND c.granularity = gran AND c.bucket >= from_ts
      AND (include_own OR NOT c.own_key)
$$;

-- Add to the hour's and the day's counters of each scope.
CREATE FUNCTION spend_add(p_org text, p_scopes text[], p_own boolean, p_hour timestamp,
    d_spent bigint, d_reserved bigint) RETURNS void
LANGUAGE sql AS $$
    INSERT INTO spend_counters AS c (scope, granularity, bucket, own_key, organization_id, spent, reserved)
    SELECT s, g.granularity, g.bucket, p_own, p_org, d_spent, d_reserved
    FROM unnest(p_scopes) s,
         (VALUES ('h'::"char", p_hour), ('d'::"char", date_trunc('day', p_hour))) g(granularity, bucket)
    ORDER BY 1, 2, 3
    ON CONFLICT (scope, granularity, bucket, own_key) DO UPDATE
        SET spent = c.spent + EXCLUDED.spent, reserved = c.reserved + EXCLUDED.reserved
$$;

-- Admit a prompt: take its rates and hold `p_amount` for its reply under every budget given,
-- all or nothing, or say what refused it. One statement, so the prompt path pays one round
-- trip for all its limits.
--   r_*: the rates to take (keys, costs, windows: see rate_limit_take_all, migrations/0021);
--   b_*: the budgets (id, scope key, amount, period, rolling hours, whether own keys count);
--   p_scopes: the counters the hold goes to (the budgets' scopes).
-- Answers no row when admitted (or admitted already: the command ran again after a conflict,
-- and the reservation row, written even when nothing is held, says so). Otherwise one row:
-- a budget that refused (its id, what it has spent and holds, seconds to retry: 5 when replies
-- still running hold what is missing, else when the window next moves), or a rate that refused
-- (its 1-based index and seconds until it would fit).
CREATE FUNCTION prompt_admit(
    p_session text, p_message text, p_org text, p_scopes text[], p_own boolean, p_amount bigint,
    r_keys text[], r_costs float8[], r_windows float8[],
    b_ids text[], b_scopes text[], b_amounts bigint[], b_periods text[], b_hours integer[],
    b_include_own boolean[])
RETURNS TABLE (budget_id text, spent bigint, reserved bigint, retry_after_secs float8,
               rate_index integer)
LANGUAGE plpgsql AS $$
DECLARE
    now_ts timestamp := clock_timestamp() AT TIME ZONE 'UTC';
    rate record;
BEGIN
    PERFORM 1 FROM spend_reservations r WHERE r.session_id = p_session AND r.message_id = p_message;
    IF FOUND THEN
        RETURN;
    END IF;
    -- Commits without waiting for its WAL to reach the disk: prompts under one budget queue on
    -- its locks, and each would otherwise hold them through a disk flush. Safe: the prompt's own
    -- commit comes after and is flushed, and WAL is flushed in order, so a prompt that survives
    -- a crash has its hold too; one lost with a crash had no prompt. (Rates are unlogged.)
    PERFORM set_config('synchronous_commit', 'off', true);
    -- One admission at a time per budgeted scope, across instances; locks taken in one order,
    -- so two prompts never wait on each other.
    PERFORM pg_advisory_xact_lock(hashtext('spend'), hashtext(s))
    FROM (SELECT DISTINCT x AS s FROM unnest(b_scopes) x ORDER BY 1) locks;
    RETURN QUERY
    SELECT b.id, u.spent, u.reserved,
           CASE WHEN u.spent + p_amount <= b.amount THEN 5
                ELSE greatest(1, ceil(extract(epoch FROM w.until_ts - now_ts))) END::float8,
           NULL::integer
    FROM unnest(b_ids, b_scopes, b_amounts, b_periods, b_hours, b_include_own)
             WITH ORDINALITY AS b(id, scope, amount, period, hours, include_own, n),
         LATERAL spend_window(b.period, b.hours, now_ts) w,
         LATERAL spend_used(b.scope, b.include_own, w.granularity, w.from_ts) u
    WHERE u.spent + u.reserved + p_amount > b.amount
    ORDER BY b.n
    LIMIT 1;
    IF FOUND THEN
        RETURN;
    END IF;
    IF coalesce(array_length(r_keys, 1), 0) > 0 THEN
        SELECT * INTO rate FROM rate_limit_take_all(
            r_keys,
            ARRAY(SELECT make_interval(secs => c) FROM unnest(r_costs) WITH ORDINALITY a(c, n) ORDER BY n),
            ARRAY(SELECT make_interval(secs => w) FROM unnest(r_windows) WITH ORDINALITY a(w, n) ORDER BY n));
        IF FOUND THEN
            RETURN QUERY SELECT NULL::text, NULL::bigint, NULL::bigint,
                extract(epoch FROM rate.wait)::float8, rate.refused;
            RETURN;
        END IF;
    END IF;
    INSERT INTO spend_reservations (session_id, message_id, organization_id, scopes, own_key, hour, amount)
    VALUES (p_session, p_message, p_org, p_scopes, p_own, date_trunc('hour', now_ts), p_amount);
    PERFORM spend_add(p_org, p_scopes, p_own, date_trunc('hour', now_ts), 0, p_amount);
END $$;

-- Give back what a reservation holds (idempotent: a second call finds nothing).
CREATE FUNCTION spend_unhold(p_session text, p_message text) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    r spend_reservations;
BEGIN
    DELETE FROM spend_reservations
    WHERE session_id = p_session AND message_id = p_message RETURNING * INTO r;
    IF FOUND THEN
        PERFORM spend_add(r.organization_id, r.scopes, r.own_key, r.hour, 0, -r.amount);
    END IF;
END $$;

-- What a failed prompt command calls. Not flushed at commit: a release lost with a crash leaves
-- the hold to the sweep.
CREATE FUNCTION spend_release(p_session text, p_message text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM set_config('synchronous_commit', 'off', true);
    PERFORM spend_unhold(p_session, p_message);
END $$;

-- Release reservations older than `ttl` (their command never committed, or their reply ran
-- longer than anything should); returns how many.
CREATE FUNCTION spend_sweep(ttl interval) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    r spend_reservations;
    n integer := 0;
BEGIN
    FOR r IN DELETE FROM spend_reservations WHERE created_at < clock_timestamp() - ttl RETURNING * LOOP
        PERFORM spend_add(r.organization_id, r.scopes, r.own_key, r.hour, 0, -r.amount);
        n := n + 1;
    END LOOP;
    RETURN n;
END $$;

-- A completed reply: release what its prompt held, and count what it cost toward the
-- organization, its workspace, its member and its API key (the same keys as counter_key).
CREATE FUNCTION events_settle_spend() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    m json := NEW.payload -> 'properties' -> 'message';
    org text := NEW.metadata ->> 'organization_id';
    cost bigint := coalesce((m -> 'cost' ->> 'microDollars')::bigint, 0);
    scopes text[];
BEGIN
    -- (never spend_release here: that would let the event's own commit skip the flush)
    PERFORM spend_unhold(NEW.aggregate_id, m ->> 'id');
    IF cost > 0 AND org IS NOT NULL THEN
        scopes := array_remove(ARRAY[
            'org:' || org,
            'ws:' || (m ->> 'workspaceID'),
            'member:' || org || ':' || (m ->> 'userID'),
            'key:' || (m ->> 'apiKeyID')
        ], NULL);
        PERFORM spend_add(org, scopes, coalesce((m ->> 'ownKey')::boolean, false),
                          date_trunc('hour', clock_timestamp() AT TIME ZONE 'UTC'), cost, 0);
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER events_settle_spend AFTER INSERT ON events
    FOR EACH ROW WHEN (NEW.event_type = 'message.completed')
    EXECUTE FUNCTION events_settle_spend();

-- The budgets, as the projector keeps them for reads (`GET /org/{org}/budget`).
CREATE TABLE rm_budgets (
    budget_id       text PRIMARY KEY,
    organization_id text NOT NULL,
    budget          jsonb NOT NULL
);
CREATE INDEX rm_budgets_by_org ON rm_budgets (organization_id);

GRANT SELECT ON rm_budgets, spend_counters TO oc_reader;
ALTER TABLE rm_budgets ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_reads ON rm_budgets FOR SELECT TO oc_reader
    USING (organization_id = ANY (oc_caller_organizations()));
ALTER TABLE spend_counters ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_reads ON spend_counters FOR SELECT TO oc_reader
    USING (organization_id = ANY (oc_caller_organizations()));
