//! Runs a command on an aggregate and commits its events.
//!
//! This is `CqrsFramework::execute_with_metadata` from cqrs-es, plus what that call lacks: it
//! returns the committed sequence (for the consistency token), labels events with their tenant
//! scope (for the outbox subject), and retries optimistic-lock conflicts a bounded number of times
//! (cqrs-es issue #160: concurrent commands on one aggregate are not serialised). The plain
//! event store is used on purpose: the 0.5.0 snapshot stores apply events twice. Aggregates are
//! loaded through this instance's cache (`aggregate_cache.rs`) instead of from all their events,
//! and committed in one statement (`event_repository.rs`). A command first decides without
//! reading anything, from the cached states of the aggregate (a new one, if this instance holds
//! none) and of what its directory questions are about, and commits only if none of them
//! changed since (`read_set.rs`); a stale state is brought up to date by that statement's answer
//! (an aggregate decided as new that is not: its whole history) and the command decided again.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use cqrs_es::event_sink::EventSink;
use cqrs_es::persist::{PersistedEventStore, SerializedEvent};
use cqrs_es::{Aggregate, AggregateContext, AggregateError, EventEnvelope, EventStore};
use platform::stored_event::StoredEvent;
use platform::telemetry::trace_step;
use schemas::api::{ConsistencyToken, MAX_EVENT_BYTES};
use schemas::envelope::metadata;
use tracing::Instrument;

use crate::aggregate_cache::AggregateCache;
use crate::aggregates::Scoped;
use crate::catch_up::CatchUp;
use crate::directory::Services;
use crate::error::{CommandError, DomainError};
use crate::event_repository::{Checked, Commit, EventRepository, Written};
use crate::group_commit::GroupCommit;
use crate::read_set::{CheckedLedger, ReadSet};

/// Attempts before a conflicting command is answered 409.
const MAX_ATTEMPTS: u32 = 5;

/// Who asked, and why: recorded as event metadata.
#[derive(Debug, Clone)]
pub struct CommandContext {
    /// `usr_…` or `service:<name>`.
    pub actor: String,
    pub correlation_id: String,
    pub causation_id: Option<String>,
    /// For callers using an API key: the only organization the command may touch. Checked
    /// against the aggregate after it decided, before anything is committed.
    pub organization_scope: Option<schemas::ids::OrganizationId>,
}

pub struct Executor<A: Aggregate> {
    store: PersistedEventStore<EventRepository, A>,
    /// The same event store, for checks of what decisions were made from.
    commits: Arc<EventRepository>,
    /// Commits checked against what they were decided from, several at once in one statement.
    group: GroupCommit,
    cache: AggregateCache<A>,
    services: Services,
    wake: crate::relay::Wake,
}

impl<A> Executor<A>
where
    A: Aggregate<Services = Services, Error = DomainError> + Scoped + Clone + 'static,
    A::Command: Clone,
{
    pub fn new(
        pool: sqlx::PgPool,
        catch_up: CatchUp,
        services: Services,
        wake: crate::relay::Wake,
    ) -> Self {
        let commits = Arc::new(EventRepository::new(pool.clone()));
        Self {
            store: PersistedEventStore::new_event_store(EventRepository::new(pool)),
            commits: commits.clone(),
            group: GroupCommit::start(commits),
            cache: AggregateCache::new(catch_up),
            services,
            wake,
        }
    }

    /// Execute `command` on aggregate `id`. Returns the position the read side must reach to
    /// reflect it. Events are committed before this returns.
    pub async fn execute(
        &self,
        id: &str,
        command: A::Command,
        ctx: &CommandContext,
    ) -> Result<ConsistencyToken, CommandError> {
        let span = tracing::info_span!(
            target: platform::telemetry::TRACE_TARGET,
            "command",
            otel.name = %format_args!("command {}", A::TYPE),
            aggregate.id = id,
        );
        self.execute_with_retries(id, command, ctx).instrument(span).await
    }

    async fn execute_with_retries(
        &self,
        id: &str,
        command: A::Command,
        ctx: &CommandContext,
    ) -> Result<ConsistencyToken, CommandError> {
        let mut attempt = 0;
        let mut from_cache = true;
        loop {
            attempt += 1;
            let result = if from_cache {
                match self.try_from_cache(id, command.clone(), ctx).await {
                    Cached::Answered(result) => result,
                    // Brought up to date by the check: decide again, still without a read.
                    Cached::Stale if attempt < MAX_ATTEMPTS => continue,
                    Cached::Stale | Cached::Uncached => {
                        self.try_execute(id, command.clone(), ctx).await
                    }
                }
            } else {
                self.try_execute(id, command.clone(), ctx).await
            };
            let outcome = match &result {
                Ok(_) => "ok",
                Err(AggregateError::AggregateConflict) => "conflict",
                Err(AggregateError::UserError(_)) => "rejected",
                Err(_) => "error",
            };
            metrics::counter!("commands_total", "aggregate" => A::TYPE, "outcome" => outcome)
                .increment(1);
            match result {
                Err(AggregateError::AggregateConflict) if attempt < MAX_ATTEMPTS => {
                    // A writer of the same sequence won: read what it wrote from now on. Back
                    // off a little, with jitter, so racing writers do not collide again.
                    from_cache = false;
                    let jitter = u64::from(std::process::id() ^ attempt.wrapping_mul(7919)) % 5;
                    tokio::time::sleep(Duration::from_millis((1 << attempt) + jitter)).await;
                }
                other => return other.map_err(CommandError::from),
            }
        }
    }

    /// Where aggregate `id` belongs (its organization, workspace, session), as last committed.
    pub async fn scope_of(&self, id: &str) -> Result<crate::aggregates::Scope, CommandError> {
        let mut context = self.cache.load(&self.store, id).await.map_err(CommandError::from)?;
        Ok(context.aggregate().scope())
    }

    /// Decide from the states this instance holds (the aggregate, and what the directory
    /// answers from), and commit only if none of them changed since (`crate::read_set`). A
    /// refusal, or a command that changes nothing, is checked the same way before it is
    /// answered. Stale states are brought up to date from the check's answer.
    async fn try_from_cache(&self, id: &str, command: A::Command, ctx: &CommandContext) -> Cached {
        let held = self.cache.peek(id).instrument(trace_step("load")).await;
        // Nothing held: decided as new (a creation needs no read); if it is not, the check
        // answers with its whole history, and the command is decided again from that.
        let from = held.unwrap_or_else(|| Arc::new((A::default(), 0)));
        let reads = ReadSet::default();
        let Some(directory) = self.services.directory.answering_from_cache(&reads) else {
            return Cached::Uncached;
        };
        let (mut aggregate, sequence) = (from.0.clone(), from.1);
        reads.note(A::TYPE, id, sequence);
        let ledger = Arc::new(CheckedLedger::new(
            self.services.spend.clone(),
            reads.clone(),
            self.commits.clone(),
        ));
        let services = Services { directory, spend: ledger.clone() };
        let decided = self.decide(&mut aggregate, command, services, ctx).await;
        if let Some(missed) = ledger.take_missed() {
            return self.caught_up(id, from, missed).await;
        }
        let (events, scope, bytes, refused) = match decided {
            Ok((events, scope, bytes)) => (events, scope, bytes, None),
            // A lookup failed: nothing was decided, and nothing to check.
            Err(AggregateError::UserError(DomainError::Unavailable(reason))) => {
                return Cached::Answered(Err(AggregateError::UserError(DomainError::Unavailable(
                    reason,
                ))));
            }
            // Refused: answered once the states it was refused on prove current.
            Err(AggregateError::UserError(refused)) => {
                (Vec::new(), aggregate.scope(), 0, Some(refused))
            }
            Err(e) => return Cached::Answered(Err(e)),
        };
        let metadata = event_metadata(&scope, ctx);
        let envelopes = wrap::<A>(id, sequence, events, metadata);
        let serialized: Result<Vec<_>, _> =
            envelopes.iter().map(SerializedEvent::try_from).collect();
        let serialized = match serialized {
            Ok(serialized) => serialized,
            Err(e) => return Cached::Answered(Err(AggregateError::from(e))),
        };
        let commit = Commit {
            aggregate_type: A::TYPE,
            aggregate_id: id.to_owned(),
            events: serialized,
            bytes,
            known: reads.known(),
        };
        let checked = self.group.commit(commit).instrument(trace_step("commit")).await;
        let (written, serialized) = match checked {
            Ok((Checked::Written(written), serialized)) => (written, serialized),
            Ok((Checked::Stale(newer), _)) => return self.caught_up(id, from, newer).await,
            Err(e) => return Cached::Answered(Err(AggregateError::from(e))),
        };
        metrics::counter!("commands_from_cache_total", "aggregate" => A::TYPE).increment(1);
        if let Some(refused) = refused {
            return Cached::Answered(Err(AggregateError::UserError(refused)));
        }
        let count = serialized.len();
        if count > 0 {
            // Remembered before the relay gets the events: the reply to a prompt, reported here
            // as soon as the prompt is published, then finds the prompt's state held.
            self.cache.remember(id, aggregate, sequence + count).await;
            if written.outbox.len() == count {
                let events = published(serialized, &written);
                self.wake.committed_events(events, written.bytes, written.behind_earlier);
            } else {
                self.wake.committed(); // (never: one row back per event written)
            }
        }
        let sequence = (sequence + count) as u64;
        Cached::Answered(Ok(ConsistencyToken { aggregate_id: id.to_owned(), sequence }))
    }

    /// Whether an event of `id` at `sequence` would advance the state this instance holds.
    pub async fn follows_on(&self, id: &str, sequence: usize) -> bool {
        self.cache.follows_on(id, sequence).await
    }

    /// Advance the state this instance holds of `id` with `events` committed elsewhere
    /// (`crate::follow`).
    pub async fn follow(&self, id: &str, events: Vec<SerializedEvent>) {
        self.cache.follow(id, events).await;
    }

    /// A decision from `from` (a state of `id`) found stale: bring this instance's states up to
    /// date with what they `missed`.
    async fn caught_up(
        &self,
        id: &str,
        from: Arc<(A, usize)>,
        missed: Vec<SerializedEvent>,
    ) -> Cached {
        metrics::counter!("commands_from_stale_cache_total", "aggregate" => A::TYPE).increment(1);
        // The directory holds aggregates of its own (an organization command's lookups read
        // the directory's copy of it): every event goes to both.
        let own = missed.iter().filter(|e| e.aggregate_type == A::TYPE && e.aggregate_id == id);
        self.cache.advance(id, Some(from), own.cloned().collect()).await;
        self.services.directory.advance(missed).await;
        Cached::Stale
    }

    /// Load the aggregate (its cached state and the events since, or all its events) with the
    /// directory reads it will need, decide, and commit; a writer of the same sequence meanwhile
    /// is a conflict.
    async fn try_execute(
        &self,
        id: &str,
        command: A::Command,
        ctx: &CommandContext,
    ) -> Result<ConsistencyToken, AggregateError<DomainError>> {
        // The directory reads the command will need, where the cached state already names them,
        // at the same time as the aggregate itself (`crate::read_ahead`).
        let reads = self.cache.peek(id).await.and_then(|c| c.0.directory_reads(&command));
        let (loaded, read_ahead) = tokio::join!(
            self.cache.load(&self.store, id).instrument(trace_step("load")),
            self.services.read_ahead(reads)
        );
        let mut context = loaded?;
        let read_ahead = read_ahead.map_err(AggregateError::UserError)?;
        let (events, scope, _) =
            self.decide(&mut context.aggregate, command, read_ahead, ctx).await?;
        // The sink applied the events to the aggregate already: this is the state after commit.
        let (state, state_sequence) =
            (context.aggregate.clone(), context.current_sequence + events.len());
        let metadata = event_metadata(&scope, ctx);
        let committed =
            self.store.commit(events, context, metadata).instrument(trace_step("commit")).await?;
        self.cache.remember(id, state, state_sequence).await;
        self.wake.committed();
        let sequence = committed.last().map_or(state_sequence, |e| e.sequence) as u64;
        Ok(ConsistencyToken { aggregate_id: id.to_owned(), sequence })
    }

    /// Run `command` on `aggregate` with `services`: the events it decided (applied to
    /// `aggregate` already), the scope they belong to and their size as stored, or why it was
    /// refused.
    async fn decide(
        &self,
        aggregate: &mut A,
        command: A::Command,
        services: Services,
        ctx: &CommandContext,
    ) -> Result<(Vec<A::Event>, crate::aggregates::Scope, usize), AggregateError<DomainError>> {
        // An API key reaches one organization. Outside it every aggregate is "not found", before
        // any other check could answer differently (403, 409, 400), and the aggregate's lookups
        // see no memberships elsewhere (so creating something elsewhere is "not found" too).
        let services = match &ctx.organization_scope {
            None => services,
            Some(allowed) => {
                if aggregate.scope().organization.is_some_and(|org| &org != allowed) {
                    return Err(AggregateError::UserError(DomainError::NotFound));
                }
                services.scoped_to(allowed)
            }
        };
        let sink = EventSink::default();
        aggregate
            .handle(command, &services, &sink)
            .instrument(trace_step("decide"))
            .await
            .map_err(AggregateError::UserError)?;
        let scope = aggregate.scope();
        if ctx
            .organization_scope
            .as_ref()
            .is_some_and(|allowed| scope.organization.as_ref() != Some(allowed))
        {
            // Outside the key's organization: as invisible as another tenant's resource.
            return Err(AggregateError::UserError(DomainError::NotFound));
        }
        let events = sink.collect().await;
        let bytes = check_sizes(&events)?;
        Ok((events, scope, bytes))
    }
}

/// How a decision from cached states ended (`Executor::try_from_cache`).
enum Cached {
    /// Committed, or refused, on states the check proved current; or failed.
    Answered(Result<ConsistencyToken, AggregateError<DomainError>>),
    /// Some state had moved on (now brought up to date): nothing was written.
    Stale,
    /// The directory cannot answer from this instance's caches.
    Uncached,
}

/// `events` as the outbox holds them once `written`: each with its position, as the relay
/// publishes it.
fn published(events: Vec<SerializedEvent>, written: &Written) -> Vec<(i64, StoredEvent)> {
    events
        .into_iter()
        .zip(&written.outbox)
        .map(|(e, &(position, recorded_at_ms))| {
            let event = StoredEvent {
                aggregate_type: e.aggregate_type,
                aggregate_id: e.aggregate_id,
                sequence: e.sequence as i64,
                event_type: e.event_type,
                event_version: e.event_version,
                payload: e.payload,
                metadata: e.metadata,
                recorded_at_ms,
            };
            (position, event)
        })
        .collect()
}

/// `events` as committed after `sequence`, each with `metadata` (as cqrs-es wraps them).
fn wrap<A: Aggregate>(
    id: &str,
    sequence: usize,
    events: Vec<A::Event>,
    metadata: HashMap<String, String>,
) -> Vec<EventEnvelope<A>> {
    events
        .into_iter()
        .zip(sequence + 1..)
        .map(|(payload, sequence)| EventEnvelope {
            aggregate_id: id.to_owned(),
            sequence,
            payload,
            metadata: metadata.clone(),
        })
        .collect()
}

/// Refuse events the store or the bus could not carry, measured as they will be stored (JSON
/// escaping can make text several times longer than it arrived), before anything is committed;
/// else their size as stored, all together.
fn check_sizes<E: serde::Serialize>(events: &[E]) -> Result<usize, AggregateError<DomainError>> {
    let mut total = 0;
    for event in events {
        let json =
            serde_json::to_vec(event).map_err(|e| AggregateError::UnexpectedError(Box::new(e)))?;
        // PostgreSQL's JSON cannot hold U+0000 in text: refuse it as bad input, whatever field
        // (a prompt, a name) carried it.
        if holds_nul(&json) {
            return Err(AggregateError::UserError(DomainError::Invalid(
                "text must not contain the NUL character (U+0000)".into(),
            )));
        }
        let size = json.len();
        if size > MAX_EVENT_BYTES {
            return Err(AggregateError::UserError(DomainError::TooLarge(format!(
                "the change is {size} bytes as stored, more than the {MAX_EVENT_BYTES} an event may hold"
            ))));
        }
        total += size;
    }
    Ok(total)
}

/// Whether serialised JSON holds an escaped U+0000 (`\u0000` after an odd run of backslashes;
/// an even run is an escaped backslash followed by the text "u0000").
fn holds_nul(json: &[u8]) -> bool {
    json.windows(6).enumerate().any(|(i, w)| {
        w == b"\\u0000" && json[..i].iter().rev().take_while(|b| **b == b'\\').count() % 2 == 0
    })
}

fn event_metadata(
    scope: &crate::aggregates::Scope,
    ctx: &CommandContext,
) -> HashMap<String, String> {
    let mut m = HashMap::new();
    let mut put = |k: &str, v: Option<String>| {
        if let Some(v) = v {
            m.insert(k.to_owned(), v);
        }
    };
    put(metadata::ORGANIZATION_ID, scope.organization.as_ref().map(ToString::to_string));
    put(metadata::WORKSPACE_ID, scope.workspace.as_ref().map(ToString::to_string));
    put(metadata::SESSION_ID, scope.session.as_ref().map(ToString::to_string));
    put(metadata::ACTOR, Some(ctx.actor.clone()));
    put(metadata::CORRELATION_ID, Some(ctx.correlation_id.clone()));
    put(metadata::CAUSATION_ID, ctx.causation_id.clone());
    put(metadata::TRACEPARENT, platform::trace_context::traceparent(&tracing::Span::current()));
    m
}

#[cfg(test)]
mod tests {
    #[test]
    fn nul_characters_are_found_but_the_text_u0000_is_not() {
        let nul = serde_json::to_vec(&"a\u{0}b").unwrap();
        assert!(super::holds_nul(&nul));
        let literal = serde_json::to_vec(&"a\\u0000b").unwrap();
        assert!(!super::holds_nul(&literal));
    }

    #[test]
    fn the_size_checked_is_the_payloads_size_as_stored() {
        use schemas::events::SessionEvent;
        use schemas::ids::{OrganizationId, SessionId, UserId, WorkspaceId};
        use schemas::message::SessionStatus;
        let events = [
            SessionEvent::Created {
                session_id: SessionId::new(),
                organization_id: OrganizationId::new(),
                workspace_id: WorkspaceId::new(),
                project_id: None,
                // Escapes count as stored: a control character is six bytes of JSON.
                title: "a\u{1}b\"c".into(),
                created_by: UserId::new(),
                time: 1,
            },
            SessionEvent::StatusChanged {
                session_id: SessionId::new(),
                status: SessionStatus::Idle,
            },
        ];
        // As the store holds a payload (cqrs-es serialises it to a `Value`).
        let stored: usize =
            events.iter().map(|e| serde_json::to_value(e).unwrap().to_string().len()).sum();
        assert_eq!(super::check_sizes(&events).unwrap(), stored);
    }
}
