//! `GET /session/{id}/event`: the session's events as Server-Sent Events, live and resumable.
//!
//! - Every event has `id:` = its JetStream stream sequence, valid on every instance.
//! - The first event, `server.connected`, carries the current position, so even a client that
//!   saw nothing else can resume exactly.
//! - `Last-Event-ID` (header, or `?lastEventID=` for clients that cannot set headers) resumes:
//!   what was missed is replayed from JetStream, then the stream continues live, with no gap and
//!   no duplicate (live frames already replayed are skipped by sequence).
//! - If what was missed is no longer retained, `sync.reload` tells the client to reload the
//!   session over REST before continuing live; it is never silently given a gap.
//! - A client too slow for the per-session buffer gets `server.lagged` and is disconnected; it
//!   resumes with its last id.
//! - A reader who loses the right to read (membership removed, API key revoked, signed out,
//!   account erased, credential expired) gets `server.access_ended` with the reason, and the
//!   stream ends: an `oc_access` notification makes every instance re-check its open streams of
//!   that user at once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::{HttpRequest, web};
use actix_web_lab::sse;
use async_nats::jetstream::consumer;
use async_nats::jetstream::stream::RawMessageErrorKind;
use futures::StreamExt;
use identity::{AuthUser, Authenticator};
use platform::problem::Problem;
use platform::telemetry::trace_step;
use schemas::ids::{OrganizationId, SessionId};
use schemas::subjects;
use tokio::sync::{broadcast, mpsc};
use tracing::Instrument;

use crate::access;
use crate::hub::{Frame, Subscription};
use crate::startup::AppState;
use platform::notifications::Interest;
use schemas::policy::Action;

/// Frames queued for one client's socket. Small: the per-session broadcast buffer is the slack.
const CLIENT_QUEUE: usize = 32;
/// Longest a replay may wait for its next message before the stream ends (the client resumes).
const REPLAY_IDLE: Duration = Duration::from_secs(2);
/// How long a stream state behind a resume's id or the instance's position is taken for a
/// stale answer of NATS's (a leader being elected, a partition healing); past it, an id beyond
/// the end is taken for one from elsewhere.
const STALE_PATIENCE: Duration = Duration::from_secs(5);

pub async fn stream(
    user: AuthUser,
    req: HttpRequest,
    state: web::Data<AppState>,
    auth: web::Data<Authenticator>,
    id: web::Path<SessionId>,
) -> Result<impl actix_web::Responder, Problem> {
    let last_event_id = last_event_id(&req)?;
    let org = async {
        // The session's own token (a client that just created it) needs no wait for the
        // projector: the session's organization is read from the event store if the read models
        // lack it. Another aggregate's token is read-your-writes, as for every read.
        let token = crate::consistency::token(&req)?;
        if token.is_some_and(|t| t.aggregate_id != id.as_str()) {
            drop(state.reader(&req, &user).await?);
        }
        access::session_as_committed(&state, &id, &user, Action::Read).await
    };
    let org = org.instrument(trace_step("session access")).await?;
    // One more open stream for this user, if they are under the cap (held until it ends).
    let lease = state.streams.take(&user.user_id).instrument(trace_step("stream lease")).await?;
    // The session's live events from a known position on: nothing after it can be missed. A
    // feed that cannot start (NATS unreachable) would not know what this client is owed.
    let wait = state.cfg.consistency_wait();
    let live = state.hub.subscribe(org.as_str(), id.as_str(), wait);
    let Some(live) = live.instrument(trace_step("feed ready")).await else {
        return Err(Problem::unavailable("the session's events cannot be followed now; retry"));
    };
    let (tx, rx) = mpsc::channel(CLIENT_QUEUE);
    let keep_alive = Duration::from_secs(state.cfg.sse_keep_alive_secs);
    let state = state.into_inner();
    let session = id.into_inner();
    // Interest in access changes from the moment access was checked, so none is missed.
    let watch = AccessWatch {
        changes: state.notifications.access.interest(user.user_id.as_str()),
        auth: auth.into_inner(),
        user,
    };
    tokio::spawn(async move {
        metrics::gauge!("sse_clients").increment(1.0);
        let outcome = serve(&state, &org, &session, last_event_id, live, watch, &tx).await;
        if let Err(e) = outcome {
            tracing::debug!(error = %e, %session, "sse stream ended");
        }
        metrics::gauge!("sse_clients").decrement(1.0);
        drop(lease);
    });
    Ok(sse::Sse::from_infallible_receiver(rx)
        .with_keep_alive(keep_alive)
        .with_retry_duration(Duration::from_secs(2)))
}

fn last_event_id(req: &HttpRequest) -> Result<Option<u64>, Problem> {
    let raw = req
        .headers()
        .get("Last-Event-ID")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| {
            req.query_string()
                .split('&')
                .find_map(|kv| kv.strip_prefix("lastEventID=").map(str::to_owned))
        });
    match raw.as_deref().map(str::trim) {
        None | Some("") => Ok(None),
        Some(s) => s.parse().map(Some).map_err(|_| {
            Problem::bad_request("Last-Event-ID must be an event id from this stream")
        }),
    }
}

fn control(event: &str, id: u64, data: serde_json::Value) -> sse::Event {
    sse::Data::new(data.to_string()).event(event.to_owned()).id(id.to_string()).into()
}

/// What a stream needs to notice that its reader lost the right to read it.
struct AccessWatch {
    changes: Interest,
    auth: Arc<Authenticator>,
    user: AuthUser,
}

impl AccessWatch {
    /// Why the reader may no longer read `session`, if so (`access::lost`).
    async fn lost(&self, state: &AppState, session: &SessionId) -> Option<&'static str> {
        access::lost(state, &self.auth, &self.user, access::Readable::Session(session)).await
    }
}

/// Feed one client until it goes away, lags, loses the right to read, or the service stops.
async fn serve(
    state: &AppState,
    org: &OrganizationId,
    session: &SessionId,
    resume_after: Option<u64>,
    mut live: Subscription,
    mut watch: AccessWatch,
    tx: &mpsc::Sender<sse::Event>,
) -> anyhow::Result<()> {
    let expires_in = watch.user.credential.expires_at_ms() - schemas::now_ms();
    let expiry = tokio::time::sleep(Duration::from_millis(expires_in.max(0) as u64));
    tokio::pin!(expiry);
    let position = live.position();
    let mut sent = position;
    if let Some(after) = resume_after {
        // (boxed: a resume's replay is large, and an idle stream should not carry its room)
        sent = Box::pin(replay(state, org, session, after, position, tx)).await?;
    } else {
        let hello = serde_json::json!({ "type": "server.connected", "properties": { "sessionID": session } });
        tx.send(control("server.connected", position, hello)).await?;
    }
    loop {
        let frame = tokio::select! {
            _ = state.shutdown.cancelled() => return Ok(()),
            _ = tx.closed() => return Ok(()),
            _ = &mut expiry => return end(tx, sent, "expired").await,
            _ = watch.changes.changed() => {
                match Box::pin(watch.lost(state, session)).await {
                    Some(reason) => return end(tx, sent, reason).await,
                    None => continue,
                }
            }
            f = live.recv() => f,
        };
        match frame {
            Ok(frame) if frame.seq <= sent => {} // already replayed
            Ok(frame) => {
                tx.send(frame.to_sse()).await?;
                metrics::counter!("sse_events_sent_total").increment(1);
                sent = frame.seq;
            }
            Err(broadcast::error::RecvError::Lagged(_)) => {
                let body = serde_json::json!({ "type": "server.lagged", "properties": { "lastEventID": sent } });
                let _ = tx.send(control("server.lagged", sent, body)).await;
                metrics::counter!("sse_lagged_total").increment(1);
                return Ok(());
            }
            Err(broadcast::error::RecvError::Closed) => return Ok(()),
        }
    }
}

/// Tell the client why its stream ends for good (reconnecting with the same credential will not
/// help): `credential` (revoked, signed out, account erased), `access` (no longer a member who
/// may read the session), `expired`.
async fn end(tx: &mpsc::Sender<sse::Event>, sent: u64, reason: &str) -> anyhow::Result<()> {
    let body =
        serde_json::json!({ "type": "server.access_ended", "properties": { "reason": reason } });
    let _ = tx.send(control("server.access_ended", sent, body)).await;
    metrics::counter!("sse_access_ended_total", "reason" => reason.to_owned()).increment(1);
    Ok(())
}

/// Send what the client missed after `after`, up to at least `until`. Returns the last id sent.
async fn replay(
    state: &AppState,
    org: &OrganizationId,
    session: &SessionId,
    after: u64,
    until: u64,
    tx: &mpsc::Sender<sse::Event>,
) -> anyhow::Result<u64> {
    let mut stream = state.js.get_stream(subjects::STREAM).await?;
    let mut info = stream.info().await?.state.clone();
    // The stream's state must have reached both the client's id and this instance's position
    // (everything the feed has seen was stored): while NATS elects a leader or heals a
    // partition, a server that has not caught up can answer. Its answers would take the
    // client's id backwards (an id "from the future" reloads) or skip what it lacks (the
    // check for events between below), so ask again for a while.
    let (mut pause, patience) = (Duration::from_millis(50), Instant::now() + STALE_PATIENCE);
    while info.last_sequence < after.max(until) && Instant::now() < patience {
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(1));
        info = stream.info().await?.state.clone();
    }
    if after > info.last_sequence.max(until) {
        // An id from the future (another deployment, or made up): start over.
        metrics::counter!("sse_future_ids_total").increment(1);
        return reload(session, until, tx).await;
    }
    if info.last_sequence < until {
        // Still behind what this instance has seen: nothing it says can be trusted yet. The
        // client resumes from what it has.
        anyhow::bail!("the stream's state is behind this instance's position");
    }
    if after + 1 < info.first_sequence {
        return reload(session, until, tx).await;
    }
    if after >= until {
        return Ok(after);
    }
    // Whether anything of the session lies between `after` and `until`, asked of the stream's
    // leader (which has everything stored): if not, the client is caught up to `until` at once.
    let check = subjects::session_events(org.as_str(), session.as_str());
    let first =
        stream.raw_message_builder().sequence(after + 1).next_by_subject(check).send().await;
    match first {
        Ok(m) if m.sequence > until => return Ok(until),
        Ok(_) => {}
        Err(e) if e.kind() == RawMessageErrorKind::NoMessageFound => return Ok(until),
        Err(e) => return Err(e.into()),
    }
    let consumer = stream
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subjects: subjects::session_filters(org, session).to_vec(),
            deliver_policy: consumer::DeliverPolicy::ByStartSequence { start_sequence: after + 1 },
            ..Default::default()
        })
        .await?;
    let mut messages = consumer.messages().await?;
    let mut sent = after;
    loop {
        // Something is owed: a replay that stalls (NATS electing a leader) ends the stream
        // rather than pass over what it did not send; the client resumes from what it got.
        let msg = match tokio::time::timeout(REPLAY_IDLE, messages.next()).await {
            Err(_) => anyhow::bail!("the replay stalled"),
            Ok(None) => anyhow::bail!("the replay ended early"),
            Ok(Some(m)) => m?,
        };
        let meta = msg.info().map_err(|e| anyhow::anyhow!("{e}"))?;
        let (seq, pending) = (meta.stream_sequence, meta.pending);
        // An ordered consumer that the client library makes again before its first message
        // starts from the beginning of the stream (async-nats 0.51 falls back to "deliver
        // all"): what the client has is never sent again.
        if seq <= sent {
            continue;
        }
        if let Some(frame) = Frame::decode(seq, &msg.payload) {
            tx.send(frame.to_sse()).await?;
            metrics::counter!("sse_events_replayed_total").increment(1);
        }
        sent = seq;
        // Nothing more of the session is stored (pending 0), or the rest comes live: the
        // client is caught up to `until` at least.
        if pending == 0 || seq >= until {
            return Ok(seq.max(until));
        }
    }
}

async fn reload(
    session: &SessionId,
    position: u64,
    tx: &mpsc::Sender<sse::Event>,
) -> anyhow::Result<u64> {
    let body = serde_json::json!({
        "type": "sync.reload",
        "properties": { "sessionID": session, "reason": "the events after your last id are no longer retained; reload the session" },
    });
    tx.send(control("sync.reload", position, body)).await?;
    metrics::counter!("sse_reloads_total").increment(1);
    Ok(position)
}
