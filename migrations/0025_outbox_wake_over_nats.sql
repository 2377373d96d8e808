-- The outbox relay is woken over core NATS by the instance that committed (`oc.sys.outbox`,
-- command-service/src/relay.rs), no longer by a NOTIFY at every commit: a transaction that
-- notifies takes one database-wide lock at commit and holds it through its WAL flush, so every
-- event-writing commit of every instance waited for the one before it (measured: most of the
-- time of a commit under load was spent waiting for that lock).
DROP TRIGGER notify_outbox ON events;
DROP FUNCTION notify_outbox();
