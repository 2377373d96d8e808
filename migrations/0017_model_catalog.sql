-- What is known of each connection's models (limits, capabilities, prices; models.dev's shape),
-- and the default models of organizations and workspaces.
ALTER TABLE rm_connections ADD COLUMN catalog jsonb NOT NULL DEFAULT '{}';
ALTER TABLE rm_organizations ADD COLUMN default_model jsonb;
ALTER TABLE rm_workspaces ADD COLUMN default_model jsonb;
