//! How each domain event changes the read models. Idempotent by aggregate sequence: an event is
//! applied only if it is the next one for its aggregate, checked and recorded in the same
//! transaction as its effects, so a redelivered event changes nothing.

use anyhow::Context;
use deadpool_postgres::Transaction;
use schemas::envelope::{Envelope, aggregate};
use schemas::events::{ApiKeyEvent, OrganizationEvent, SessionEvent};
use schemas::read::MessageInfo;
use serde_json::{Value, json};
use tokio_postgres::types::ToSql;

/// What applying an event did.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Applied,
    /// Already applied before (a redelivery or a replay).
    Duplicate,
    /// An earlier event of the aggregate is missing: retry later, when it has arrived.
    Gap {
        expected: i64,
        got: i64,
    },
}

pub async fn apply(tx: &Transaction<'_>, env: &Envelope<Value>) -> anyhow::Result<Outcome> {
    match claim(tx, env).await? {
        Outcome::Applied => {}
        other => return Ok(other),
    }
    let payload = env.payload.clone();
    match env.aggregate_type.as_str() {
        aggregate::ORGANIZATION => organization(tx, serde_json::from_value(payload)?).await?,
        aggregate::WORKSPACE => {
            crate::workspaces::apply(tx, serde_json::from_value(payload)?).await?
        }
        aggregate::SESSION => session(tx, env.time, serde_json::from_value(payload)?).await?,
        aggregate::API_KEY => api_key(tx, serde_json::from_value(payload)?).await?,
        other => anyhow::bail!("unknown aggregate type {other}"),
    }
    crate::audit::record(tx, env).await?;
    Ok(Outcome::Applied)
}

/// Record `env` as its aggregate's newest projected event, if it is the next one. Applied means
/// the caller must now apply (or park) it in the same transaction.
async fn claim(tx: &Transaction<'_>, env: &Envelope<Value>) -> anyhow::Result<Outcome> {
    let seq = i64::try_from(env.sequence.context("domain events have a sequence")?)?;
    let claimed = if seq == 1 {
        exec(
            tx,
            "INSERT INTO rm_positions (aggregate_id, sequence) VALUES ($1, 1) ON CONFLICT DO NOTHING",
            &[&env.aggregate_id],
        )
        .await?
    } else {
        exec(
            tx,
            "UPDATE rm_positions SET sequence = $2::bigint WHERE aggregate_id = $1 AND sequence = $2::bigint - 1",
            &[&env.aggregate_id, &seq],
        )
        .await?
    };
    if claimed == 1 {
        return Ok(Outcome::Applied);
    }
    let last: i64 = tx
        .query_opt(
            "SELECT sequence FROM rm_positions WHERE aggregate_id = $1",
            &[&env.aggregate_id],
        )
        .await?
        .map_or(0, |r| r.get(0));
    Ok(if last >= seq { Outcome::Duplicate } else { Outcome::Gap { expected: last + 1, got: seq } })
}

/// Skip `env` for good: record why in `parked_events` and move its aggregate past it, so the
/// aggregate's later events (and everyone else's) keep flowing. Returns false if `env` is not
/// the aggregate's next event (already projected or parked, or an earlier one is missing).
pub async fn park(
    tx: &Transaction<'_>,
    env: &Envelope<Value>,
    reason: &str,
    attempts: i32,
) -> anyhow::Result<bool> {
    if claim(tx, env).await? != Outcome::Applied {
        return Ok(false);
    }
    let seq = i64::try_from(env.sequence.unwrap_or_default())?;
    exec(
        tx,
        "INSERT INTO parked_events (stage, event_id, aggregate_type, aggregate_id, sequence, reason, attempts) \
         VALUES ('projector', $1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
        &[&env.id, &env.aggregate_type, &env.aggregate_id, &seq, &reason, &attempts],
    )
    .await?;
    Ok(true)
}

/// Park `env` whatever its aggregate's position (for the rebuild, which replays in order and
/// must not stop): record it and move the aggregate to at least its sequence.
pub async fn park_anyway(
    tx: &Transaction<'_>,
    env: &Envelope<Value>,
    reason: &str,
) -> anyhow::Result<()> {
    let seq = i64::try_from(env.sequence.unwrap_or_default())?;
    exec(
        tx,
        "INSERT INTO rm_positions (aggregate_id, sequence) VALUES ($1, $2) \
         ON CONFLICT (aggregate_id) DO UPDATE SET sequence = GREATEST(rm_positions.sequence, EXCLUDED.sequence)",
        &[&env.aggregate_id, &seq],
    )
    .await?;
    exec(
        tx,
        "INSERT INTO parked_events (stage, event_id, aggregate_type, aggregate_id, sequence, reason, attempts) \
         VALUES ('projector', $1, $2, $3, $4, $5, 1) ON CONFLICT DO NOTHING",
        &[&env.id, &env.aggregate_type, &env.aggregate_id, &seq, &reason],
    )
    .await?;
    Ok(())
}

async fn organization(tx: &Transaction<'_>, event: OrganizationEvent) -> anyhow::Result<()> {
    match event {
        OrganizationEvent::Created { organization_id, name, owner_id, time } => {
            exec(
                tx,
                "INSERT INTO rm_organizations (organization_id, name, owner_id, created_at) VALUES ($1, $2, $3, $4)",
                &[&organization_id.as_str(), &name, &owner_id.as_str(), &time],
            )
            .await?;
        }
        OrganizationEvent::Renamed { organization_id, name, .. } => {
            exec(
                tx,
                "UPDATE rm_organizations SET name = $2 WHERE organization_id = $1",
                &[&organization_id.as_str(), &name],
            )
            .await?;
        }
        OrganizationEvent::MemberRoleChanged { organization_id, user_id, role, .. } => {
            exec(
                tx,
                "UPDATE rm_members SET role = $3 WHERE organization_id = $1 AND user_id = $2",
                &[&organization_id.as_str(), &user_id.as_str(), &role.as_str()],
            )
            .await?;
        }
        OrganizationEvent::MemberRemoved { organization_id, user_id, .. } => {
            exec(
                tx,
                "DELETE FROM rm_members WHERE organization_id = $1 AND user_id = $2",
                &[&organization_id.as_str(), &user_id.as_str()],
            )
            .await?;
        }
        OrganizationEvent::ConnectionSet { organization_id, connection: c, time, .. } => {
            exec(
                tx,
                "INSERT INTO rm_connections (connection_id, organization_id, owner_id, kind, provider_id, name, \
                     base_url, headers, models, enabled, fingerprint, key_last4, updated_at, catalog) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) \
                 ON CONFLICT (connection_id) DO UPDATE SET name = EXCLUDED.name, base_url = EXCLUDED.base_url, \
                     headers = EXCLUDED.headers, models = EXCLUDED.models, enabled = EXCLUDED.enabled, \
                     catalog = EXCLUDED.catalog, \
                     fingerprint = EXCLUDED.fingerprint, key_last4 = EXCLUDED.key_last4, \
                     updated_at = EXCLUDED.updated_at",
                &[
                    &c.id.as_str(),
                    &organization_id.as_str(),
                    &c.owner_id.as_ref().map(|o| o.as_str()),
                    &serde_json::to_value(c.kind)?.as_str().unwrap_or_default(),
                    &c.provider_id,
                    &c.name,
                    &c.base_url,
                    &serde_json::to_value(&c.headers)?,
                    &serde_json::to_value(&c.models)?,
                    &c.enabled,
                    &c.fingerprint,
                    &c.key_last4,
                    &time,
                    &serde_json::to_value(&c.catalog)?,
                ],
            )
            .await?;
        }
        OrganizationEvent::ConnectionRemoved { connection_id, .. } => {
            exec(
                tx,
                "DELETE FROM rm_connections WHERE connection_id = $1",
                &[&connection_id.as_str()],
            )
            .await?;
        }
        OrganizationEvent::ByokPolicySet { organization_id, policy, .. } => {
            exec(
                tx,
                "UPDATE rm_organizations SET byok_allowed = $2, byok_providers = $3 WHERE organization_id = $1",
                &[&organization_id.as_str(), &policy.allowed, &serde_json::to_value(&policy.providers)?],
            )
            .await?;
        }
        OrganizationEvent::DefaultModelSet { organization_id, model, .. } => {
            exec(
                tx,
                "UPDATE rm_organizations SET default_model = $2 WHERE organization_id = $1",
                &[&organization_id.as_str(), &serde_json::to_value(&model)?],
            )
            .await?;
        }
        // Kept on the organization aggregate (enforced by the command side); the audit trail
        // records the change.
        OrganizationEvent::PromptLimitsSet { .. } => {}
        OrganizationEvent::BudgetSet { organization_id, budget, .. } => {
            exec(
                tx,
                "INSERT INTO rm_budgets (budget_id, organization_id, budget) VALUES ($1, $2, $3) \
                 ON CONFLICT (budget_id) DO UPDATE SET budget = EXCLUDED.budget",
                &[&budget.id.as_str(), &organization_id.as_str(), &serde_json::to_value(&budget)?],
            )
            .await?;
        }
        OrganizationEvent::BudgetRemoved { budget_id, .. } => {
            exec(tx, "DELETE FROM rm_budgets WHERE budget_id = $1", &[&budget_id.as_str()]).await?;
        }
        // Read in the audit trail; notifiers take it from the bus.
        OrganizationEvent::BudgetAlert { .. } => {}
        OrganizationEvent::MemberAdded { organization_id, user_id, role, time } => {
            exec(
                tx,
                "INSERT INTO rm_members (organization_id, user_id, role, added_at) VALUES ($1, $2, $3, $4)",
                &[&organization_id.as_str(), &user_id.as_str(), &role.as_str(), &time],
            )
            .await?;
        }
    }
    Ok(())
}

async fn api_key(tx: &Transaction<'_>, event: ApiKeyEvent) -> anyhow::Result<()> {
    match event {
        ApiKeyEvent::Created {
            key_id,
            organization_id,
            user_id,
            name,
            expires_at,
            time,
            workspace_id,
        } => {
            let workspace = workspace_id.as_ref().map(|w| w.as_str());
            exec(
                tx,
                "INSERT INTO rm_api_keys (key_id, organization_id, user_id, name, created_at, expires_at, workspace_id) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
                &[&key_id.as_str(), &organization_id.as_str(), &user_id.as_str(), &name, &time, &expires_at, &workspace],
            )
            .await?;
        }
        ApiKeyEvent::Revoked { key_id, time, .. } => {
            exec(
                tx,
                "UPDATE rm_api_keys SET revoked_at = $2 WHERE key_id = $1",
                &[&key_id.as_str(), &time],
            )
            .await?;
        }
    }
    Ok(())
}

async fn session(tx: &Transaction<'_>, time: i64, event: SessionEvent) -> anyhow::Result<()> {
    match event {
        SessionEvent::Created {
            session_id,
            organization_id,
            workspace_id,
            project_id,
            title,
            created_by,
            time,
        } => {
            let project = project_id.as_ref().map(|p| p.as_str());
            exec(
                tx,
                "INSERT INTO rm_sessions (session_id, organization_id, workspace_id, project_id, title, status, created_by, created_at, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, 'idle', $6, $7, $7)",
                &[&session_id.as_str(), &organization_id.as_str(), &workspace_id.as_str(), &project, &title, &created_by.as_str(), &time],
            )
            .await?;
        }
        SessionEvent::Prompted { session_id, message, assistant_message_id, .. } => {
            let user_info = json!({
                "id": message.id, "sessionID": session_id, "role": "user", "userID": message.user_id,
                "time": { "created": message.time }, "model": message.model,
            });
            let assistant_info = json!({
                "id": assistant_message_id, "sessionID": session_id, "role": "assistant",
                "parentID": message.id, "time": { "created": message.time },
            });
            let stmt = "INSERT INTO rm_messages (message_id, organization_id, session_id, role, info, parts) \
                        SELECT $1, organization_id, session_id, $2, $3, $4 FROM rm_sessions WHERE session_id = $5";
            exec(
                tx,
                stmt,
                &[
                    &message.id.as_str(),
                    &"user",
                    &user_info,
                    &serde_json::to_value(&message.parts)?,
                    &session_id.as_str(),
                ],
            )
            .await?;
            exec(
                tx,
                stmt,
                &[
                    &assistant_message_id.as_str(),
                    &"assistant",
                    &assistant_info,
                    &json!([]),
                    &session_id.as_str(),
                ],
            )
            .await?;
        }
        SessionEvent::StatusChanged { session_id, status } => {
            exec(
                tx,
                "UPDATE rm_sessions SET status = $2, updated_at = $3 WHERE session_id = $1",
                &[&session_id.as_str(), &status.as_str(), &time],
            )
            .await?;
        }
        SessionEvent::AbortRequested { session_id, message_id, .. } => {
            // Recorded so a worker that starts (or restarts) this reply later stops at once.
            exec(
                tx,
                "UPDATE rm_messages SET info = info || '{\"abortRequested\": true}'::jsonb \
                 WHERE session_id = $1 AND message_id = $2",
                &[&session_id.as_str(), &message_id.as_str()],
            )
            .await?;
        }
        // The reply's text comes with its completion, from whichever attempt completes it.
        SessionEvent::MessageRetried { .. } => {}
        SessionEvent::MessageCompleted { session_id, message } => {
            crate::usage::record(tx, &session_id, &message).await?;
            let info = serde_json::to_value(MessageInfo::of_completion(&session_id, &message))?;
            // Merge so `time.created` from the prompt survives.
            exec(
                tx,
                "UPDATE rm_messages SET info = info || ($2::jsonb - 'time') \
                   || jsonb_build_object('time', (info->'time') || ($2::jsonb->'time')), parts = $3 \
                 WHERE session_id = $4 AND message_id = $1",
                &[&message.id.as_str(), &info, &serde_json::to_value(&message.parts)?, &session_id.as_str()],
            )
            .await?;
        }
    }
    Ok(())
}

/// Run `sql` as a statement prepared once per connection and cached: one round trip per
/// execution instead of a prepare and an execute.
pub(crate) async fn exec(
    tx: &Transaction<'_>,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> anyhow::Result<u64> {
    let statement = tx.prepare_cached(sql).await?;
    Ok(tx.execute(&statement, params).await?)
}
