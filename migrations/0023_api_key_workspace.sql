-- A personal API key may name its default workspace: where OpenCode's own clients, which only
-- send a local directory, create and list sessions (docs/opencode-clients.md).
ALTER TABLE api_keys ADD COLUMN workspace_id text;
ALTER TABLE rm_api_keys ADD COLUMN workspace_id text;
