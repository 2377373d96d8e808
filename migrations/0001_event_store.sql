-- The write side: the event store postgres-es expects, the transactional outbox, and users.
--
-- postgres-es names every column it reads and writes, so the extra columns below (with
-- defaults) are invisible to it. Never edit this file once applied: add a new migration.

-- One row per event. (aggregate_type, aggregate_id, sequence) is the optimistic lock: a second
-- writer of the same sequence violates the primary key and postgres-es reports a conflict.
CREATE TABLE events (
    aggregate_type text NOT NULL,
    aggregate_id   text NOT NULL,
    sequence       bigint CHECK (sequence >= 0) NOT NULL,
    event_type     text NOT NULL,
    event_version  text NOT NULL,
    payload        json NOT NULL,
    metadata       json NOT NULL,
    -- Ours: when the event was recorded (the envelope's `time`).
    recorded_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    -- Ours: insertion order across aggregates, for rebuilds and the outbox. Assigned at insert,
    -- not commit, so it is not a commit order; nothing here relies on it being one.
    position       bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
    PRIMARY KEY (aggregate_type, aggregate_id, sequence)
);

-- Unused (the snapshot stores of cqrs-es 0.5.0 apply events twice), but postgres-es expects it.
CREATE TABLE snapshots (
    aggregate_type   text NOT NULL,
    aggregate_id     text NOT NULL,
    last_sequence    bigint CHECK (last_sequence >= 0) NOT NULL,
    current_snapshot bigint CHECK (current_snapshot >= 0) NOT NULL,
    payload          json NOT NULL,
    PRIMARY KEY (aggregate_type, aggregate_id, last_sequence)
);

-- Events committed but not yet confirmed on JetStream. A row is written by the trigger below in
-- the same transaction as its event, so an event cannot commit without its outbox row; the
-- relay deletes rows only after JetStream acknowledged them.
CREATE TABLE outbox (
    position       bigint PRIMARY KEY,
    aggregate_type text NOT NULL,
    aggregate_id   text NOT NULL,
    sequence       bigint NOT NULL
);

CREATE FUNCTION events_to_outbox() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO outbox (position, aggregate_type, aggregate_id, sequence)
    VALUES (NEW.position, NEW.aggregate_type, NEW.aggregate_id, NEW.sequence);
    RETURN NULL;
END $$;

CREATE TRIGGER events_to_outbox AFTER INSERT ON events
    FOR EACH ROW EXECUTE FUNCTION events_to_outbox();

-- Wake the relay when the transaction commits (NOTIFY is delivered at commit, never before),
-- so publication does not wait for a poll interval.
CREATE FUNCTION notify_outbox() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('outbox', '');
    RETURN NULL;
END $$;

CREATE TRIGGER notify_outbox AFTER INSERT ON events
    FOR EACH STATEMENT EXECUTE FUNCTION notify_outbox();

-- Who a token's (issuer, subject) is. Events refer to `user_id` only; personal data added later
-- lives in mutable tables keyed by it, so it can be erased without rewriting events.
CREATE TABLE users (
    user_id    text PRIMARY KEY,
    issuer     text NOT NULL,
    subject    text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (issuer, subject)
);
