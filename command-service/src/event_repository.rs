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

/// Commands' events, each command's written only if no aggregate of its decision's read set
/// (`crate::read_set`: its own, and those its directory answered from; none for the plain
/// store's commits) gained an event after the sequence it was read at; for a command whose did,
/// the events they gained (and nothing of it is written). `$1` numbers each event's command
/// and `$9` each checked state's (one command, or several on different aggregates:
/// `crate::group_commit`); each command's rows come back under its number. Every part of one
/// statement sees the same snapshot, so the checks and the insert agree; a writer committing
/// the same sequence meanwhile still meets the primary key. The insert runs whether or not the
/// final `SELECT` reads it (a data-modifying `WITH` always does); the lateral subquery is the
/// index scan of `crate::catch_up`'s read. Rows go in the order given, so `position`, assigned
/// as each row is inserted, follows the aggregate's sequence within a commit as it does across
/// commits. Written events come back with their outbox position and time, and whether an
/// earlier event of their aggregate was still in the outbox (the statement's snapshot does not
/// see the rows its own trigger writes): if none was, they may be published at once
/// (`crate::relay`). That probe is a lateral subquery with a limit, so it stays one index probe
/// per written row whatever plan the statement keeps.
const INSERT_COMMITS_IF_CURRENT: &str = "WITH newer AS ( \
         SELECT k.c, e.aggregate_type, e.aggregate_id, e.sequence, e.event_type, e.event_version, \
             e.payload, e.metadata \
         FROM unnest($9::int[], $10::text[], $11::text[], $12::bigint[]) \
             AS k(c, aggregate_type, aggregate_id, after) \
         CROSS JOIN LATERAL ( \
             SELECT * FROM events e WHERE e.aggregate_type = k.aggregate_type \
                 AND e.aggregate_id = k.aggregate_id AND e.sequence > k.after \
             ORDER BY e.sequence OFFSET 0) e), \
     given AS ( \
         SELECT * FROM unnest($1::int[], $2::text[], $3::text[], $4::bigint[], $5::text[], \
             $6::text[], $7::text[], $8::text[]) WITH ORDINALITY \
             AS g(c, aggregate_type, aggregate_id, sequence, event_type, event_version, payload, \
                 metadata, n)), \
     written AS ( \
         INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata) \
         SELECT g.aggregate_type, g.aggregate_id, g.sequence, g.event_type, g.event_version, \
             g.payload::json, g.metadata::json \
         FROM given g WHERE NOT EXISTS (SELECT 1 FROM newer WHERE newer.c = g.c) \
         ORDER BY g.n \
         RETURNING aggregate_type, aggregate_id, sequence, position, recorded_at) \
     SELECT c, aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata, \
         NULL::bigint AS position, NULL::bigint AS recorded_at_ms, NULL::bool AS behind_earlier \
     FROM newer \
     UNION ALL \
     SELECT g.c, NULL, NULL, NULL, NULL, NULL, NULL, NULL, w.position, \
         (extract(epoch FROM w.recorded_at) * 1000)::bigint, coalesce(o.earlier, false) \
     FROM written w \
     JOIN given g ON g.aggregate_type = w.aggregate_type AND g.aggregate_id = w.aggregate_id \
         AND g.sequence = w.sequence \
     LEFT JOIN LATERAL ( \
         SELECT true AS earlier FROM outbox o \
         WHERE o.aggregate_type = w.aggregate_type AND o.aggregate_id = w.aggregate_id LIMIT 1) o \
         ON true \
     ORDER BY c, aggregate_type, aggregate_id, sequence, position";

/// One command's commit: its events (of one aggregate) and the states it was decided from.
#[derive(Debug)]
pub struct Commit {
    pub aggregate_type: &'static str,
    pub aggregate_id: String,
    pub events: Vec<SerializedEvent>,
    /// The events' payloads as stored, in bytes, as measured when they were decided (the
    /// executor's size check).
    pub bytes: usize,
    pub known: Vec<Known>,
}

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

    /// Write `commit`'s events only if nothing in its `known` changed since it was read (or,
    /// with no events, check that `known` is current); else write nothing and return the events
    /// `known` missed, in order per aggregate. A conflict with a writer of the same sequence
    /// meanwhile is the optimistic lock.
    pub async fn commit_if_current(&self, commit: &Commit) -> Result<Checked, PersistenceError> {
        let Commit { aggregate_type, aggregate_id, events, known, .. } = commit;
        self.commit_if_current_as(aggregate_type, aggregate_id, events, known).await
    }

    /// `commit_if_current` for several commits, each of a different aggregate, in one
    /// statement: what each did, in the order given. The statement fails as a whole (a writer
    /// elsewhere took one commit's sequence first): then nothing of any commit was written.
    /// Rows go in sorted by aggregate, so that statements on several instances take the primary
    /// key's locks in one order.
    pub async fn commit_all_if_current(
        &self,
        commits: &[Commit],
    ) -> Result<Vec<Checked>, sqlx::Error> {
        let mut order: Vec<usize> = (0..commits.len()).collect();
        order.sort_by_key(|&i| (commits[i].aggregate_type, commits[i].aggregate_id.as_str()));
        let mut events = Columns::default();
        let mut known = KnownColumns::default();
        let mut bytes = vec![0; commits.len()];
        for &i in &order {
            let commit = &commits[i];
            let c = i32::try_from(i).map_err(|e| sqlx::Error::Encode(e.into()))?;
            for e in &commit.events {
                bytes[i] += events.push(c, commit.aggregate_type, &commit.aggregate_id, e);
            }
            for k in &commit.known {
                known.push(c, k);
            }
        }
        self.write_checked(events, known, bytes).await
    }

    async fn commit_if_current_as(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
        events: &[SerializedEvent],
        known: &[Known],
    ) -> Result<Checked, PersistenceError> {
        let (mut columns, mut known_columns) = (Columns::default(), KnownColumns::default());
        let mut bytes = 0;
        for e in events {
            bytes += columns.push(0, aggregate_type, aggregate_id, e);
        }
        for k in known {
            known_columns.push(0, k);
        }
        let mut answers = self
            .write_checked(columns, known_columns, vec![bytes])
            .await
            .map_err(persistence_error)?;
        Ok(answers.remove(0))
    }

    /// Run `INSERT_COMMITS_IF_CURRENT` for commits numbered from 0, whose events are of `bytes`
    /// each as stored: what each did, in their numbers' order.
    async fn write_checked(
        &self,
        events: Columns,
        known: KnownColumns,
        bytes: Vec<usize>,
    ) -> Result<Vec<Checked>, sqlx::Error> {
        let rows = sqlx::query(INSERT_COMMITS_IF_CURRENT)
            .bind(events.commit)
            .bind(events.aggregate_type)
            .bind(events.aggregate_id)
            .bind(events.sequence)
            .bind(events.event_type)
            .bind(events.event_version)
            .bind(events.payload)
            .bind(events.metadata)
            .bind(known.commit)
            .bind(known.aggregate_type)
            .bind(known.aggregate_id)
            .bind(known.sequence)
            .fetch_all(&self.pool)
            .await?;
        // Rows come ordered by commit: each commit's are one run (none for a commit with nothing
        // to write and nothing missed).
        let mut answers = Vec::with_capacity(bytes.len());
        let mut rest = rows.as_slice();
        for (i, &bytes) in bytes.iter().enumerate() {
            let mine = rest.iter().take_while(|row| row_commit(row) == Some(i)).count();
            let (own, after) = rest.split_at(mine);
            answers.push(checked(own, bytes)?);
            rest = after;
        }
        if !rest.is_empty() {
            return Err(sqlx::Error::Protocol("a row of no commit asked for".into()));
        }
        Ok(answers)
    }
}

/// The events of several commits as the batch statement binds them, column by column.
#[derive(Default)]
struct Columns {
    commit: Vec<i32>,
    aggregate_type: Vec<String>,
    aggregate_id: Vec<String>,
    sequence: Vec<i64>,
    event_type: Vec<String>,
    event_version: Vec<String>,
    payload: Vec<String>,
    metadata: Vec<String>,
}

impl Columns {
    /// Add commit `c`'s event `e`, of aggregate `aggregate_type` `aggregate_id`; returns its
    /// size as stored.
    fn push(
        &mut self,
        c: i32,
        aggregate_type: &str,
        aggregate_id: &str,
        e: &SerializedEvent,
    ) -> usize {
        let (payload, metadata) = (e.payload.to_string(), e.metadata.to_string());
        let bytes = payload.len() + metadata.len();
        self.commit.push(c);
        self.aggregate_type.push(aggregate_type.to_owned());
        self.aggregate_id.push(aggregate_id.to_owned());
        self.sequence.push(e.sequence as i64);
        self.event_type.push(e.event_type.clone());
        self.event_version.push(e.event_version.clone());
        self.payload.push(payload);
        self.metadata.push(metadata);
        bytes
    }
}

/// The states several commits were decided from, column by column.
#[derive(Default)]
struct KnownColumns {
    commit: Vec<i32>,
    aggregate_type: Vec<&'static str>,
    aggregate_id: Vec<String>,
    sequence: Vec<i64>,
}

impl KnownColumns {
    fn push(&mut self, c: i32, k: &Known) {
        self.commit.push(c);
        self.aggregate_type.push(k.aggregate_type);
        self.aggregate_id.push(k.aggregate_id.clone());
        self.sequence.push(k.sequence as i64);
    }
}

/// Which commit of a batch a row of its statement answers.
fn row_commit(row: &sqlx::postgres::PgRow) -> Option<usize> {
    use sqlx::Row;
    row.try_get::<i32, _>("c").ok().and_then(|c| usize::try_from(c).ok())
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

/// Whether `e` is the database lost or out of reach (rather than an answer to the statement).
pub fn is_connection_error(e: &sqlx::Error) -> bool {
    matches!(classify(e), Kind::Connection)
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
