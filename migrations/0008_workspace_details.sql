-- Workspaces grow members with workspace roles, Git projects and an archived flag; a session
-- may belong to a project.

ALTER TABLE rm_workspaces ADD COLUMN archived boolean NOT NULL DEFAULT false;
ALTER TABLE rm_sessions ADD COLUMN project_id text;

CREATE TABLE rm_workspace_members (
    workspace_id    text NOT NULL,
    organization_id text NOT NULL,
    user_id         text NOT NULL,
    role            text NOT NULL,
    PRIMARY KEY (workspace_id, user_id)
);

CREATE TABLE rm_projects (
    project_id      text PRIMARY KEY,
    workspace_id    text NOT NULL,
    organization_id text NOT NULL,
    repository_url  text NOT NULL,
    default_branch  text NOT NULL,
    created_at      bigint NOT NULL
);
CREATE INDEX rm_projects_by_workspace ON rm_projects (workspace_id, project_id);

GRANT SELECT ON rm_workspace_members, rm_projects TO oc_reader;
ALTER TABLE rm_workspace_members ENABLE ROW LEVEL SECURITY;
ALTER TABLE rm_projects ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_reads ON rm_workspace_members FOR SELECT TO oc_reader
    USING (organization_id = ANY (oc_caller_organizations()));
CREATE POLICY tenant_reads ON rm_projects FOR SELECT TO oc_reader
    USING (organization_id = ANY (oc_caller_organizations()));
