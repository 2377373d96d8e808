-- Limits shared by every instance of a service, so they hold however many replicas run (a
-- limit kept per process multiplies with the number of processes).
--
-- Both tables are UNLOGGED: they are cheap to write and lost after a crash, which only resets
-- the limits.

-- Request rates, as a generic cell rate algorithm (GCRA): per key, the theoretical arrival time
-- (TAT) of the next request. A request of `cost` (its count × the emission interval T) moves the
-- TAT by that much, and is refused if the TAT would then lie more than `burst_window` (the burst
-- size × T) ahead of now. One row per active key.
CREATE UNLOGGED TABLE rate_limits (
    key text PRIMARY KEY,
    tat timestamptz NOT NULL
);

-- Take `cost` from `k`'s allowance, or tell how long until it would fit (NULL: taken). Atomic
-- under concurrency: the upsert locks the row.
CREATE FUNCTION rate_limit_take(k text, cost interval, burst_window interval) RETURNS interval
LANGUAGE plpgsql AS $$
DECLARE
    now_ts timestamptz := clock_timestamp();
    taken timestamptz;
    ahead interval;
BEGIN
    IF cost > burst_window THEN
        RETURN cost - burst_window;   -- can never fit; the caller reports it as such
    END IF;
    INSERT INTO rate_limits AS r (key, tat) VALUES (k, now_ts + cost)
    ON CONFLICT (key) DO UPDATE SET tat = greatest(r.tat, now_ts) + cost
        WHERE greatest(r.tat, now_ts) + cost - now_ts <= burst_window
    RETURNING tat INTO taken;
    IF taken IS NOT NULL THEN
        RETURN NULL;
    END IF;
    SELECT greatest(r.tat, now_ts) + cost - now_ts - burst_window
      INTO ahead FROM rate_limits r WHERE r.key = k;
    RETURN greatest(ahead, interval '1 millisecond');
END $$;

-- Open event streams, as leases an instance renews while the stream lives; a crashed instance's
-- leases lapse by themselves.
CREATE UNLOGGED TABLE stream_leases (
    lease_id   text PRIMARY KEY,
    user_id    text NOT NULL,
    expires_at timestamptz NOT NULL
);
CREATE INDEX stream_leases_by_user ON stream_leases (user_id);

-- Take a lease for `owner` unless they already hold `cap` live ones. Serialised per user by an
-- advisory lock, so concurrent opens on several instances cannot overshoot.
CREATE FUNCTION stream_lease_take(lease text, owner text, cap integer, ttl interval) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('stream_leases'), hashtext(owner));
    DELETE FROM stream_leases WHERE user_id = owner AND expires_at < clock_timestamp();
    IF (SELECT count(*) FROM stream_leases WHERE user_id = owner) >= cap THEN
        RETURN false;
    END IF;
    INSERT INTO stream_leases (lease_id, user_id, expires_at)
    VALUES (lease, owner, clock_timestamp() + ttl);
    RETURN true;
END $$;
