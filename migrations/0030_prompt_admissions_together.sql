-- A burst of one organization's budgeted prompts admitted in shared statements
-- (command-service/src/spend.rs): the admissions that arrive while one is running go out
-- together, as one call of `prompt_admit_all`, which takes every lock they need once and then
-- decides each in the order they came, each seeing the holds and rates the ones before it took.
-- Until now every prompt took its budgets' locks in a statement of its own, so fifty prompts
-- under one organization's budget went through the database one statement at a time, each
-- holding the locks while it waited for a core.

-- A JSON array of strings or numbers as text[] (cast on to the element type), in order.
CREATE FUNCTION jsonb_texts(j jsonb) RETURNS text[]
LANGUAGE sql IMMUTABLE AS $$
    SELECT coalesce(array_agg(t ORDER BY n), '{}')
    FROM jsonb_array_elements_text(coalesce(j, '[]')) WITH ORDINALITY x(t, n)
$$;

-- Admit a batch of prompts: `admissions` is a JSON array of objects with `prompt_admit`'s
-- arguments (see `spend::Admit` in the command service). Returns a row for each admission that
-- was refused (its 1-based place in the array, then what `prompt_admit` returns); those with no
-- row were admitted. Decides what admitting them one by one, in order, with `prompt_admit`
-- decides (the tests compare the two), but reads each budget's use and each rate once and
-- writes each counter and rate row once, however many of the batch's prompts fall under it:
-- rows that every prompt of an organization updates are not rewritten once per prompt.
--
-- Every lock the batch needs is taken first, in the order every other taker of these rows
-- follows (a prompt's admission, a reply's completion: 0028): the budgets' advisory locks, then
-- the rate rows in key order, then the hour's and day's spend counters in key order.
CREATE FUNCTION prompt_admit_all(admissions jsonb)
RETURNS TABLE (n integer, budget_id text, spent bigint, reserved bigint, retry_after_secs float8,
               rate_index integer)
LANGUAGE plpgsql AS $$
DECLARE
    now_ts timestamp := clock_timestamp() AT TIME ZONE 'UTC';
    now_tz timestamptz := clock_timestamp();
    hour_ts timestamp := date_trunc('hour', now_ts);
    -- Each rate key's theoretical arrival time, as this batch has moved it.
    rate_keys text[];
    rate_tats timestamptz[];
    -- Each budget's use when the batch began, and when its window next moves.
    budget_ids text[];
    budget_spent bigint[];
    budget_reserved bigint[];
    budget_until timestamp[];
    -- What the batch has held so far, per counter scope and whether it is an own key's.
    held_scopes text[] := '{}';
    held_owns boolean[] := '{}';
    held_orgs text[] := '{}';
    held bigint[] := '{}';
    -- The admitted, for their reservations, and so a prompt asked twice holds once.
    admitted jsonb[] := '{}';
    admitted_ids text[] := '{}';
    a jsonb;
    i integer := 0;
    j integer;
    k integer;
    refused boolean;
    use_reserved bigint;
    t timestamptz;
    costs interval[];
    b_scopes text[];
    b_amounts bigint[];
    b_include_own boolean[];
    r_keys text[];
    r_windows float8[];
    scopes text[];
    own boolean;
    amount bigint;
BEGIN
    -- Not flushed at commit: see 0022.
    PERFORM set_config('synchronous_commit', 'off', true);
    PERFORM pg_advisory_xact_lock(hashtext('spend'), hashtext(s))
    FROM (SELECT DISTINCT s FROM jsonb_array_elements(admissions) x,
              unnest(jsonb_texts(x -> 'budgetScopes')) s ORDER BY 1) locks;
    rate_keys := ARRAY(SELECT DISTINCT rk FROM jsonb_array_elements(admissions) x,
                           unnest(jsonb_texts(x -> 'rateKeys')) rk ORDER BY 1);
    INSERT INTO rate_limits (key, tat) SELECT rk, now_tz FROM unnest(rate_keys) rk ORDER BY rk
    ON CONFLICT (key) DO NOTHING;
    PERFORM 1 FROM rate_limits WHERE key = ANY (rate_keys) ORDER BY key FOR UPDATE;
    rate_tats := ARRAY(SELECT r.tat FROM unnest(rate_keys) WITH ORDINALITY x(rk, o)
                       JOIN rate_limits r ON r.key = x.rk ORDER BY x.o);
    PERFORM 1 FROM spend_counters c,
        (SELECT DISTINCT s, (x ->> 'ownKey')::boolean AS o FROM jsonb_array_elements(admissions) x,
             unnest(jsonb_texts(x -> 'heldIn')) s) hk,
        (VALUES ('h'::"char", hour_ts), ('d'::"char", date_trunc('day', hour_ts))) g(granularity, bucket)
    WHERE c.scope = hk.s AND c.own_key = hk.o AND c.granularity = g.granularity AND c.bucket = g.bucket
    ORDER BY c.scope, c.granularity, c.bucket, c.own_key
    FOR UPDATE OF c;
    -- (Counter rows that do not exist yet are created, in key order, by the upsert at the end;
    -- no other admission can take them meanwhile: it would need the budgets' locks.)
    SELECT array_agg(b.id ORDER BY b.id), array_agg(u.spent ORDER BY b.id),
           array_agg(u.reserved ORDER BY b.id), array_agg(w.until_ts ORDER BY b.id)
    INTO budget_ids, budget_spent, budget_reserved, budget_until
    FROM (SELECT DISTINCT ON (id) id, scope, period, hours, include_own
          FROM jsonb_array_elements(admissions) x,
               unnest(jsonb_texts(x -> 'budgetIds'), jsonb_texts(x -> 'budgetScopes'),
                      jsonb_texts(x -> 'budgetPeriods'), jsonb_texts(x -> 'budgetHours')::integer[],
                      jsonb_texts(x -> 'budgetIncludeOwn')::boolean[]) b(id, scope, period, hours, include_own)
          ORDER BY id) b,
         LATERAL spend_window(b.period, b.hours, now_ts) w,
         LATERAL spend_used(b.scope, b.include_own, w.granularity, w.from_ts) u;
    FOR a IN SELECT x FROM jsonb_array_elements(admissions) WITH ORDINALITY e(x, o) ORDER BY o LOOP
        i := i + 1;
        IF (a ->> 'session') || ' ' || (a ->> 'message') = ANY (admitted_ids) OR EXISTS (
            SELECT 1 FROM spend_reservations r
            WHERE r.session_id = a ->> 'session' AND r.message_id = a ->> 'message') THEN
            CONTINUE;
        END IF;
        amount := (a ->> 'amount')::bigint;
        own := (a ->> 'ownKey')::boolean;
        -- Its budgets, in the order given: the first it would exceed refuses it.
        b_scopes := jsonb_texts(a -> 'budgetScopes');
        b_amounts := jsonb_texts(a -> 'budgetAmounts')::bigint[];
        b_include_own := jsonb_texts(a -> 'budgetIncludeOwn')::boolean[];
        refused := false;
        FOR j IN 1 .. coalesce(array_length(b_scopes, 1), 0) LOOP
            k := array_position(budget_ids, a -> 'budgetIds' ->> (j - 1));
            SELECT budget_reserved[k] + coalesce(sum(h.amount), 0) INTO use_reserved
            FROM unnest(held_scopes, held_owns, held) h(scope, own_key, amount)
            WHERE h.scope = b_scopes[j] AND (b_include_own[j] OR NOT h.own_key);
            IF budget_spent[k] + use_reserved + amount > b_amounts[j] THEN
                RETURN QUERY SELECT i, budget_ids[k], budget_spent[k], use_reserved,
                    CASE WHEN budget_spent[k] + amount <= b_amounts[j] THEN 5
                         ELSE greatest(1, ceil(extract(epoch FROM budget_until[k] - now_ts))) END::float8,
                    NULL::integer;
                refused := true;
                EXIT;
            END IF;
        END LOOP;
        CONTINUE WHEN refused;
        -- Its rates, all or none: the first that has no room refuses it.
        r_keys := jsonb_texts(a -> 'rateKeys');
        r_windows := jsonb_texts(a -> 'rateWindows')::float8[];
        costs := ARRAY(SELECT make_interval(secs => c::float8)
                       FROM unnest(jsonb_texts(a -> 'rateCosts')) WITH ORDINALITY x(c, o) ORDER BY o);
        FOR j IN 1 .. coalesce(array_length(r_keys, 1), 0) LOOP
            t := greatest(rate_tats[array_position(rate_keys, r_keys[j])], now_tz);
            IF t + costs[j] - now_tz > make_interval(secs => r_windows[j]) THEN
                RETURN QUERY SELECT i, NULL::text, NULL::bigint, NULL::bigint,
                    extract(epoch FROM greatest(t + costs[j] - now_tz - make_interval(secs => r_windows[j]),
                                                interval '1 millisecond'))::float8,
                    j;
                refused := true;
                EXIT;
            END IF;
        END LOOP;
        CONTINUE WHEN refused;
        FOR j IN 1 .. coalesce(array_length(r_keys, 1), 0) LOOP
            k := array_position(rate_keys, r_keys[j]);
            rate_tats[k] := greatest(rate_tats[k], now_tz) + costs[j];
        END LOOP;
        scopes := jsonb_texts(a -> 'heldIn');
        FOR j IN 1 .. coalesce(array_length(scopes, 1), 0) LOOP
            k := (SELECT h.o FROM unnest(held_scopes, held_owns) WITH ORDINALITY h(s, w, o)
                  WHERE h.s = scopes[j] AND h.w = own);
            IF k IS NULL THEN
                held_scopes := held_scopes || scopes[j];
                held_owns := held_owns || own;
                held_orgs := held_orgs || (a ->> 'organization');
                held := held || amount;
            ELSE
                held[k] := held[k] + amount;
            END IF;
        END LOOP;
        admitted := admitted || a;
        admitted_ids := admitted_ids || ((a ->> 'session') || ' ' || (a ->> 'message'));
    END LOOP;
    UPDATE rate_limits r SET tat = x.tat
    FROM unnest(rate_keys, rate_tats) x(k, tat) WHERE r.key = x.k AND r.tat IS DISTINCT FROM x.tat;
    INSERT INTO spend_reservations (session_id, message_id, organization_id, scopes, own_key, hour, amount)
    SELECT x ->> 'session', x ->> 'message', x ->> 'organization', jsonb_texts(x -> 'heldIn'),
           (x ->> 'ownKey')::boolean, hour_ts, (x ->> 'amount')::bigint
    FROM unnest(admitted) x;
    INSERT INTO spend_counters AS c (scope, granularity, bucket, own_key, organization_id, spent, reserved)
    SELECT h.scope, g.granularity, g.bucket, h.own_key, h.org, 0, h.amount
    FROM unnest(held_scopes, held_owns, held_orgs, held) h(scope, own_key, org, amount),
         (VALUES ('h'::"char", hour_ts), ('d'::"char", date_trunc('day', hour_ts))) g(granularity, bucket)
    ORDER BY 1, 2, 3, 4
    ON CONFLICT (scope, granularity, bucket, own_key) DO UPDATE SET reserved = c.reserved + EXCLUDED.reserved;
END $$;
