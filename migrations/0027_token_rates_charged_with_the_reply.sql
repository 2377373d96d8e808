-- A reply's tokens are charged to its member's and organization's token rates in the same
-- transaction as its `message.completed` event, as its cost is counted (0022): before the
-- session's `idle` can be seen, so a prompt sent the instant it is idle finds the reply's tokens
-- already charged; exactly once, whoever commits it (a repeated report writes no event). Until
-- now the command service charged them after the commit, in a statement of its own.

-- Each organization's token rates, as its last `organization.prompt_limits_set` event set them
-- (kept by the trigger below in that event's transaction; 0 is no limit).
CREATE TABLE prompt_token_rates (
    organization_id         text PRIMARY KEY,
    member_per_minute       bigint NOT NULL,
    organization_per_minute bigint NOT NULL
);

CREATE FUNCTION events_keep_token_rates() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    l json := NEW.payload -> 'properties' -> 'limits';
BEGIN
    INSERT INTO prompt_token_rates AS t (organization_id, member_per_minute, organization_per_minute)
    VALUES (NEW.aggregate_id,
            coalesce((l -> 'member' ->> 'tokensPerMinute')::bigint, 0),
            coalesce((l -> 'organization' ->> 'tokensPerMinute')::bigint, 0))
    ON CONFLICT (organization_id) DO UPDATE
        SET member_per_minute = EXCLUDED.member_per_minute,
            organization_per_minute = EXCLUDED.organization_per_minute;
    RETURN NULL;
END $$;

CREATE TRIGGER events_keep_token_rates AFTER INSERT ON events
    FOR EACH ROW WHEN (NEW.event_type = 'organization.prompt_limits_set')
    EXECUTE FUNCTION events_keep_token_rates();

-- The rates set before this migration.
INSERT INTO prompt_token_rates (organization_id, member_per_minute, organization_per_minute)
SELECT DISTINCT ON (aggregate_id) aggregate_id,
       coalesce((payload -> 'properties' -> 'limits' -> 'member' ->> 'tokensPerMinute')::bigint, 0),
       coalesce((payload -> 'properties' -> 'limits' -> 'organization' ->> 'tokensPerMinute')::bigint, 0)
FROM events
WHERE aggregate_type = 'organization' AND event_type = 'organization.prompt_limits_set'
ORDER BY aggregate_id, sequence DESC;

-- Charge a completed reply's tokens (input, output and cache, as `schemas::message::TokenUsage`
-- counts them) to the rates its prompt took: the keys and rate of
-- command-service/src/prompt_limits.rs (`tokens:<org>` and `tokens:<org>:<user>`, a token
-- every 60 / per-minute seconds). The trigger's name sorts before `events_settle_spend`, so a
-- completion locks rate rows before spend counters, in key order, as a prompt's admission does
-- (`prompt_admit`): the two never wait on each other.
CREATE FUNCTION events_charge_token_rates() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    m json := NEW.payload -> 'properties' -> 'message';
    org text := NEW.metadata ->> 'organization_id';
    member text := m ->> 'userID';
    used bigint := coalesce((m -> 'tokens' ->> 'input')::bigint, 0)
                 + coalesce((m -> 'tokens' ->> 'output')::bigint, 0)
                 + coalesce((m -> 'tokens' -> 'cache' ->> 'read')::bigint, 0)
                 + coalesce((m -> 'tokens' -> 'cache' ->> 'write')::bigint, 0);
    r prompt_token_rates;
    rate record;
BEGIN
    IF used = 0 OR org IS NULL OR member IS NULL THEN
        RETURN NULL;
    END IF;
    SELECT * INTO r FROM prompt_token_rates WHERE organization_id = org;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    FOR rate IN
        SELECT k, n FROM (VALUES ('tokens:' || org, r.organization_per_minute),
                                 ('tokens:' || org || ':' || member, r.member_per_minute)) x(k, n)
        WHERE n > 0 ORDER BY k
    LOOP
        PERFORM rate_limit_charge(rate.k,
            make_interval(secs => 60.0 / least(rate.n, 4294967295) * used));
    END LOOP;
    RETURN NULL;
END $$;

CREATE TRIGGER events_charge_token_rates AFTER INSERT ON events
    FOR EACH ROW WHEN (NEW.event_type = 'message.completed')
    EXECUTE FUNCTION events_charge_token_rates();
