-- Take from several rates at once, all or nothing (a prompt's member and organization request
-- and token rates): one round trip instead of one per rate, and a refused prompt takes from
-- none of them. Rows are locked in key order, so concurrent calls never deadlock. Returns the
-- 1-based index of the first rate that refused and how long until it would fit; no row: taken.
CREATE FUNCTION rate_limit_take_all(ks text[], costs interval[], windows interval[])
RETURNS TABLE (refused integer, wait interval)
LANGUAGE plpgsql AS $$
DECLARE
    now_ts timestamptz := clock_timestamp();
    t timestamptz;
BEGIN
    INSERT INTO rate_limits (key, tat)
    SELECT k, now_ts FROM unnest(ks) k ORDER BY k
    ON CONFLICT (key) DO NOTHING;
    PERFORM 1 FROM rate_limits WHERE key = ANY (ks) ORDER BY key FOR UPDATE;
    FOR i IN 1 .. coalesce(array_length(ks, 1), 0) LOOP
        SELECT greatest(r.tat, now_ts) INTO t FROM rate_limits r WHERE r.key = ks[i];
        IF t + costs[i] - now_ts > windows[i] THEN
            refused := i;
            wait := greatest(t + costs[i] - now_ts - windows[i], interval '1 millisecond');
            RETURN NEXT;
            RETURN;
        END IF;
    END LOOP;
    UPDATE rate_limits r SET tat = greatest(r.tat, now_ts) + x.cost
    FROM unnest(ks, costs) AS x(k, cost) WHERE r.key = x.k;
END $$;
