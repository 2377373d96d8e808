//! OpenCode's own read API, as its stock clients call it (docs/opencode-clients.md): `GET /session`
//! and `GET /path`, scoped by the directory the client sends.
//!
//! The directory means a workspace (`identity::directory`); a workspace the caller may not read
//! is as missing as one that does not exist, so no directory reaches another tenant.

use std::time::Duration;

use actix_web::{HttpRequest, HttpResponse, web};
use actix_web_lab::sse;
use futures::StreamExt;
use identity::directory::{directory_of, of_workspace, workspace_meant};
use identity::{AuthUser, Authenticator};
use platform::problem::Problem;
use schemas::ids::{OrganizationId, WorkspaceId};
use schemas::policy::Action;
use schemas::read::{OpenCodeConfig, OpenCodePath, SessionView};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::{mpsc, oneshot};

use crate::access;
use crate::receipts::Receipts;
use crate::startup::AppState;

/// The workspace an OpenCode request means (its directory, else its key's default), checked
/// readable by the caller: its id, its organization, and the reader connection that checked it.
pub(super) async fn workspace_of(
    req: &HttpRequest,
    state: &AppState,
    user: &AuthUser,
    directory: Option<&str>,
) -> Result<(WorkspaceId, OrganizationId, platform::db::Bound), Problem> {
    let (ws, granted, db) = workspace_row(req, state, user, directory).await?;
    Ok((ws, granted.organization_id, db))
}

/// The same, with the workspace's read-model row.
pub(super) async fn workspace_row(
    req: &HttpRequest,
    state: &AppState,
    user: &AuthUser,
    directory: Option<&str>,
) -> Result<(WorkspaceId, access::Granted, platform::db::Bound), Problem> {
    let directory = directory_of(req, directory);
    let ws = workspace_meant(directory.as_deref(), user)?;
    let (meant, caller) = (ws.clone(), user.clone());
    let (db, granted) = state
        .reader_then(req, user, move |db| {
            Box::pin(async move { access::workspace(db, &meant, &caller, Action::Read).await })
        })
        .await?;
    Ok((ws, granted, db))
}

/// OpenCode's `GET /session` has no paging: the newest this many.
const MAX_LISTED: i64 = 1000;
const DEFAULT_LISTED: i64 = 100;

#[derive(Debug, Deserialize)]
pub struct ListQuery {
    directory: Option<String>,
    limit: Option<i64>,
}

/// `GET /session`: the sessions of the workspace the directory means, newest first.
pub async fn sessions(
    user: AuthUser,
    req: HttpRequest,
    state: web::Data<AppState>,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, Problem> {
    let limit = query.limit.unwrap_or(DEFAULT_LISTED);
    if !(1..=MAX_LISTED).contains(&limit) {
        return Err(Problem::bad_request(format!("limit must be between 1 and {MAX_LISTED}")));
    }
    let (ws, org, db) = workspace_of(&req, &state, &user, query.directory.as_deref()).await?;
    let rows = db
        .query(
            "SELECT * FROM rm_sessions WHERE organization_id = $1 AND workspace_id = $2 \
             ORDER BY session_id DESC LIMIT $3",
            &[&org.as_str(), &ws.as_str(), &limit],
        )
        .await?;
    let sessions = rows
        .iter()
        .map(super::sessions::session_view)
        .collect::<Result<Vec<SessionView>, Problem>>()?;
    Ok(HttpResponse::Ok().json(sessions))
}

/// `GET /config`: what OpenCode's clients read of their configuration (the same for every
/// workspace; the directory is checked all the same, so a bad one fails here as it would later).
pub async fn config(
    user: AuthUser,
    req: HttpRequest,
    state: web::Data<AppState>,
    query: web::Query<DirectoryQuery>,
) -> Result<HttpResponse, Problem> {
    let _checked = workspace_of(&req, &state, &user, query.directory.as_deref()).await?;
    Ok(HttpResponse::Ok().json(OpenCodeConfig { share: "disabled".into(), autoupdate: false }))
}

/// `GET /path`: where a client of the workspace the directory means works (`/<workspace id>`).
pub async fn path(
    user: AuthUser,
    req: HttpRequest,
    state: web::Data<AppState>,
    query: web::Query<DirectoryQuery>,
) -> Result<HttpResponse, Problem> {
    let (ws, ..) = workspace_of(&req, &state, &user, query.directory.as_deref()).await?;
    let root = of_workspace(&ws);
    Ok(HttpResponse::Ok().json(OpenCodePath {
        home: root.clone(),
        state: root.clone(),
        config: root.clone(),
        worktree: root.clone(),
        directory: root,
    }))
}

/// How often OpenCode's streams send `server.heartbeat`: under the 15 s of silence after which
/// OpenCode's web app gives a stream up.
const HEARTBEAT: Duration = Duration::from_secs(10);
/// Events queued for one client's socket.
const CLIENT_QUEUE: usize = 64;

/// What an OpenCode stream queues for its client's socket: an event, or a mark that answers
/// once the response has taken every event queued before it (handed to the connection's writer,
/// not merely queued), which is when a reply is said to be sent.
enum Outgoing {
    Event(sse::Event),
    Mark(oneshot::Sender<()>),
}

/// The response body of `rx`: its events, each mark answered as the body reaches it.
fn body_of(mut rx: mpsc::Receiver<Outgoing>) -> impl futures::Stream<Item = sse::Event> + 'static {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx)).filter_map(|o| async move {
        match o {
            Outgoing::Event(e) => Some(e),
            Outgoing::Mark(taken) => {
                let _ = taken.send(());
                None
            }
        }
    })
}

/// The directory of an OpenCode request, when sent in the query.
#[derive(Debug, Deserialize)]
pub struct DirectoryQuery {
    pub(super) directory: Option<String>,
}

/// `GET /event`: OpenCode's event stream of the workspace the directory means — every session
/// of it, live, in OpenCode's shapes (`crate::opencode_events`), `server.connected` first and
/// `server.heartbeat` every 10 s. Not resumable (OpenCode's clients do not resume it; each
/// session's own stream, `/session/{id}/event`, is).
pub async fn events(
    user: AuthUser,
    req: HttpRequest,
    state: web::Data<AppState>,
    auth: web::Data<Authenticator>,
    query: web::Query<DirectoryQuery>,
) -> Result<impl actix_web::Responder, Problem> {
    stream(user, req, state, auth, query.into_inner(), false).await
}

/// `GET /global/event`: the same, each event wrapped as `{directory, payload}`.
pub async fn global_events(
    user: AuthUser,
    req: HttpRequest,
    state: web::Data<AppState>,
    auth: web::Data<Authenticator>,
    query: web::Query<DirectoryQuery>,
) -> Result<impl actix_web::Responder, Problem> {
    stream(user, req, state, auth, query.into_inner(), true).await
}

async fn stream(
    user: AuthUser,
    req: HttpRequest,
    state: web::Data<AppState>,
    auth: web::Data<Authenticator>,
    query: DirectoryQuery,
    global: bool,
) -> Result<impl actix_web::Responder, Problem> {
    // (the connection goes back before the stream starts)
    let (ws, org, _) = workspace_of(&req, &state, &user, query.directory.as_deref()).await?;
    let lease = state.streams.take(&user.user_id).await?;
    let wait = state.cfg.consistency_wait();
    let Some(mut live) = state.hub.subscribe_workspace(org.as_str(), ws.as_str(), wait).await
    else {
        return Err(Problem::unavailable("the workspace's events cannot be followed now; retry"));
    };
    let (tx, rx) = mpsc::channel::<Outgoing>(CLIENT_QUEUE);
    let state = state.into_inner();
    let auth = auth.into_inner();
    let mut changes = state.notifications.access.interest(user.user_id.as_str());
    let dir = of_workspace(&ws);
    // Heard before it is said to be open: a prompt calling the roll after this is answered.
    let receipts = Receipts::new(state.js.client(), user.user_id.clone(), ws.clone());
    let mut roll_calls = receipts.roll_calls().await;
    receipts.open().await;
    // Opened (a client waiting for its stream, as `opencode run` does, can be told it is live).
    metrics::counter!("opencode_event_streams_total").increment(1);
    tokio::spawn(async move {
        metrics::gauge!("opencode_event_streams").increment(1.0);
        let send = |e: serde_json::Value| {
            let body = if global { json!({ "directory": dir, "payload": e }) } else { e };
            Outgoing::Event(sse::Event::Data(sse::Data::new(body.to_string())))
        };
        let mut translator = crate::opencode_events::Translator::default();
        // First due one period away: awaiting `interval`'s immediate first tick would wait for
        // the timer's next millisecond before the stream says it is connected.
        let mut heartbeat =
            tokio::time::interval_at(tokio::time::Instant::now() + HEARTBEAT, HEARTBEAT);
        let connected = json!({ "type": "server.connected", "properties": {} });
        let mut open = tx.send(send(connected)).await.is_ok();
        while open {
            let frame = tokio::select! {
                // (a roll call that came before an event is answered before it is sent)
                biased;
                _ = state.shutdown.cancelled() => break,
                _ = tx.closed() => break,
                Some(_) = roll_calls.next() => {
                    receipts.open().await;
                    continue;
                }
                _ = heartbeat.tick() => {
                    let beat = json!({ "type": "server.heartbeat", "properties": {} });
                    if tx.send(send(beat)).await.is_err() { break }
                    continue;
                }
                _ = changes.changed() => {
                    let readable = access::Readable::Workspace(&ws);
                    let Some(reason) = Box::pin(access::lost(&state, &auth, &user, readable)).await else {
                        continue;
                    };
                    let body = json!({ "reason": reason });
                    let ended = json!({ "type": "server.access_ended", "properties": body });
                    let _ = tx.send(send(ended)).await;
                    break;
                }
                f = live.recv() => f,
            };
            let Ok(frame) = frame else { break }; // lagged or closed: the client reconnects
            let translated = translator.translate(&frame.data, &dir);
            for e in translated.events {
                if tx.send(send(e)).await.is_err() {
                    open = false;
                    break;
                }
            }
            if let (Some(session), Some(reply), true) =
                (&translated.session, translated.completed, open)
            {
                // Said once the response has taken the reply's events, not when they are
                // queued: a client that exits on the synchronous answer (`opencode run`) must
                // not get it while the events wait behind a busy writer. Said beside the
                // stream, which goes on meanwhile; nothing is said if the client leaves first.
                let (taken, when_taken) = oneshot::channel();
                if tx.send(Outgoing::Mark(taken)).await.is_err() {
                    break;
                }
                let (receipts, session) = (receipts.clone(), session.clone());
                tokio::spawn(async move {
                    if when_taken.await.is_ok() {
                        receipts.sent(&session, reply).await;
                    }
                });
            }
        }
        receipts.closed().await;
        metrics::gauge!("opencode_event_streams").decrement(1.0);
        drop(lease);
    });
    Ok(sse::Sse::from_infallible_stream(body_of(rx)))
}
