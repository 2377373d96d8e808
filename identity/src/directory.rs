//! Which workspace an OpenCode client means. Its clients send a directory (`x-opencode-directory`,
//! percent-encoded, or `?directory=`), a local path that means nothing on a shared service: a
//! directory `/<workspace id>[/…]` names a workspace; any other (none, `/`, a local path) means
//! the API key's default workspace. Whether the caller may use the workspace is the caller's to
//! check, as for any id a client sends (docs/opencode-clients.md).

use actix_web::HttpRequest;
use platform::problem::Problem;
use schemas::ids::WorkspaceId;

use crate::{AuthUser, Credential};

/// The directory an OpenCode client sent: `?directory=` (already decoded), else the header, else
/// the directory of the workspace it names with `?workspace=` (OpenCode's own workspaces, which
/// its terminal UI names in every request once a session carries one: ours).
pub fn directory_of(req: &HttpRequest, query: Option<&str>) -> Option<String> {
    if let Some(d) = query {
        return Some(d.to_owned());
    }
    let header = req.headers().get("x-opencode-directory").and_then(|h| h.to_str().ok());
    if let Some(header) = header {
        return Some(percent_encoding::percent_decode_str(header).decode_utf8().ok()?.into_owned());
    }
    #[derive(serde::Deserialize)]
    struct Named {
        workspace: String,
    }
    let named = actix_web::web::Query::<Named>::from_query(req.query_string()).ok()?;
    Some(format!("/{}", named.into_inner().workspace))
}

/// The workspace `directory` means for `user`; 400 when it names none and the caller's key has
/// no default workspace.
pub fn workspace_meant(directory: Option<&str>, user: &AuthUser) -> Result<WorkspaceId, Problem> {
    let first = directory.and_then(|d| d.trim_start_matches('/').split('/').next());
    if let Some(named) = first.and_then(|f| f.parse::<WorkspaceId>().ok()) {
        return Ok(named);
    }
    match &user.credential {
        Credential::ApiKey { workspace_id: Some(ws), .. } => Ok(ws.clone()),
        _ => Err(Problem::bad_request(
            "no workspace: send the directory /<workspace id>, or use an API key created with a \
             default workspace (workspaceID)",
        )),
    }
}

/// OpenCode's directory of a workspace: what its sessions carry, and clients send back.
pub fn of_workspace(workspace: &WorkspaceId) -> String {
    format!("/{workspace}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keyed(default: Option<WorkspaceId>) -> AuthUser {
        AuthUser {
            user_id: schemas::ids::UserId::new(),
            scope: Some(schemas::ids::OrganizationId::new()),
            credential: Credential::ApiKey {
                key_id: schemas::ids::ApiKeyId::new(),
                workspace_id: default,
                expires_at_ms: i64::MAX,
            },
        }
    }

    #[test]
    fn a_directory_names_a_workspace_or_means_the_keys_default() {
        let (named, default) = (WorkspaceId::new(), WorkspaceId::new());
        let user = keyed(Some(default.clone()));
        for dir in [format!("/{named}"), format!("/{named}/src/lib"), format!("{named}")] {
            assert_eq!(workspace_meant(Some(&dir), &user).unwrap(), named, "{dir}");
        }
        for dir in [None, Some("/"), Some("/home/alice/repo"), Some("/wrk_not-an-id")] {
            assert_eq!(workspace_meant(dir, &user).unwrap(), default, "{dir:?}");
        }
        assert_eq!(workspace_meant(Some("/home"), &keyed(None)).unwrap_err().status, 400);
        assert_eq!(of_workspace(&named), format!("/{named}"));
    }
}
