-- A burst of one organization's budgeted prompts admitted in shared statements
-- (command-service/src/spend.rs): the admissions that arrive while one is running go out
-- together, as one call of `prompt_admit_all`, which takes every lock they need once and then
-- decides each in the order they came, each seeing the holds and rates the ones before it took.
-- Until now every prompt took its budgets' locks in a statement of its own, so fifty prompts
-- under one organization's budget went through the database one statement at a time, each
-- holding the locks while it waited for a core.

-- `prompt_admit`'s decision (0022), for a caller that already holds the budgets' locks and
-- gives the time to decide at (one time for a whole batch: every admission's counters fall in
-- the hour the batch locked up front).
CREATE FUNCTION prompt_admit_locked(
    now_ts timestamp,
    p_session text, p_message text, p_org text, p_scopes text[], p_own boolean, p_amount bigint,
    r_keys text[], r_costs float8[], r_windows float8[],
    b_ids text[], b_scopes text[], b_amounts bigint[], b_periods text[], b_hours integer[],
    b_include_own boolean[])
RETURNS TABLE (budget_id text, spent bigint, reserved bigint, retry_after_secs float8,
               rate_index integer)
LANGUAGE plpgsql AS $$
DECLARE
    rate record;
BEGIN
    PERFORM 1 FROM spend_reservations r WHERE r.session_id = p_session AND r.message_id = p_message;
    IF FOUND THEN
        RETURN;
    END IF;
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

-- One admission, as before (instances of the release before this one call it): its locks, then
-- the decision above.
CREATE OR REPLACE FUNCTION prompt_admit(
    p_session text, p_message text, p_org text, p_scopes text[], p_own boolean, p_amount bigint,
    r_keys text[], r_costs float8[], r_windows float8[],
    b_ids text[], b_scopes text[], b_amounts bigint[], b_periods text[], b_hours integer[],
    b_include_own boolean[])
RETURNS TABLE (budget_id text, spent bigint, reserved bigint, retry_after_secs float8,
               rate_index integer)
LANGUAGE plpgsql AS $$
BEGIN
    -- Not flushed at commit: see 0022 (the prompt's own, flushed commit follows).
    PERFORM set_config('synchronous_commit', 'off', true);
    PERFORM pg_advisory_xact_lock(hashtext('spend'), hashtext(s))
    FROM (SELECT DISTINCT x AS s FROM unnest(b_scopes) x ORDER BY 1) locks;
    RETURN QUERY SELECT * FROM prompt_admit_locked(clock_timestamp() AT TIME ZONE 'UTC',
        p_session, p_message, p_org, p_scopes, p_own, p_amount, r_keys, r_costs, r_windows,
        b_ids, b_scopes, b_amounts, b_periods, b_hours, b_include_own);
END $$;

-- A JSON array of strings or numbers as text[] (cast on to the element type), in order.
CREATE FUNCTION jsonb_texts(j jsonb) RETURNS text[]
LANGUAGE sql IMMUTABLE AS $$
    SELECT coalesce(array_agg(t ORDER BY n), '{}')
    FROM jsonb_array_elements_text(coalesce(j, '[]')) WITH ORDINALITY x(t, n)
$$;

-- Admit a batch of prompts: `admissions` is a JSON array of objects with `prompt_admit`'s
-- arguments (see `spend::Admit` in the command service). Returns a row for each admission that
-- was refused (its 1-based place in the array, then what `prompt_admit` returns); those with no
-- row were admitted.
--
-- Every lock the batch can need is taken first, in the order every other taker of these rows
-- follows (a prompt's admission, a reply's completion: 0028): the budgets' advisory locks, then
-- the rate rows in key order, then the hour's and day's spend counters in key order. Deciding
-- admission by admission would take them interleaved (one prompt's counters before the next
-- one's rates), and could deadlock with a completion taking the same rows in order.
CREATE FUNCTION prompt_admit_all(admissions jsonb)
RETURNS TABLE (n integer, budget_id text, spent bigint, reserved bigint, retry_after_secs float8,
               rate_index integer)
LANGUAGE plpgsql AS $$
DECLARE
    now_ts timestamp := clock_timestamp() AT TIME ZONE 'UTC';
    hour_ts timestamp := date_trunc('hour', now_ts);
    rate_keys text[];
    counter_scopes text[];
    counter_owns boolean[];
    counter_orgs text[];
    a record;
BEGIN
    -- Not flushed at commit: see 0022.
    PERFORM set_config('synchronous_commit', 'off', true);
    PERFORM pg_advisory_xact_lock(hashtext('spend'), hashtext(s))
    FROM (SELECT DISTINCT s FROM jsonb_array_elements(admissions) x,
              unnest(jsonb_texts(x -> 'budgetScopes')) s ORDER BY 1) locks;
    rate_keys := ARRAY(SELECT DISTINCT k FROM jsonb_array_elements(admissions) x,
                           unnest(jsonb_texts(x -> 'rateKeys')) k ORDER BY 1);
    INSERT INTO rate_limits (key, tat) SELECT k, clock_timestamp() FROM unnest(rate_keys) k ORDER BY k
    ON CONFLICT (key) DO NOTHING;
    PERFORM 1 FROM rate_limits WHERE key = ANY (rate_keys) ORDER BY key FOR UPDATE;
    SELECT array_agg(s ORDER BY s, o), array_agg(o ORDER BY s, o), array_agg(org ORDER BY s, o)
    INTO counter_scopes, counter_owns, counter_orgs
    FROM (SELECT DISTINCT s, (x ->> 'ownKey')::boolean AS o, x ->> 'organization' AS org
          FROM jsonb_array_elements(admissions) x, unnest(jsonb_texts(x -> 'heldIn')) s) k;
    INSERT INTO spend_counters (scope, granularity, bucket, own_key, organization_id)
    SELECT k.s, g.granularity, g.bucket, k.o, k.org
    FROM unnest(counter_scopes, counter_owns, counter_orgs) k(s, o, org),
         (VALUES ('h'::"char", hour_ts), ('d'::"char", date_trunc('day', hour_ts))) g(granularity, bucket)
    ORDER BY 1, 2, 3, 4
    ON CONFLICT (scope, granularity, bucket, own_key) DO NOTHING;
    PERFORM 1
    FROM spend_counters c, unnest(counter_scopes, counter_owns) k(s, o),
         (VALUES ('h'::"char", hour_ts), ('d'::"char", date_trunc('day', hour_ts))) g(granularity, bucket)
    WHERE c.scope = k.s AND c.own_key = k.o AND c.granularity = g.granularity AND c.bucket = g.bucket
    ORDER BY c.scope, c.granularity, c.bucket, c.own_key
    FOR UPDATE OF c;
    FOR a IN SELECT x.value AS v, x.ordinality::integer AS i
             FROM jsonb_array_elements(admissions) WITH ORDINALITY x ORDER BY x.ordinality LOOP
        RETURN QUERY SELECT a.i, r.* FROM prompt_admit_locked(now_ts,
            a.v ->> 'session', a.v ->> 'message', a.v ->> 'organization',
            jsonb_texts(a.v -> 'heldIn'), (a.v ->> 'ownKey')::boolean, (a.v ->> 'amount')::bigint,
            jsonb_texts(a.v -> 'rateKeys'), jsonb_texts(a.v -> 'rateCosts')::float8[],
            jsonb_texts(a.v -> 'rateWindows')::float8[],
            jsonb_texts(a.v -> 'budgetIds'), jsonb_texts(a.v -> 'budgetScopes'),
            jsonb_texts(a.v -> 'budgetAmounts')::bigint[], jsonb_texts(a.v -> 'budgetPeriods'),
            jsonb_texts(a.v -> 'budgetHours')::integer[],
            jsonb_texts(a.v -> 'budgetIncludeOwn')::boolean[]) r;
    END LOOP;
END $$;
