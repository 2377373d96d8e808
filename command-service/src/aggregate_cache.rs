//! Aggregates as this instance last committed them, so a command replays only the events
//! committed since (by any instance) instead of the aggregate's whole history — a session gains
//! four events per prompt, and without this every command on it would read them all.
//!
//! The cache is only a starting point, never trusted as current: a load reads the events after
//! the cached sequence, and a decision made from the cached state without that read commits only
//! if nothing came after it (`crate::read_set`); the commit's optimistic lock (the sequence
//! primary key) still refuses a write based on a stale state. A state is cached only after its
//! commit succeeded, or as read.
//! Events read here skip the event store's upcasters; the first upcaster must be applied here too.
//! The catch-up reads of every command running at once share statements (`crate::catch_up`).

use std::sync::Arc;
use std::time::Duration;

use cqrs_es::persist::{
    EventStoreAggregateContext, PersistedEventRepository, PersistedEventStore, PersistenceError,
    SerializedEvent,
};
use cqrs_es::{Aggregate, AggregateError, EventEnvelope, EventStore};
use moka::ops::compute::Op;

use crate::catch_up::CatchUp;

/// Aggregates kept per instance and kind; the least recently used go first.
const CAPACITY: u64 = 10_000;
/// An aggregate nobody touched for this long is dropped.
const IDLE: Duration = Duration::from_secs(600);

pub struct AggregateCache<A: Aggregate> {
    states: moka::future::Cache<String, Arc<(A, usize)>>,
    catch_up: CatchUp,
}

impl<A> AggregateCache<A>
where
    A: Aggregate + Clone + 'static,
{
    pub fn new(catch_up: CatchUp) -> Self {
        let states =
            moka::future::Cache::builder().max_capacity(CAPACITY).time_to_idle(IDLE).build();
        Self { states, catch_up }
    }

    /// The aggregate with every committed event applied: the cached state plus what came after
    /// it, or, if nothing is cached, a full load from `store`.
    pub async fn load<R: PersistedEventRepository>(
        &self,
        store: &PersistedEventStore<R, A>,
        id: &str,
    ) -> Result<EventStoreAggregateContext<A>, AggregateError<A::Error>> {
        let Some(cached) = self.states.get(id).await else {
            return store.load_aggregate(id).await;
        };
        let (mut aggregate, mut sequence) = (cached.0.clone(), cached.1);
        let after = self.catch_up.events_after(A::TYPE, id, sequence).await?;
        sequence = apply(&mut aggregate, sequence, after)?;
        Ok(EventStoreAggregateContext {
            aggregate_id: id.to_owned(),
            aggregate,
            current_sequence: sequence,
            current_snapshot: None,
        })
    }

    /// The aggregate as last remembered, without reading anything (not current: for what never
    /// changes once set, such as a session's organization and workspace).
    pub async fn peek(&self, id: &str) -> Option<Arc<(A, usize)>> {
        self.states.get(id).await
    }

    /// Apply `events` of `id` (in order; found by a commit's check, `crate::read_set`) to
    /// `from`, a state of it (`None`: the one cached), and remember the result: the events
    /// after its sequence, if they follow on from it (else nothing changes); events that cannot
    /// be read make it forgotten.
    pub async fn advance(
        &self,
        id: &str,
        from: Option<Arc<(A, usize)>>,
        mut events: Vec<SerializedEvent>,
    ) {
        let from = match from {
            Some(from) => from,
            None => match self.states.get(id).await {
                Some(cached) => cached,
                None => return,
            },
        };
        events.retain(|e| e.sequence > from.1);
        if events.first().is_none_or(|e| e.sequence != from.1 + 1) {
            return;
        }
        let mut aggregate = from.0.clone();
        match apply(&mut aggregate, from.1, events) {
            Ok(sequence) => self.remember(id, aggregate, sequence).await,
            Err(_) => self.states.invalidate(id).await,
        }
    }

    /// Whether an event of `id` at `sequence` follows on from what is held (an aggregate's first
    /// event follows on from nothing held).
    pub async fn follows_on(&self, id: &str, sequence: usize) -> bool {
        match self.states.get(id).await {
            Some(held) => held.1 + 1 == sequence,
            None => sequence == 1,
        }
    }

    /// Apply `events` of `id` another instance committed (`crate::follow`) to the state held,
    /// or, when none is and they begin the aggregate, to a new one; as [`Self::advance`].
    pub async fn follow(&self, id: &str, events: Vec<SerializedEvent>) {
        let from = match self.states.get(id).await {
            Some(held) => held,
            None => Arc::new((A::default(), 0)),
        };
        self.advance(id, Some(from), events).await;
    }

    /// Remember `aggregate` as committed up to `sequence`, unless a later state of it is
    /// remembered already (another command of this instance got there first).
    pub async fn remember(&self, id: &str, aggregate: A, sequence: usize) {
        let state = Arc::new((aggregate, sequence));
        let keep_the_later = |held: Option<moka::Entry<String, Arc<(A, usize)>>>| {
            std::future::ready(match held {
                Some(held) if held.value().1 >= sequence => Op::Nop,
                _ => Op::Put(state),
            })
        };
        self.states.entry(id.to_owned()).and_compute_with(keep_the_later).await;
    }
}

/// Apply `events` (in order, after `sequence`) to `aggregate`; the sequence it is then at.
fn apply<A: Aggregate>(
    aggregate: &mut A,
    mut sequence: usize,
    events: Vec<SerializedEvent>,
) -> Result<usize, PersistenceError> {
    for serialized in events {
        let envelope = EventEnvelope::<A>::try_from(serialized)?;
        sequence = envelope.sequence;
        aggregate.apply(envelope.payload);
    }
    Ok(sequence)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregates::Workspace;

    fn cache() -> AggregateCache<Workspace> {
        // (nothing here reads: the pool never connects)
        let pool = sqlx::PgPool::connect_lazy("postgres://127.0.0.1:1/none").unwrap();
        AggregateCache::new(CatchUp::start(pool))
    }

    fn unreadable_event(sequence: usize) -> SerializedEvent {
        let payload = serde_json::json!({ "not": "a workspace event" });
        SerializedEvent::new(
            "ws_1".into(),
            sequence,
            "workspace".into(),
            "workspace.unknown".into(),
            "1.0".into(),
            payload,
            serde_json::json!({}),
        )
    }

    #[tokio::test]
    async fn a_remembered_state_is_replaced_only_by_a_later_one() {
        let cache = cache();
        cache.remember("ws_1", Workspace::default(), 5).await;
        cache.remember("ws_1", Workspace::default(), 3).await;
        assert_eq!(cache.peek("ws_1").await.unwrap().1, 5);
        cache.remember("ws_1", Workspace::default(), 8).await;
        assert_eq!(cache.peek("ws_1").await.unwrap().1, 8);
    }

    /// A workspace event at `sequence` as the bus carries it.
    fn workspace_event(sequence: usize, event: schemas::events::WorkspaceEvent) -> SerializedEvent {
        use schemas::events::EventName;
        let event_type = event.event_type().to_owned();
        let payload = serde_json::to_value(event).unwrap();
        let (id, metadata) = ("ws_1".into(), serde_json::json!({}));
        SerializedEvent::new(
            id,
            sequence,
            "workspace".into(),
            event_type,
            "1.0".into(),
            payload,
            metadata,
        )
    }

    #[tokio::test]
    async fn events_committed_elsewhere_start_a_state_at_the_first_and_follow_on_from_it() {
        use schemas::events::WorkspaceEvent;
        use schemas::ids::{OrganizationId, UserId, WorkspaceId};
        let cache = cache();
        let (workspace_id, organization_id) = (WorkspaceId::new(), OrganizationId::new());
        assert!(!cache.follows_on("ws_1", 2).await, "nothing held: only a first event starts it");
        assert!(cache.follows_on("ws_1", 1).await);
        let created = WorkspaceEvent::Created {
            workspace_id: workspace_id.clone(),
            organization_id: organization_id.clone(),
            name: "main".into(),
            created_by: UserId::new(),
            time: 1,
        };
        cache.follow("ws_1", vec![workspace_event(1, created)]).await;
        assert_eq!(cache.peek("ws_1").await.unwrap().1, 1);
        assert!(cache.follows_on("ws_1", 2).await);
        assert!(!cache.follows_on("ws_1", 1).await, "already held");
        assert!(!cache.follows_on("ws_1", 3).await, "a gap");
        let archived = WorkspaceEvent::Archived { workspace_id, organization_id, time: 2 };
        cache.follow("ws_1", vec![workspace_event(2, archived)]).await;
        let held = cache.peek("ws_1").await.unwrap();
        assert_eq!(held.1, 2);
        assert!(held.0.view().unwrap().archived, "the state is the events applied in order");
    }

    #[tokio::test]
    async fn events_that_do_not_follow_on_change_nothing_and_unreadable_ones_forget_the_state() {
        let cache = cache();
        cache.remember("ws_1", Workspace::default(), 8).await;
        cache.advance("ws_1", None, vec![unreadable_event(10)]).await;
        assert_eq!(cache.peek("ws_1").await.unwrap().1, 8, "a gap: left as it was");
        cache.advance("ws_1", None, vec![unreadable_event(7), unreadable_event(8)]).await;
        assert_eq!(cache.peek("ws_1").await.unwrap().1, 8, "nothing after it");
        cache.advance("ws_1", None, vec![unreadable_event(9)]).await;
        assert!(cache.peek("ws_1").await.is_none(), "an event it cannot read: forgotten");
    }
}
