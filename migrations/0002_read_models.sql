-- Read models, maintained by the projector from domain events and served by the query service.
--
-- Every table carries organization_id and every query filters on it. Times are milliseconds since
-- the Unix epoch, as in the events. `rm_positions` makes projection idempotent: an event is
-- applied only if its sequence is the next one for its aggregate, in the same transaction.

CREATE TABLE rm_positions (
    aggregate_id text PRIMARY KEY,
    sequence     bigint NOT NULL
);

CREATE TABLE rm_organizations (
    organization_id text PRIMARY KEY,
    name            text NOT NULL,
    owner_id        text NOT NULL,
    created_at      bigint NOT NULL
);

CREATE TABLE rm_members (
    organization_id text NOT NULL,
    user_id         text NOT NULL,
    role            text NOT NULL,
    added_at        bigint NOT NULL,
    PRIMARY KEY (organization_id, user_id)
);
-- "Which organizations is this user in", asked on every request.
CREATE INDEX rm_members_by_user ON rm_members (user_id, organization_id);

CREATE TABLE rm_workspaces (
    workspace_id    text PRIMARY KEY,
    organization_id text NOT NULL,
    name            text NOT NULL,
    created_by      text NOT NULL,
    created_at      bigint NOT NULL
);
CREATE INDEX rm_workspaces_by_org ON rm_workspaces (organization_id, workspace_id);

CREATE TABLE rm_sessions (
    session_id      text PRIMARY KEY,
    organization_id text NOT NULL,
    workspace_id    text NOT NULL,
    title           text NOT NULL,
    status          text NOT NULL,
    created_by      text NOT NULL,
    created_at      bigint NOT NULL,
    updated_at      bigint NOT NULL
);
-- Session ids are ULIDs, so this index also orders a workspace's sessions by creation.
CREATE INDEX rm_sessions_by_workspace ON rm_sessions (organization_id, workspace_id, session_id);

-- One row per message; `info` and `parts` have OpenCode's message shapes.
CREATE TABLE rm_messages (
    message_id      text PRIMARY KEY,
    organization_id text NOT NULL,
    session_id      text NOT NULL,
    role            text NOT NULL CHECK (role IN ('user', 'assistant')),
    info            jsonb NOT NULL,
    parts           jsonb NOT NULL
);
CREATE INDEX rm_messages_by_session ON rm_messages (organization_id, session_id, message_id);
