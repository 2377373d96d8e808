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
//! While this instance's relay holds the outbox, every event reaches the bus through it: the
//! relay hands this follower what it published (`crate::relay::Relayed`), and the follower does
//! not subscribe, so a lone instance hears nothing back from the bus.
//!
//! Best effort, and never trusted: an event missed or late leaves the state behind, and the
//! commit's check catches that as before. Events this instance committed itself, or that do not
//! follow on from what it holds, are skipped by their `Nats-Msg-Id` (or their place, from the
//! relay) without being parsed.

use std::sync::Arc;

use cqrs_es::Aggregate;
use cqrs_es::persist::SerializedEvent;
use futures::StreamExt;
use platform::stored_event::StoredEvent;
use schemas::envelope::Envelope;
use schemas::subjects;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::aggregates::{ApiKey, Organization, Session, Workspace};
use crate::relay::Relayed;
use crate::startup::AppState;

/// Follow this instance's relay and, while it does not relay, the bus, until shutdown; a lost
/// subscription is taken again.
pub async fn run(
    nats: async_nats::Client,
    state: Arc<AppState>,
    relayed: Relayed,
    shutdown: CancellationToken,
) {
    // (behind a lock only to lend the receivers to each attempt in turn)
    let relayed = tokio::sync::Mutex::new(relayed);
    let follow = || async { follow(&nats, &state, &mut *relayed.lock().await, &shutdown).await };
    platform::retry::until_stopped("following committed events", &shutdown, follow).await;
}

async fn follow(
    nats: &async_nats::Client,
    state: &AppState,
    relayed: &mut Relayed,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    loop {
        // Subscribed only while this instance's relay does not relay (and so tells nothing).
        let relaying = *relayed.relaying.borrow_and_update();
        let mut bus = match relaying {
            true => None,
            false => Some(nats.subscribe(subjects::ALL_DOMAIN_EVENTS).await?),
        };
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                // (an error: the relay is gone for good, and `relaying` stays as it was)
                Ok(()) = relayed.relaying.changed() => break,
                Some(events) = relayed.events.recv() => {
                    for event in events {
                        let sequence = usize::try_from(event.sequence).unwrap_or(0);
                        if follows_on(state, &event.aggregate_id, sequence).await {
                            apply(state, from_relay(event, sequence)).await;
                        }
                    }
                }
                msg = next_on(&mut bus) => {
                    let Some(msg) = msg else { anyhow::bail!("the subscription ended") };
                    follow_message(state, msg).await;
                }
            }
        }
    }
}

/// The next message of `bus`; never, without one.
async fn next_on(bus: &mut Option<async_nats::Subscriber>) -> Option<async_nats::Message> {
    match bus {
        Some(bus) => bus.next().await,
        None => std::future::pending().await,
    }
}

/// An event another instance's relay published.
async fn follow_message(state: &AppState, msg: async_nats::Message) {
    let id = msg.headers.as_ref().and_then(|h| h.get("Nats-Msg-Id")).map(|v| v.as_str());
    if let Some((aggregate, sequence)) = id.and_then(event_position)
        && !follows_on(state, aggregate, sequence).await
    {
        return;
    }
    let envelope = match serde_json::from_slice::<Envelope<Value>>(&msg.payload) {
        Ok(envelope) => envelope,
        Err(e) => return tracing::debug!(error = %e, subject = %msg.subject, "unreadable event"),
    };
    let Some(sequence) = envelope.sequence.and_then(|s| usize::try_from(s).ok()) else { return };
    let event = SerializedEvent::new(
        envelope.aggregate_id,
        sequence,
        envelope.aggregate_type,
        envelope.event_type,
        envelope.event_version,
        envelope.payload,
        Value::Object(Default::default()),
    );
    apply(state, event).await;
}

/// An event this instance's relay published, as the caches take it.
fn from_relay(event: StoredEvent, sequence: usize) -> SerializedEvent {
    SerializedEvent::new(
        event.aggregate_id,
        sequence,
        event.aggregate_type,
        event.event_type,
        event.event_version,
        event.payload,
        Value::Object(Default::default()),
    )
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

async fn apply(state: &AppState, event: SerializedEvent) {
    let id = event.aggregate_id.clone();
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
