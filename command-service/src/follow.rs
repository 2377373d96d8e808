//! This instance's aggregate states kept current with every instance's commits.
//!
//! A command is decided from the state this instance holds of its aggregate, and its commit is
//! checked against what was committed since (`crate::read_set`). With several instances behind
//! a front that spreads requests, and workers' reports spread by a queue group, the commit
//! before a command was often another instance's: its decision was found stale at commit and
//! made again, a round trip more. Here every domain event the relay publishes (core NATS,
//! `oc.evt.>`) advances the state this instance holds of its aggregate (or starts one, for an
//! aggregate's first event), so the next command routed here finds it current.
//!
//! Best effort, and never trusted: an event missed or late leaves the state behind, and the
//! commit's check catches that as before. Events this instance committed itself, or that do not
//! follow on from what it holds, are skipped by their `Nats-Msg-Id` without being parsed.

use std::sync::Arc;

use cqrs_es::Aggregate;
use cqrs_es::persist::SerializedEvent;
use futures::StreamExt;
use schemas::envelope::Envelope;
use schemas::subjects;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::aggregates::{ApiKey, Organization, Session, Workspace};
use crate::startup::AppState;

/// Follow the bus until shutdown; a lost subscription is taken again.
pub async fn run(nats: async_nats::Client, state: Arc<AppState>, shutdown: CancellationToken) {
    let follow = || follow(&nats, &state, &shutdown);
    platform::retry::until_stopped("following committed events", &shutdown, follow).await;
}

async fn follow(
    nats: &async_nats::Client,
    state: &AppState,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let mut events = nats.subscribe(subjects::ALL_DOMAIN_EVENTS).await?;
    loop {
        let msg = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            msg = events.next() => msg,
        };
        let Some(msg) = msg else { anyhow::bail!("the subscription ended") };
        let id = msg.headers.as_ref().and_then(|h| h.get("Nats-Msg-Id")).map(|v| v.as_str());
        if let Some((aggregate, sequence)) = id.and_then(event_position)
            && !follows_on(state, aggregate, sequence).await
        {
            continue;
        }
        match serde_json::from_slice::<Envelope<Value>>(&msg.payload) {
            Ok(envelope) => apply(state, envelope).await,
            Err(e) => tracing::debug!(error = %e, subject = %msg.subject, "unreadable event"),
        }
    }
}

/// `<aggregateID>:<sequence>`, an event's id.
fn event_position(id: &str) -> Option<(&str, usize)> {
    let (aggregate, sequence) = id.rsplit_once(':')?;
    Some((aggregate, sequence.parse().ok()?))
}

/// Whether an event of `aggregate` at `sequence` would change what this instance holds (an
/// aggregate's first event does in every kind's cache but the one that holds it already).
async fn follows_on(state: &AppState, aggregate: &str, sequence: usize) -> bool {
    state.organizations.follows_on(aggregate, sequence).await
        || state.workspaces.follows_on(aggregate, sequence).await
        || state.sessions.follows_on(aggregate, sequence).await
        || state.api_keys.follows_on(aggregate, sequence).await
}

async fn apply(state: &AppState, envelope: Envelope<Value>) {
    let Some(sequence) = envelope.sequence.and_then(|s| usize::try_from(s).ok()) else { return };
    let id = envelope.aggregate_id.clone();
    let event = SerializedEvent::new(
        envelope.aggregate_id,
        sequence,
        envelope.aggregate_type,
        envelope.event_type,
        envelope.event_version,
        envelope.payload,
        Value::Object(Default::default()),
    );
    let events = vec![event];
    match events[0].aggregate_type.as_str() {
        Session::TYPE => state.sessions.follow(&id, events).await,
        // The directory keeps copies of its own of these (its lookups read them): both follow.
        Organization::TYPE => {
            state.organizations.follow(&id, events.clone()).await;
            state.directory.advance(events).await;
        }
        Workspace::TYPE => {
            state.workspaces.follow(&id, events.clone()).await;
            state.directory.advance(events).await;
        }
        ApiKey::TYPE => {
            state.api_keys.follow(&id, events.clone()).await;
            state.directory.advance(events).await;
        }
        _ => return,
    }
    metrics::counter!("aggregate_events_followed_total").increment(1);
}
