//! Reading events straight from the event store: for `projector rebuild`, and to fill a gap the
//! bus cannot (an event the relay parked, or one delivered out of order after a retry).

use deadpool_postgres::GenericClient;
use platform::stored_event::StoredEvent;
use schemas::envelope::Envelope;
use serde_json::Value;

/// The columns of `events` a `StoredEvent` needs, in its field order, plus `position`.
const COLUMNS: &str = "position, aggregate_type, aggregate_id, sequence, event_type, event_version, \
     payload::jsonb, metadata::jsonb, (extract(epoch FROM recorded_at) * 1000)::bigint";

/// Up to `limit` events after `position`, in position order: `(position, envelope)`.
pub async fn page(
    db: &impl GenericClient,
    after: i64,
    limit: i64,
) -> anyhow::Result<Vec<(i64, anyhow::Result<Envelope<Value>>)>> {
    let sql =
        format!("SELECT {COLUMNS} FROM events WHERE position > $1 ORDER BY position LIMIT $2");
    let rows = db.query(&sql, &[&after, &limit]).await?;
    Ok(rows.iter().map(|row| (row.get(0), envelope(row))).collect())
}

/// One aggregate's events with sequences in `from..to`, in order.
pub async fn range(
    db: &impl GenericClient,
    aggregate_id: &str,
    from: i64,
    to: i64,
) -> anyhow::Result<Vec<Envelope<Value>>> {
    let sql = format!(
        "SELECT {COLUMNS} FROM events WHERE aggregate_id = $1 AND sequence >= $2 AND sequence < $3 \
         ORDER BY sequence"
    );
    let rows = db.query(&sql, &[&aggregate_id, &from, &to]).await?;
    rows.iter().map(envelope).collect()
}

fn envelope(row: &tokio_postgres::Row) -> anyhow::Result<Envelope<Value>> {
    let event = StoredEvent {
        aggregate_type: row.try_get(1)?,
        aggregate_id: row.try_get(2)?,
        sequence: row.try_get(3)?,
        event_type: row.try_get(4)?,
        event_version: row.try_get(5)?,
        payload: row.try_get(6)?,
        metadata: row.try_get(7)?,
        recorded_at_ms: row.try_get(8)?,
    };
    Ok(event.to_envelope()?.1)
}
