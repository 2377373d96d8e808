//! Workspace events into `rm_workspaces`, `rm_workspace_members` and `rm_projects`.

use crate::projection::{Step, step};
use schemas::events::WorkspaceEvent;

/// What `event` changes in the read models.
pub(crate) fn effects(event: WorkspaceEvent) -> anyhow::Result<Vec<Step>> {
    Ok(match event {
        WorkspaceEvent::Created { workspace_id, organization_id, name, created_by, time } => {
            vec![step!(
                "INSERT INTO rm_workspaces (workspace_id, organization_id, name, created_by, created_at) \
             VALUES ($1, $2, $3, $4, $5)",
                workspace_id.to_string(),
                organization_id.to_string(),
                name,
                created_by.to_string(),
                time,
            )]
        }
        WorkspaceEvent::Renamed { workspace_id, name, .. } => vec![step!(
            "UPDATE rm_workspaces SET name = $2 WHERE workspace_id = $1",
            workspace_id.to_string(),
            name,
        )],
        WorkspaceEvent::Archived { workspace_id, .. } => vec![step!(
            "UPDATE rm_workspaces SET archived = true WHERE workspace_id = $1",
            workspace_id.to_string(),
        )],
        WorkspaceEvent::MemberSet { workspace_id, organization_id, user_id, role, .. } => {
            vec![step!(
                "INSERT INTO rm_workspace_members (workspace_id, organization_id, user_id, role) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (workspace_id, user_id) DO UPDATE SET role = EXCLUDED.role",
                workspace_id.to_string(),
                organization_id.to_string(),
                user_id.to_string(),
                role.as_str(),
            )]
        }
        WorkspaceEvent::MemberRemoved { workspace_id, user_id, .. } => vec![step!(
            "DELETE FROM rm_workspace_members WHERE workspace_id = $1 AND user_id = $2",
            workspace_id.to_string(),
            user_id.to_string(),
        )],
        WorkspaceEvent::ProjectAdded { workspace_id, organization_id, project, time } => {
            vec![step!(
                "INSERT INTO rm_projects (project_id, workspace_id, organization_id, repository_url, default_branch, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
                project.id.to_string(),
                workspace_id.to_string(),
                organization_id.to_string(),
                project.repository_url,
                project.default_branch,
                time,
            )]
        }
        WorkspaceEvent::DefaultModelSet { workspace_id, model, .. } => vec![step!(
            "UPDATE rm_workspaces SET default_model = $2 WHERE workspace_id = $1",
            workspace_id.to_string(),
            serde_json::to_value(&model)?,
        )],
    })
}
