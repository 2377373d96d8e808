//! OpenCode's own write API, as its stock clients call it (docs/opencode-clients.md):
//! `POST /session`, in the workspace the client's directory (or its API key) means
//! (`identity::directory`), and the synchronous prompt `POST /session/{id}/message`.

use actix_web::{HttpRequest, HttpResponse, web};
use identity::AuthUser;
use identity::directory::{directory_of, of_workspace, workspace_meant};
use platform::http::RequestId;
use platform::problem::Problem;
use schemas::api::{OpenCodeCreateSession, PromptInput};
use schemas::ids::SessionId;
use schemas::message::SessionStatus;
use schemas::read::{MessageInfo, MessageView, SessionTimes, SessionView};
use serde::Deserialize;

use crate::aggregates::default_title;
use crate::error::{CommandError, DomainError};
use crate::startup::AppState;

#[derive(Debug, Deserialize)]
pub struct DirectoryQuery {
    directory: Option<String>,
}

/// `POST /session`: a new session, answered in OpenCode's `Session` shape (200, as OpenCode does).
pub async fn create_session(
    user: AuthUser,
    request: RequestId,
    req: HttpRequest,
    state: web::Data<AppState>,
    query: web::Query<DirectoryQuery>,
    body: web::Json<OpenCodeCreateSession>,
) -> Result<HttpResponse, Problem> {
    let body = body.into_inner();
    if body.parent_id.is_some() {
        return Err(Problem::bad_request("child sessions (parentID) are not supported"));
    }
    let directory = directory_of(&req, query.directory.as_deref());
    let workspace = workspace_meant(directory.as_deref(), &user)?;
    // Titled here, so that the answer holds the title the session gets.
    let time = schemas::now_ms();
    let title = body.title.unwrap_or_else(|| default_title(time));
    let started = super::sessions::start(
        &user,
        &request,
        &state,
        workspace.clone(),
        None,
        Some(title.clone()),
    );
    let (id, token) = started.await?;
    // OpenCode's clients list sessions right after creating one (read-your-writes).
    state.sync_prompts.until_shown(&token.aggregate_id, token.sequence).await?;
    // The workspace exists and the caller may work in it: the command said so.
    let view = state.directory.workspace(&workspace).await.map_err(CommandError::Domain)?;
    let view = view.ok_or(CommandError::Domain(DomainError::NotFound))?;
    Ok(HttpResponse::Ok().insert_header(("X-Consistency-Token", token.encode())).json(
        SessionView {
            slug: id.to_string(),
            id,
            organization_id: view.organization_id,
            directory: of_workspace(&workspace),
            workspace_id: workspace,
            project_id: None,
            title,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            status: SessionStatus::Idle,
            created_by: user.user_id,
            time: SessionTimes { created: time, updated: time },
        },
    ))
}

/// `POST /session/{id}/message`: OpenCode's synchronous prompt. The prompt is accepted as
/// `prompt_async` accepts it; the answer is the completed reply, `{info, parts}`.
pub async fn prompt_and_wait(
    user: AuthUser,
    request: RequestId,
    state: web::Data<AppState>,
    session: web::Path<SessionId>,
    body: web::Json<PromptInput>,
) -> Result<HttpResponse, Problem> {
    let session = session.into_inner();
    let waiter = state.sync_prompts.listen(&user.user_id, &session).await?;
    let accepted =
        super::sessions::accept(&user, &request, &state, session.clone(), body.into_inner())
            .await?;
    let reply = state.sync_prompts.wait(waiter, &accepted.assistant_message_id).await?;
    let directory = reply.workspace_id.as_ref().map(of_workspace).unwrap_or_default();
    let info = MessageInfo::of_completion(&session, &reply).for_opencode(&directory);
    Ok(HttpResponse::Ok()
        .insert_header(("X-Consistency-Token", accepted.consistency_token))
        .json(MessageView { info, parts: reply.parts }))
}
