-- Charge a rate after the fact (the tokens of a finished reply): the theoretical arrival time
-- moves by `cost` whatever it was, so later requests wait until the debt is paid off.
CREATE FUNCTION rate_limit_charge(k text, cost interval) RETURNS void
LANGUAGE sql AS $$
    INSERT INTO rate_limits AS r (key, tat) VALUES (k, clock_timestamp() + cost)
    ON CONFLICT (key) DO UPDATE SET tat = greatest(r.tat, clock_timestamp()) + cost
$$;
