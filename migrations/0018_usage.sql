-- Usage, derived from `message.completed` events only (so a rebuild reproduces it exactly): per
-- organization × UTC day × user × workspace × model × connection (own key or not), the replies,
-- their tokens and their cost in micro-dollars. Unknown parts are '' (the default provider has
-- no connection).
CREATE TABLE rm_usage (
    organization_id text NOT NULL,
    day             date NOT NULL,
    user_id         text NOT NULL,
    workspace_id    text NOT NULL,
    provider_id     text NOT NULL,
    model_id        text NOT NULL,
    connection_id   text NOT NULL,
    own_key         boolean NOT NULL,
    requests        bigint NOT NULL,
    input_tokens    bigint NOT NULL,
    output_tokens   bigint NOT NULL,
    reasoning_tokens bigint NOT NULL,
    cache_read_tokens bigint NOT NULL,
    cache_write_tokens bigint NOT NULL,
    cost_micro_dollars bigint NOT NULL,
    PRIMARY KEY (organization_id, day, user_id, workspace_id, provider_id, model_id, connection_id, own_key)
);
CREATE INDEX rm_usage_by_user ON rm_usage (user_id, day);

GRANT SELECT ON rm_usage TO oc_reader;
ALTER TABLE rm_usage ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_reads ON rm_usage FOR SELECT TO oc_reader
    USING (organization_id = ANY (oc_caller_organizations()));
