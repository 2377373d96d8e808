//! `POST /workspace/{ws}/session`, `POST /session/{id}/prompt_async`, `POST /session/{id}/abort`.

use actix_web::{HttpResponse, web};
use identity::{AuthUser, Credential};
use platform::http::RequestId;
use platform::problem::Problem;
use schemas::api::{
    Accepted, ConsistencyToken, CreateSession, MAX_PROMPT_PARTS, PartInput, PromptAccepted,
    PromptInput,
};
use schemas::events::UserMessage;
use std::collections::HashSet;

use schemas::ids::{MessageId, PartId, SessionId, WorkspaceId};
use schemas::message::Part;

use super::context;
use crate::aggregates::SessionCommand;
use crate::error::{CommandError, DomainError};
use crate::startup::AppState;

pub async fn create(
    user: AuthUser,
    request: RequestId,
    state: web::Data<AppState>,
    workspace: web::Path<WorkspaceId>,
    body: web::Json<CreateSession>,
) -> Result<HttpResponse, Problem> {
    let body = body.into_inner();
    let (id, token) =
        start(&user, &request, &state, workspace.into_inner(), body.project_id, body.title).await?;
    let consistency_token = token.encode();
    Ok(HttpResponse::Created().json(Accepted { id: id.to_string(), consistency_token }))
}

/// Start a session in `workspace` (the command checks the caller may); its id and consistency
/// token.
pub(super) async fn start(
    user: &AuthUser,
    request: &RequestId,
    state: &AppState,
    workspace: WorkspaceId,
    project: Option<schemas::ids::ProjectId>,
    title: Option<String>,
) -> Result<(SessionId, ConsistencyToken), Problem> {
    let id = SessionId::new();
    let command = SessionCommand::Create {
        id: id.clone(),
        workspace,
        project,
        title,
        actor: user.user_id.clone(),
    };
    let token = state.sessions.execute(id.as_str(), command, &context(user, request)).await?;
    Ok((id, token))
}

/// Accept a prompt; the reply streams on the session's event stream.
pub async fn prompt(
    user: AuthUser,
    request: RequestId,
    state: web::Data<AppState>,
    session: web::Path<SessionId>,
    body: web::Json<PromptInput>,
) -> Result<HttpResponse, Problem> {
    let accepted = accept(&user, &request, &state, session.into_inner(), body.into_inner()).await?;
    Ok(HttpResponse::Accepted().json(accepted))
}

/// Accept a prompt in `session`: the command, with its checks, budgets and rates.
pub(super) async fn accept(
    user: &AuthUser,
    request: &RequestId,
    state: &AppState,
    session: SessionId,
    input: PromptInput,
) -> Result<PromptAccepted, Problem> {
    if input.parts.len() > MAX_PROMPT_PARTS {
        return Err(Problem::bad_request(format!("at most {MAX_PROMPT_PARTS} parts")));
    }
    if input.agent.as_deref().is_some_and(|a| a != schemas::api::AGENT) {
        return Err(Problem::bad_request(format!(
            "agent: this service runs one agent, {:?}",
            schemas::api::AGENT
        )));
    }
    let message_id = input.message_id.unwrap_or_default();
    let part_ids: Vec<&PartId> = input
        .parts
        .iter()
        .filter_map(|p| match p {
            PartInput::Text { id, .. } => id.as_ref(),
        })
        .collect();
    if part_ids.iter().collect::<HashSet<_>>().len() != part_ids.len() {
        return Err(Problem::bad_request("parts: each part needs its own id"));
    }
    let parts = input
        .parts
        .into_iter()
        .map(|p| match p {
            PartInput::Text { id, text } => {
                Part::Text { id: id.unwrap_or_default(), message_id: message_id.clone(), text }
            }
        })
        .collect();
    let message = UserMessage {
        id: message_id.clone(),
        user_id: user.user_id.clone(),
        parts,
        // Decided by the session (this, its last, the workspace's or the organization's).
        model: crate::directory::deployment_default(),
        time: schemas::now_ms(),
    };
    // Ours, and after the prompt's (which a client may have made a little ahead of our clock).
    let assistant_message_id = MessageId::new().max(message_id.successor());
    let api_key = match &user.credential {
        Credential::ApiKey { key_id, .. } => Some(key_id.clone()),
        _ => None,
    };
    let command = SessionCommand::Prompt {
        message,
        assistant_message_id: assistant_message_id.clone(),
        model: input.model,
        api_key,
    };
    let ctx = context(user, request);
    let token = match state.sessions.execute(session.as_str(), command, &ctx).await {
        Ok(token) => token,
        Err(e) => return Err(refused(state, &session, &assistant_message_id, e).await),
    };
    Ok(PromptAccepted {
        session_id: session,
        user_message_id: message_id,
        assistant_message_id,
        consistency_token: token.encode(),
    })
}

/// Ask the worker to stop the running reply; it ends as aborted with the text so far.
pub async fn abort(
    user: AuthUser,
    request: RequestId,
    state: web::Data<AppState>,
    session: web::Path<SessionId>,
) -> Result<HttpResponse, Problem> {
    let command = SessionCommand::Abort { actor: user.user_id.clone() };
    let token =
        state.sessions.execute(session.as_str(), command, &context(&user, &request)).await?;
    Ok(HttpResponse::Accepted()
        .json(Accepted { id: session.to_string(), consistency_token: token.encode() }))
}

/// A prompt the command refused holds nothing under the budgets: the hold is the command's last
/// step, so only a failure to commit after it (a conflict, the event store unavailable) can leave
/// one, which is given back now (the sweep frees it if this fails too). A budget that refused
/// the prompt raises its `exhausted` alert, once per period.
async fn refused(
    state: &AppState,
    session: &SessionId,
    reply: &MessageId,
    error: CommandError,
) -> Problem {
    if !matches!(error, CommandError::Domain(_))
        && let Err(e) = state.spend.release(session, reply).await
    {
        tracing::warn!(error = %e, "cannot release a refused prompt's budget reservation");
    }
    if let CommandError::Domain(DomainError::OverBudget(refusal)) = &error
        && let Err(e) = crate::spend_alerts::raise_exhausted(state, session, refusal).await
    {
        tracing::warn!(error = %e, "cannot raise a budget's exhausted alert");
    }
    error.into()
}
