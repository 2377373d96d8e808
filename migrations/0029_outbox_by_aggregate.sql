-- A commit asks, in its own statement, whether an earlier event of its aggregate is still in the
-- outbox: if none is, the committing instance's relay may publish the new events at once, from
-- memory, without reading them back (they cannot overtake an earlier event of the aggregate).
-- The outbox is a queue of a few rows, but it grows by every commit while NATS is away, and the
-- question must stay one index probe then too.
CREATE INDEX outbox_by_aggregate ON outbox (aggregate_type, aggregate_id);
