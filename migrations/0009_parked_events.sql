-- Hardening: what cannot be processed is parked where operators see it, and message ids are
-- unique per session (a client may choose them; they must not collide across sessions).

-- A message id is unique within its session (the session aggregate checks that every new id
-- sorts after the session's last one), not across sessions: an id a client chose can never
-- collide with a row it does not own.
ALTER TABLE rm_messages DROP CONSTRAINT rm_messages_pkey;
ALTER TABLE rm_messages ADD PRIMARY KEY (session_id, message_id);

-- Events parked instead of being retried forever in front of everyone else's: by the relay (an
-- event JetStream refused for good, e.g. over its payload limit) or by the projector (an event
-- whose projection failed `OC_PROJECTOR_MAX_ATTEMPTS` times, or deterministically). The event
-- itself stays in `events`; this row says why it was skipped and where.
CREATE TABLE parked_events (
    stage          text NOT NULL CHECK (stage IN ('relay', 'projector')),
    event_id       text NOT NULL,          -- <aggregateID>:<sequence>
    aggregate_type text NOT NULL,
    aggregate_id   text NOT NULL,
    sequence       bigint NOT NULL,
    reason         text NOT NULL,          -- the error, for operators (never shown to users)
    attempts       integer NOT NULL,
    parked_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (stage, event_id)
);
