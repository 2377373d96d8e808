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

use crate::read_set::Known;

/// A command's events, written only if no aggregate of its decision's read set
/// (`crate::read_set`: its own, and those its directory answered from; none for the plain
/// store's commits) gained an event after the sequence it was read at; returns the events they
/// gained (none: the events were written). Every part of one statement sees the same snapshot,
/// so the check and the insert agree; a writer committing the same sequence meanwhile still
/// meets the primary key. The insert runs whether or not the final `SELECT` reads it (a
/// data-modifying `WITH` always does); the lateral subquery is the index scan of
/// `crate::catch_up`'s read. Rows go in the order given, so `position`, assigned as each row is
/// inserted, follows the aggregate's sequence within a commit as it does across commits.
/// Written events come back with their outbox position and time, and whether an earlier event
/// of their aggregate was still in the outbox (the statement's snapshot does not see the rows
/// its own trigger writes): if none was, they may be published at once (`crate::relay`).
const INSERT_EVENTS_IF_CURRENT: &str = "WITH newer AS ( \
         SELECT e.aggregate_type, e.aggregate_id, e.sequence, e.event_type, e.event_version, \
             e.payload, e.metadata \
         FROM unnest($8::text[], $9::text[], $10::bigint[]) AS k(aggregate_type, aggregate_id, after) \
         CROSS JOIN LATERAL ( \
             SELECT * FROM events e WHERE e.aggregate_type = k.aggregate_type \
                 AND e.aggregate_id = k.aggregate_id AND e.sequence > k.after \
             ORDER BY e.sequence OFFSET 0) e), \
     written AS ( \
         INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata) \
         SELECT $1, $2, e.sequence, e.event_type, e.event_version, e.payload::json, e.metadata::json \
         FROM unnest($3::bigint[], $4::text[], $5::text[], $6::text[], $7::text[]) \
             WITH ORDINALITY AS e(sequence, event_type, event_version, payload, metadata, n) \
         WHERE NOT EXISTS (SELECT 1 FROM newer) \
         ORDER BY e.n \
         RETURNING position, recorded_at) \
     SELECT aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata, \
         NULL::bigint AS position, NULL::bigint AS recorded_at_ms, NULL::bool AS behind_earlier \
     FROM newer \
     UNION ALL \
     SELECT NULL, NULL, NULL, NULL, NULL, NULL, NULL, w.position, \
         (extract(epoch FROM w.recorded_at) * 1000)::bigint, \
         EXISTS (SELECT 1 FROM outbox o WHERE o.aggregate_type = $1 AND o.aggregate_id = $2) \
     FROM written w \
     ORDER BY aggregate_type, aggregate_id, sequence, position";

pub struct EventRepository {
    reads: PostgresEventRepository,
    pool: sqlx::PgPool,
}

impl EventRepository {
    pub fn new(pool: sqlx::PgPool) -> Self {
        Self { reads: PostgresEventRepository::new(pool.clone()), pool }
    }

    /// A commit of the plain event store (`persist`): the same statement, with nothing to check.
    async fn insert<A: Aggregate>(
        &self,
        events: &[SerializedEvent],
    ) -> Result<(), PersistenceError> {
        let Some(first) = events.first() else { return Ok(()) };
        self.commit_if_current_as(A::TYPE, &first.aggregate_id, events, &[]).await.map(|_| ())
    }

    /// The events committed after what `known` holds (none: it is current).
    pub async fn newer_than(
        &self,
        known: &[Known],
    ) -> Result<Vec<SerializedEvent>, PersistenceError> {
        Ok(match self.commit_if_current_as("", "", &[], known).await? {
            Checked::Written(_) => Vec::new(),
            Checked::Stale(newer) => newer,
        })
    }

    /// Write `events` (of one aggregate of kind `A`, `aggregate_id`) only if nothing in `known`
    /// changed since it was read (or, with no events, check that `known` is current); else
    /// write nothing and return the events `known` missed, in order per aggregate. A conflict
    /// with a writer of the same sequence meanwhile is the optimistic lock.
    pub async fn commit_if_current<A: Aggregate>(
        &self,
        aggregate_id: &str,
        events: &[SerializedEvent],
        known: &[Known],
    ) -> Result<Checked, PersistenceError> {
        self.commit_if_current_as(A::TYPE, aggregate_id, events, known).await
    }

    async fn commit_if_current_as(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
        events: &[SerializedEvent],
        known: &[Known],
    ) -> Result<Checked, PersistenceError> {
        let column = |f: fn(&SerializedEvent) -> String| events.iter().map(f).collect::<Vec<_>>();
        let sequences: Vec<i64> = events.iter().map(|e| e.sequence as i64).collect();
        let known_sequences: Vec<i64> = known.iter().map(|k| k.sequence as i64).collect();
        let (payloads, metadata) =
            (column(|e| e.payload.to_string()), column(|e| e.metadata.to_string()));
        let bytes = payloads.iter().chain(&metadata).map(String::len).sum();
        let rows = sqlx::query(INSERT_EVENTS_IF_CURRENT)
            .bind(aggregate_type)
            .bind(aggregate_id)
            .bind(sequences)
            .bind(column(|e| e.event_type.clone()))
            .bind(column(|e| e.event_version.clone()))
            .bind(&payloads)
            .bind(&metadata)
            .bind(known.iter().map(|k| k.aggregate_type).collect::<Vec<_>>())
            .bind(known.iter().map(|k| k.aggregate_id.as_str()).collect::<Vec<_>>())
            .bind(known_sequences)
            .fetch_all(&self.pool)
            .await
            .map_err(persistence_error)?;
        checked(&rows, bytes).map_err(persistence_error)
    }
}

/// What a checked commit did.
#[derive(Debug)]
pub enum Checked {
    /// The events were written (or, with none, the states checked were current).
    Written(Written),
    /// Nothing was written: the events the checked states missed.
    Stale(Vec<SerializedEvent>),
}

/// Where written events stand in the outbox.
#[derive(Debug, Default)]
pub struct Written {
    /// Each event's outbox position and the time it was recorded (ms since the epoch), in order.
    pub outbox: Vec<(i64, i64)>,
    /// Whether an earlier event of the aggregate was still waiting in the outbox.
    pub behind_earlier: bool,
    /// The events' size as stored (payload and metadata).
    pub bytes: usize,
}

/// The commit statement's rows, for events of `bytes` as stored.
fn checked(rows: &[sqlx::postgres::PgRow], bytes: usize) -> Result<Checked, sqlx::Error> {
    use sqlx::Row;
    let mut written = Written { bytes, ..Written::default() };
    let mut newer = Vec::new();
    for row in rows {
        match row.try_get::<Option<i64>, _>("position")? {
            Some(position) => {
                written.outbox.push((position, row.try_get("recorded_at_ms")?));
                written.behind_earlier |= row.try_get::<bool, _>("behind_earlier")?;
            }
            None => newer.push(crate::catch_up::serialized(row)?),
        }
    }
    Ok(if newer.is_empty() { Checked::Written(written) } else { Checked::Stale(newer) })
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
