-- A completed reply's charges — its tokens to the token rates (0027), then its cost to the spend
-- counters and its hold released (0022) — in one trigger that reads the event's payload once.
--
-- `events.payload` is `json` (postgres-es's column): text that every `->` parses again from the
-- start, and the message it holds carries the reply's whole text. The two triggers read about a
-- dozen fields through `->`, so a 120 KB reply was parsed some fifteen times inside the commit
-- (2.9 ms of the database's CPU per trigger, measured; 42 µs each for a 20-token reply), while
-- the spend counters' rows were locked. Converted to `jsonb` once, the fields are lookups
-- (0.27 ms and 7.6 µs). One function also states the lock order outright: token-rate rows, in
-- key order, then spend counters, as a prompt's admission takes them (`prompt_admit`), so the
-- two never wait on each other (before, it rested on the triggers' names sorting that way).

DROP TRIGGER events_charge_token_rates ON events;
DROP TRIGGER events_settle_spend ON events;
DROP FUNCTION events_charge_token_rates();
DROP FUNCTION events_settle_spend();

CREATE FUNCTION events_complete_reply() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    org text := NEW.metadata ->> 'organization_id';
    m jsonb := (NEW.payload::jsonb) #> '{properties,message}';
    member text := m ->> 'userID';
    used bigint := coalesce((m #>> '{tokens,input}')::bigint, 0)
                 + coalesce((m #>> '{tokens,output}')::bigint, 0)
                 + coalesce((m #>> '{tokens,cache,read}')::bigint, 0)
                 + coalesce((m #>> '{tokens,cache,write}')::bigint, 0);
    cost bigint := coalesce((m #>> '{cost,microDollars}')::bigint, 0);
    r prompt_token_rates;
    rate record;
    scopes text[];
BEGIN
    -- Tokens, to the rates the prompt took: the keys and rate of
    -- command-service/src/prompt_limits.rs (`tokens:<org>` and `tokens:<org>:<user>`, a token
    -- every 60 / per-minute seconds), in key order.
    IF used > 0 AND org IS NOT NULL AND member IS NOT NULL THEN
        SELECT * INTO r FROM prompt_token_rates WHERE organization_id = org;
        IF FOUND THEN
            FOR rate IN
                SELECT k, n FROM (VALUES ('tokens:' || org, r.organization_per_minute),
                                         ('tokens:' || org || ':' || member, r.member_per_minute)) x(k, n)
                WHERE n > 0 ORDER BY k
            LOOP
                PERFORM rate_limit_charge(rate.k,
                    make_interval(secs => 60.0 / least(rate.n, 4294967295) * used));
            END LOOP;
        END IF;
    END IF;
    -- Spend: release what the prompt held, and count what the reply cost toward the
    -- organization, its workspace, its member and its API key (the keys of counter_key).
    -- (never spend_release here: that would let the event's own commit skip the flush)
    PERFORM spend_unhold(NEW.aggregate_id, m ->> 'id');
    IF cost > 0 AND org IS NOT NULL THEN
        scopes := array_remove(ARRAY[
            'org:' || org,
            'ws:' || (m ->> 'workspaceID'),
            'member:' || org || ':' || member,
            'key:' || (m ->> 'apiKeyID')
        ], NULL);
        PERFORM spend_add(org, scopes, coalesce((m ->> 'ownKey')::boolean, false),
                          date_trunc('hour', clock_timestamp() AT TIME ZONE 'UTC'), cost, 0);
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER events_complete_reply AFTER INSERT ON events
    FOR EACH ROW WHEN (NEW.event_type = 'message.completed')
    EXECUTE FUNCTION events_complete_reply();
