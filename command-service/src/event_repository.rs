//! The event store as the executor uses it: postgres-es's repository for every read, and a
//! command's events committed in one statement.
//!
//! postgres-es commits as `BEGIN`, one `INSERT` per event, `COMMIT`: a prompt's two events are
//! four round trips, each holding a pooled connection. One multi-row `INSERT` is atomic by
//! itself, so the same commit is one round trip. Everything else is unchanged: the same table
//! and columns, the optimistic lock is still the `(aggregate_type, aggregate_id, sequence)`
//! primary key (a unique violation is a conflict, and nothing of the command is stored), and the
//! outbox row of each event is still written by the table's trigger in the same statement.

use cqrs_es::Aggregate;
use cqrs_es::persist::{
    PersistedEventRepository, PersistenceError, ReplayStream, SerializedEvent, SerializedSnapshot,
};
use postgres_es::PostgresEventRepository;
use serde_json::Value;

/// Rows in the order given (so `position`, assigned as each row is inserted, follows the
/// aggregate's sequence within a commit as it does across commits).
const INSERT_EVENTS: &str = "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata) \
     SELECT $1, $2, e.sequence, e.event_type, e.event_version, e.payload::json, e.metadata::json \
     FROM unnest($3::bigint[], $4::text[], $5::text[], $6::text[], $7::text[]) \
         WITH ORDINALITY AS e(sequence, event_type, event_version, payload, metadata, n) \
     ORDER BY e.n";

pub struct EventRepository {
    reads: PostgresEventRepository,
    pool: sqlx::PgPool,
}

impl EventRepository {
    pub fn new(pool: sqlx::PgPool) -> Self {
        Self { reads: PostgresEventRepository::new(pool.clone()), pool }
    }

    async fn insert<A: Aggregate>(
        &self,
        events: &[SerializedEvent],
    ) -> Result<(), PersistenceError> {
        let Some(first) = events.first() else { return Ok(()) };
        let column = |f: fn(&SerializedEvent) -> String| events.iter().map(f).collect::<Vec<_>>();
        let sequences: Vec<i64> = events.iter().map(|e| e.sequence as i64).collect();
        sqlx::query(INSERT_EVENTS)
            .bind(A::TYPE)
            .bind(&first.aggregate_id)
            .bind(sequences)
            .bind(column(|e| e.event_type.clone()))
            .bind(column(|e| e.event_version.clone()))
            .bind(column(|e| e.payload.to_string()))
            .bind(column(|e| e.metadata.to_string()))
            .execute(&self.pool)
            .await
            .map_err(persistence_error)?;
        Ok(())
    }
}

/// As postgres-es classifies them: a unique violation is the optimistic lock; a lost or
/// unreachable database is a connection error (answered 503).
fn persistence_error(e: sqlx::Error) -> PersistenceError {
    match classify(&e) {
        Kind::Conflict => PersistenceError::OptimisticLockError,
        Kind::Connection => PersistenceError::ConnectionError(Box::new(e)),
        Kind::Other => PersistenceError::UnknownError(Box::new(e)),
    }
}

/// `persistence_error` for a failure several callers share (a batched read): each gets the
/// same kind of error, with its message.
pub fn shared_error(e: &sqlx::Error) -> PersistenceError {
    let message = e.to_string().into();
    match classify(e) {
        Kind::Conflict => PersistenceError::OptimisticLockError,
        Kind::Connection => PersistenceError::ConnectionError(message),
        Kind::Other => PersistenceError::UnknownError(message),
    }
}

enum Kind {
    Conflict,
    Connection,
    Other,
}

fn classify(e: &sqlx::Error) -> Kind {
    match e {
        sqlx::Error::Database(db) if db.code().as_deref() == Some("23505") => Kind::Conflict,
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => Kind::Connection,
        _ => Kind::Other,
    }
}

impl PersistedEventRepository for EventRepository {
    async fn get_events<A: Aggregate>(
        &self,
        aggregate_id: &str,
    ) -> Result<Vec<SerializedEvent>, PersistenceError> {
        self.reads.get_events::<A>(aggregate_id).await
    }

    async fn get_last_events<A: Aggregate>(
        &self,
        aggregate_id: &str,
        last_sequence: usize,
    ) -> Result<Vec<SerializedEvent>, PersistenceError> {
        self.reads.get_last_events::<A>(aggregate_id, last_sequence).await
    }

    async fn get_snapshot<A: Aggregate>(
        &self,
        aggregate_id: &str,
    ) -> Result<Option<SerializedSnapshot>, PersistenceError> {
        self.reads.get_snapshot::<A>(aggregate_id).await
    }

    async fn persist<A: Aggregate>(
        &self,
        events: &[SerializedEvent],
        snapshot_update: Option<(String, Value, usize)>,
    ) -> Result<(), PersistenceError> {
        match snapshot_update {
            // The executor's store keeps no snapshots: this is every commit.
            None => self.insert::<A>(events).await,
            Some(_) => self.reads.persist::<A>(events, snapshot_update).await,
        }
    }

    async fn stream_events<A: Aggregate>(
        &self,
        aggregate_id: &str,
    ) -> Result<ReplayStream, PersistenceError> {
        self.reads.stream_events::<A>(aggregate_id).await
    }

    async fn stream_all_events<A: Aggregate>(&self) -> Result<ReplayStream, PersistenceError> {
        self.reads.stream_all_events::<A>().await
    }
}
