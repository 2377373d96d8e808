//! The audit trail: every organization, workspace and API-key event becomes a row admins can read — who,
//! when, what changed. Written in the same transaction as the rest of the event's projection.

use crate::projection::{Step, step};
use schemas::envelope::{Envelope, aggregate};
use serde_json::Value;

/// The audit row for `env`, if it is an auditable change.
pub(crate) fn record(env: &Envelope<Value>) -> Option<Step> {
    if !matches!(
        env.aggregate_type.as_str(),
        aggregate::ORGANIZATION | aggregate::WORKSPACE | aggregate::API_KEY
    ) {
        return None;
    }
    let details = env.payload.get("properties").cloned().unwrap_or(Value::Null);
    Some(step!(
        "INSERT INTO rm_audit (event_id, organization_id, time, actor, event_type, details) \
         VALUES ($1, $2, $3, $4, $5, $6)",
        env.id.clone(),
        env.organization_id.to_string(),
        env.time,
        env.actor.clone(),
        env.event_type.clone(),
        details,
    ))
}
