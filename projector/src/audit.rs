//! The audit trail: every organization, workspace and API-key event becomes a row admins can read — who,
//! when, what changed. Written in the same transaction as the rest of the event's projection.

use deadpool_postgres::Transaction;

use crate::projection::exec;
use schemas::envelope::{Envelope, aggregate};
use serde_json::Value;

/// Record `env` if it is an auditable change.
pub async fn record(tx: &Transaction<'_>, env: &Envelope<Value>) -> anyhow::Result<()> {
    if !matches!(
        env.aggregate_type.as_str(),
        aggregate::ORGANIZATION | aggregate::WORKSPACE | aggregate::API_KEY
    ) {
        return Ok(());
    }
    let details = env.payload.get("properties").cloned().unwrap_or(Value::Null);
    exec(
        tx,
        "INSERT INTO rm_audit (event_id, organization_id, time, actor, event_type, details) \
         VALUES ($1, $2, $3, $4, $5, $6)",
        &[&env.id, &env.organization_id.as_str(), &env.time, &env.actor, &env.event_type, &details],
    )
    .await?;
    Ok(())
}
