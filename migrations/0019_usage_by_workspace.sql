-- A workspace's usage report filters by workspace: index it like the other two reports.
CREATE INDEX rm_usage_by_workspace ON rm_usage (workspace_id, day);
