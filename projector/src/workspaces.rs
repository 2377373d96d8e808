//! Workspace events into `rm_workspaces`, `rm_workspace_members` and `rm_projects`.

use deadpool_postgres::Transaction;

use crate::projection::exec;
use schemas::events::WorkspaceEvent;

pub async fn apply(tx: &Transaction<'_>, event: WorkspaceEvent) -> anyhow::Result<()> {
    match event {
        WorkspaceEvent::Created { workspace_id, organization_id, name, created_by, time } => {
            exec(
                tx,
                "INSERT INTO rm_workspaces (workspace_id, organization_id, name, created_by, created_at) \
                 VALUES ($1, $2, $3, $4, $5)",
                &[&workspace_id.as_str(), &organization_id.as_str(), &name, &created_by.as_str(), &time],
            )
            .await?;
        }
        WorkspaceEvent::Renamed { workspace_id, name, .. } => {
            exec(
                tx,
                "UPDATE rm_workspaces SET name = $2 WHERE workspace_id = $1",
                &[&workspace_id.as_str(), &name],
            )
            .await?;
        }
        WorkspaceEvent::Archived { workspace_id, .. } => {
            exec(
                tx,
                "UPDATE rm_workspaces SET archived = true WHERE workspace_id = $1",
                &[&workspace_id.as_str()],
            )
            .await?;
        }
        WorkspaceEvent::MemberSet { workspace_id, organization_id, user_id, role, .. } => {
            exec(
                tx,
                "INSERT INTO rm_workspace_members (workspace_id, organization_id, user_id, role) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (workspace_id, user_id) DO UPDATE SET role = EXCLUDED.role",
                &[&workspace_id.as_str(), &organization_id.as_str(), &user_id.as_str(), &role.as_str()],
            )
            .await?;
        }
        WorkspaceEvent::MemberRemoved { workspace_id, user_id, .. } => {
            exec(
                tx,
                "DELETE FROM rm_workspace_members WHERE workspace_id = $1 AND user_id = $2",
                &[&workspace_id.as_str(), &user_id.as_str()],
            )
            .await?;
        }
        WorkspaceEvent::ProjectAdded { workspace_id, organization_id, project, time } => {
            exec(
                tx,
                "INSERT INTO rm_projects (project_id, workspace_id, organization_id, repository_url, default_branch, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
                &[
                    &project.id.as_str(),
                    &workspace_id.as_str(),
                    &organization_id.as_str(),
                    &project.repository_url,
                    &project.default_branch,
                    &time,
                ],
            )
            .await?;
        }
        WorkspaceEvent::DefaultModelSet { workspace_id, model, .. } => {
            exec(
                tx,
                "UPDATE rm_workspaces SET default_model = $2 WHERE workspace_id = $1",
                &[&workspace_id.as_str(), &serde_json::to_value(&model)?],
            )
            .await?;
        }
    }
    Ok(())
}
