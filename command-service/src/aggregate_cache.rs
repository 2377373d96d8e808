//! Aggregates as this instance last committed them, so a command replays only the events
//! committed since (by any instance) instead of the aggregate's whole history — a session gains
//! four events per prompt, and without this every command on it would read them all.
//!
//! The cache is only a starting point, never trusted as current: every load reads the events
//! after the cached sequence, and the commit's optimistic lock (the sequence primary key) still
//! refuses a write based on a stale state. A state is cached only after its commit succeeded.
//! Events read here skip the event store's upcasters; the first upcaster must be applied here too.
//! The catch-up reads of every command running at once share statements (`crate::catch_up`).

use std::sync::Arc;
use std::time::Duration;

use cqrs_es::persist::{
    EventStoreAggregateContext, PersistedEventRepository, PersistedEventStore, PersistenceError,
};
use cqrs_es::{Aggregate, AggregateError, EventEnvelope, EventStore};

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
        for serialized in self.catch_up.events_after(A::TYPE, id, sequence).await? {
            let envelope = EventEnvelope::<A>::try_from(serialized)
                .map_err(|e: PersistenceError| AggregateError::from(e))?;
            sequence = envelope.sequence;
            aggregate.apply(envelope.payload);
        }
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

    /// Remember `aggregate` as committed up to `sequence`.
    pub async fn remember(&self, id: &str, aggregate: A, sequence: usize) {
        self.states.insert(id.to_owned(), Arc::new((aggregate, sequence))).await;
    }
}
