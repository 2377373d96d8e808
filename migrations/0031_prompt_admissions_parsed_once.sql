-- The admissions of a batch (0030) parsed once: `prompt_admit_all` read every field of every
-- admission through `jsonb_texts`, a subquery per field per admission, and summed the batch's
-- holds for each budget again for each admission. Fifty admissions under four budgets and four
-- rates took 19 ms of the database's CPU, while the batch held its budgets' locks (measured with
-- this file's function beside it: 5 ms). Now the JSON becomes typed rows once
-- (`prompt_admissions`), and each budget of the batch keeps a running total of what the batch
-- holds under it. What it decides is unchanged (tests/tests/e2e/admissions.rs compares it with
-- `prompt_admit`, one admission at a time).

-- One admission, with `prompt_admit`'s arguments (0022).
CREATE TYPE prompt_admission AS (
    session text, message text, organization text, held_in text[], own_key boolean,
    amount bigint, rate_keys text[], rate_costs float8[], rate_windows float8[],
    budget_ids text[], budget_scopes text[], budget_amounts bigint[], budget_periods text[],
    budget_hours integer[], budget_include_own boolean[]);

-- A batch as `spend::Admit` sends it (camelCase JSON), typed, in order.
CREATE FUNCTION prompt_admissions(admissions jsonb) RETURNS prompt_admission[]
LANGUAGE sql STABLE AS $f$
    SELECT coalesce(array_agg((x.session, x.message, x.organization, x."heldIn", x."ownKey",
                      x.amount, x."rateKeys", x."rateCosts", x."rateWindows", x."budgetIds",
                      x."budgetScopes", x."budgetAmounts", x."budgetPeriods", x."budgetHours",
                      x."budgetIncludeOwn")::prompt_admission ORDER BY o), '{}')
    FROM jsonb_array_elements(admissions) WITH ORDINALITY e(j, o),
         jsonb_to_record(e.j) x(session text, message text,
         organization text, "heldIn" text[], "ownKey" boolean, amount bigint, "rateKeys" text[],
         "rateCosts" float8[], "rateWindows" float8[], "budgetIds" text[], "budgetScopes" text[],
         "budgetAmounts" bigint[], "budgetPeriods" text[], "budgetHours" integer[],
         "budgetIncludeOwn" boolean[])
$f$;

-- Admit a batch of prompts (see 0030: the same arguments, answers and locks, in the same order).
CREATE OR REPLACE FUNCTION prompt_admit_all(admissions jsonb)
RETURNS TABLE (n integer, budget_id text, spent bigint, reserved bigint, retry_after_secs float8,
               rate_index integer)
LANGUAGE plpgsql AS $$
DECLARE
    now_ts timestamp := clock_timestamp() AT TIME ZONE 'UTC';
    now_tz timestamptz := clock_timestamp();
    hour_ts timestamp := date_trunc('hour', now_ts);
    batch prompt_admission[] := prompt_admissions(admissions);
    -- Each rate key's theoretical arrival time, as this batch has moved it.
    rate_keys text[];
    rate_tats timestamptz[];
    -- Each budget of the batch: its spec, its use when the batch began plus what the batch
    -- holds under it so far, and when its window next moves.
    budget_ids text[];
    budget_scopes text[];
    budget_include_own boolean[];
    budget_spent bigint[];
    budget_reserved bigint[];
    budget_until timestamp[];
    -- What the batch holds, per counter scope and whether it is an own key's.
    held_scopes text[] := '{}';
    held_owns boolean[] := '{}';
    held_orgs text[] := '{}';
    held bigint[] := '{}';
    -- The admitted, for their reservations, and so a prompt asked twice holds once.
    admitted prompt_admission[] := '{}';
    admitted_ids text[] := '{}';
    a prompt_admission;
    i integer := 0;
    j integer;
    k integer;
    refused boolean;
    t timestamptz;
    cost interval;
BEGIN
    -- Not flushed at commit: see 0022. Locks in 0030's order: the budgets' advisory locks, the
    -- rate rows, the counters, each in key order.
    PERFORM set_config('synchronous_commit', 'off', true);
    PERFORM pg_advisory_xact_lock(hashtext('spend'), hashtext(s))
    FROM (SELECT DISTINCT s FROM unnest(batch) b, unnest(b.budget_scopes) s ORDER BY 1) locks;
    rate_keys := ARRAY(SELECT DISTINCT rk FROM unnest(batch) b, unnest(b.rate_keys) rk ORDER BY 1);
    INSERT INTO rate_limits (key, tat) SELECT rk, now_tz FROM unnest(rate_keys) rk ORDER BY rk
    ON CONFLICT (key) DO NOTHING;
    PERFORM 1 FROM rate_limits WHERE key = ANY (rate_keys) ORDER BY key FOR UPDATE;
    rate_tats := ARRAY(SELECT r.tat FROM unnest(rate_keys) WITH ORDINALITY x(rk, o)
                       JOIN rate_limits r ON r.key = x.rk ORDER BY x.o);
    PERFORM 1 FROM spend_counters c,
        (SELECT DISTINCT s, b.own_key AS o FROM unnest(batch) b, unnest(b.held_in) s) hk,
        (VALUES ('h'::"char", hour_ts), ('d'::"char", date_trunc('day', hour_ts))) g(granularity, bucket)
    WHERE c.scope = hk.s AND c.own_key = hk.o AND c.granularity = g.granularity AND c.bucket = g.bucket
    ORDER BY c.scope, c.granularity, c.bucket, c.own_key
    FOR UPDATE OF c;
    -- (Counter rows that do not exist yet are created, in key order, by the upsert at the end;
    -- no other admission can take them meanwhile: it would need the budgets' locks.)
    SELECT array_agg(b.id ORDER BY b.id), array_agg(b.scope ORDER BY b.id),
           array_agg(b.include_own ORDER BY b.id), array_agg(u.spent ORDER BY b.id),
           array_agg(u.reserved ORDER BY b.id), array_agg(w.until_ts ORDER BY b.id)
    INTO budget_ids, budget_scopes, budget_include_own, budget_spent, budget_reserved, budget_until
    FROM (SELECT DISTINCT ON (id) id, scope, period, hours, include_own
          FROM unnest(batch) x,
               unnest(x.budget_ids, x.budget_scopes, x.budget_periods, x.budget_hours,
                      x.budget_include_own) b(id, scope, period, hours, include_own)
          ORDER BY id) b,
         LATERAL spend_window(b.period, b.hours, now_ts) w,
         LATERAL spend_used(b.scope, b.include_own, w.granularity, w.from_ts) u;
    FOREACH a IN ARRAY batch LOOP
        i := i + 1;
        IF a.session || ' ' || a.message = ANY (admitted_ids) OR EXISTS (
            SELECT 1 FROM spend_reservations r
            WHERE r.session_id = a.session AND r.message_id = a.message) THEN
            CONTINUE;
        END IF;
        -- Its budgets, in the order given: the first it would exceed refuses it.
        refused := false;
        FOR j IN 1 .. coalesce(array_length(a.budget_ids, 1), 0) LOOP
            k := array_position(budget_ids, a.budget_ids[j]);
            IF budget_spent[k] + budget_reserved[k] + a.amount > a.budget_amounts[j] THEN
                RETURN QUERY SELECT i, budget_ids[k], budget_spent[k], budget_reserved[k],
                    CASE WHEN budget_spent[k] + a.amount <= a.budget_amounts[j] THEN 5
                         ELSE greatest(1, ceil(extract(epoch FROM budget_until[k] - now_ts))) END::float8,
                    NULL::integer;
                refused := true;
                EXIT;
            END IF;
        END LOOP;
        CONTINUE WHEN refused;
        -- Its rates, all or none: the first that has no room refuses it.
        FOR j IN 1 .. coalesce(array_length(a.rate_keys, 1), 0) LOOP
            t := greatest(rate_tats[array_position(rate_keys, a.rate_keys[j])], now_tz);
            cost := make_interval(secs => a.rate_costs[j]);
            IF t + cost - now_tz > make_interval(secs => a.rate_windows[j]) THEN
                RETURN QUERY SELECT i, NULL::text, NULL::bigint, NULL::bigint,
                    extract(epoch FROM greatest(t + cost - now_tz - make_interval(secs => a.rate_windows[j]),
                                                interval '1 millisecond'))::float8,
                    j;
                refused := true;
                EXIT;
            END IF;
        END LOOP;
        CONTINUE WHEN refused;
        FOR j IN 1 .. coalesce(array_length(a.rate_keys, 1), 0) LOOP
            k := array_position(rate_keys, a.rate_keys[j]);
            rate_tats[k] := greatest(rate_tats[k], now_tz) + make_interval(secs => a.rate_costs[j]);
        END LOOP;
        -- Its hold, in every budget of the batch that looks at one of its counters.
        FOR k IN 1 .. coalesce(array_length(budget_ids, 1), 0) LOOP
            IF budget_scopes[k] = ANY (a.held_in) AND (budget_include_own[k] OR NOT a.own_key) THEN
                budget_reserved[k] := budget_reserved[k] + a.amount;
            END IF;
        END LOOP;
        -- And in the counters it goes to.
        FOR j IN 1 .. coalesce(array_length(a.held_in, 1), 0) LOOP
            k := NULL;
            FOR t_k IN 1 .. coalesce(array_length(held_scopes, 1), 0) LOOP
                IF held_scopes[t_k] = a.held_in[j] AND held_owns[t_k] = a.own_key THEN
                    k := t_k;
                    EXIT;
                END IF;
            END LOOP;
            IF k IS NULL THEN
                held_scopes := held_scopes || a.held_in[j];
                held_owns := held_owns || a.own_key;
                held_orgs := held_orgs || a.organization;
                held := held || a.amount;
            ELSE
                held[k] := held[k] + a.amount;
            END IF;
        END LOOP;
        admitted := admitted || a;
        admitted_ids := admitted_ids || (a.session || ' ' || a.message);
    END LOOP;
    UPDATE rate_limits r SET tat = x.tat
    FROM unnest(rate_keys, rate_tats) x(k, tat) WHERE r.key = x.k AND r.tat IS DISTINCT FROM x.tat;
    INSERT INTO spend_reservations (session_id, message_id, organization_id, scopes, own_key, hour, amount)
    SELECT x.session, x.message, x.organization, x.held_in, x.own_key, hour_ts, x.amount
    FROM unnest(admitted) x;
    INSERT INTO spend_counters AS c (scope, granularity, bucket, own_key, organization_id, spent, reserved)
    SELECT h.scope, g.granularity, g.bucket, h.own_key, h.org, 0, h.amount
    FROM unnest(held_scopes, held_owns, held_orgs, held) h(scope, own_key, org, amount),
         (VALUES ('h'::"char", hour_ts), ('d'::"char", date_trunc('day', hour_ts))) g(granularity, bucket)
    ORDER BY 1, 2, 3, 4
    ON CONFLICT (scope, granularity, bucket, own_key) DO UPDATE SET reserved = c.reserved + EXCLUDED.reserved;
END $$;
