//! How each domain event changes the read models. Idempotent by aggregate sequence: an event is
//! applied only if it is the next one for its aggregate, checked and recorded in the same
//! transaction as its effects, so a redelivered event changes nothing.
//!
//! An event's projection is planned first, as statements with owned parameters ([`Step`]), then
//! run either one event at a time ([`apply`]: claim, and only then the effects) or a whole batch
//! pipelined ([`apply_pipelined`]: one statement claiming every aggregate's place at once, then
//! every statement of every event — or, for a batch of session events, one per kind of effect
//! (`crate::sessions`) — all sent without waiting for the one before; PostgreSQL still
//! executes them one after another, in order). The pipelined path is
//! for the usual case, where every event is its aggregate's next one; it reports when one is not,
//! and the caller undoes the batch and applies it event by event.

use std::collections::HashMap;
use std::collections::hash_map::Entry;

use anyhow::Context;
use deadpool_postgres::Transaction;
use futures::future::{join_all, maybe_done};
use schemas::envelope::{Envelope, aggregate};
use schemas::events::{ApiKeyEvent, OrganizationEvent};
use serde_json::Value;
use tokio_postgres::types::ToSql;

/// What applying an event did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

/// A statement parameter, owned, so a whole batch's statements exist before any is sent.
pub(crate) type Param = Box<dyn ToSql + Sync + Send>;

/// One statement of an event's projection.
pub(crate) struct Step {
    pub sql: &'static str,
    pub params: Vec<Param>,
}

impl Step {
    /// The parameters as tokio-postgres takes them.
    fn param_refs(&self) -> Vec<&(dyn ToSql + Sync)> {
        self.params.iter().map(|p| p.as_ref() as &(dyn ToSql + Sync)).collect()
    }
}

/// `step!(sql, params…)`: a [`Step`] owning its parameters.
macro_rules! step {
    ($sql:expr $(, $param:expr)* $(,)?) => {
        $crate::projection::Step {
            sql: $sql,
            params: vec![$(Box::new($param) as $crate::projection::Param),*],
        }
    };
}
pub(crate) use step;

/// Apply one event: claim its place, then (if it was the aggregate's next) run its effects.
pub async fn apply(tx: &Transaction<'_>, env: &Envelope<Value>) -> anyhow::Result<Outcome> {
    match claim(tx, env).await? {
        Outcome::Applied => {}
        other => return Ok(other),
    }
    for step in effects(env)? {
        run(tx, &step).await?;
    }
    Ok(Outcome::Applied)
}

/// Apply `envs`, in order, sending every statement at once. `Ok(true)`: all applied. `Ok(false)`
/// or an error: some event was not its aggregate's next one, or did not apply; its effects (and
/// others') may have run regardless, so the caller must undo the transaction or savepoint.
pub async fn apply_pipelined(
    tx: &Transaction<'_>,
    envs: &[&Envelope<Value>],
) -> anyhow::Result<bool> {
    let Some((claim, aggregates)) = claim_batch(envs)? else { return Ok(false) };
    let mut steps = vec![claim];
    // A batch of session events (nearly every batch under load) as one statement per kind.
    let grouped = if envs.iter().all(|env| env.aggregate_type == aggregate::SESSION) {
        crate::sessions::effects(envs)?
    } else {
        None
    };
    match grouped {
        Some(grouped) => steps.extend(grouped),
        None => {
            for env in envs {
                steps.extend(effects(env)?);
            }
        }
    }
    // Prepared once per connection and cached: after the first batch, no round trip here.
    let mut statements = Vec::with_capacity(steps.len());
    for step in &steps {
        statements.push(tx.prepare_cached(step.sql).await?);
    }
    let params: Vec<_> = steps.iter().map(Step::param_refs).collect();
    let mut requests: Vec<_> = statements
        .iter()
        .zip(&params)
        .map(|(statement, params)| Box::pin(maybe_done(tx.execute(statement, params))))
        .collect();
    // tokio-postgres sends a request when its future is first polled, and the server executes
    // requests in the order they were sent: poll each once, in order, then wait for all.
    for request in &mut requests {
        let _ = futures::poll!(request.as_mut());
    }
    join_all(requests.iter_mut().map(|r| r.as_mut())).await;
    let mut rows = Vec::with_capacity(requests.len());
    for request in &mut requests {
        rows.push(request.as_mut().take_output().context("a joined request has its output")??);
    }
    Ok(rows[0] == aggregates)
}

/// Moves every aggregate of a batch to its last event in the batch, from just before its first
/// one (or from nothing, for an aggregate's first event). Returns a row per aggregate moved: the
/// batch is all next exactly when every one of its aggregates moved.
const CLAIM_BATCH: &str = "WITH claim AS ( \
         SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[]) AS c(aggregate_id, first, last) \
     ), created AS ( \
         INSERT INTO rm_positions (aggregate_id, sequence) \
         SELECT aggregate_id, last FROM claim WHERE first = 1 \
         ON CONFLICT DO NOTHING RETURNING 1 \
     ), moved AS ( \
         UPDATE rm_positions p SET sequence = claim.last FROM claim \
         WHERE claim.first > 1 AND p.aggregate_id = claim.aggregate_id AND p.sequence = claim.first - 1 \
         RETURNING 1 \
     ) \
     SELECT 1 FROM created UNION ALL SELECT 1 FROM moved";

/// One statement claiming a whole batch's places (instead of one per event: in a rebuild of
/// session creations that halves the statements), and how many aggregates it must move. None if
/// some aggregate's events in the batch do not follow each other (a redelivery beside the
/// original, a gap): then not all of them can be next.
fn claim_batch(envs: &[&Envelope<Value>]) -> anyhow::Result<Option<(Step, u64)>> {
    let mut index = HashMap::new();
    let (mut ids, mut firsts, mut lasts) = (Vec::new(), Vec::<i64>::new(), Vec::<i64>::new());
    for env in envs {
        let seq = sequence(env)?;
        match index.entry(env.aggregate_id.as_str()) {
            Entry::Occupied(at) => {
                let last = &mut lasts[*at.get()];
                if seq != *last + 1 {
                    return Ok(None);
                }
                *last = seq;
            }
            Entry::Vacant(at) => {
                at.insert(ids.len());
                ids.push(env.aggregate_id.clone());
                firsts.push(seq);
                lasts.push(seq);
            }
        }
    }
    let aggregates = ids.len() as u64;
    Ok(Some((step!(CLAIM_BATCH, ids, firsts, lasts), aggregates)))
}

fn sequence(env: &Envelope<Value>) -> anyhow::Result<i64> {
    Ok(i64::try_from(env.sequence.context("domain events have a sequence")?)?)
}

/// The statement that records `env` as its aggregate's newest projected event if it is the next
/// one: it changes one row exactly then.
fn claim_step(env: &Envelope<Value>) -> anyhow::Result<Step> {
    let seq = sequence(env)?;
    Ok(if seq == 1 {
        step!(
            "INSERT INTO rm_positions (aggregate_id, sequence) VALUES ($1, 1) ON CONFLICT DO NOTHING",
            env.aggregate_id.clone()
        )
    } else {
        step!(
            "UPDATE rm_positions SET sequence = $2::bigint WHERE aggregate_id = $1 AND sequence = $2::bigint - 1",
            env.aggregate_id.clone(),
            seq
        )
    })
}

/// Record `env` as its aggregate's newest projected event, if it is the next one. Applied means
/// the caller must now apply (or park) it in the same transaction.
async fn claim(tx: &Transaction<'_>, env: &Envelope<Value>) -> anyhow::Result<Outcome> {
    let seq = sequence(env)?;
    if run(tx, &claim_step(env)?).await? == 1 {
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

/// What `env` changes in the read models, audit trail included.
fn effects(env: &Envelope<Value>) -> anyhow::Result<Vec<Step>> {
    let payload = env.payload.clone();
    let mut steps = match env.aggregate_type.as_str() {
        aggregate::ORGANIZATION => organization(serde_json::from_value(payload)?)?,
        aggregate::WORKSPACE => crate::workspaces::effects(serde_json::from_value(payload)?)?,
        aggregate::SESSION => {
            crate::sessions::effects(&[env])?.context("one session event is always planned")?
        }
        aggregate::API_KEY => api_key(serde_json::from_value(payload)?),
        other => anyhow::bail!("unknown aggregate type {other}"),
    };
    steps.extend(crate::audit::record(env));
    Ok(steps)
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
    let parked = step!(
        "INSERT INTO parked_events (stage, event_id, aggregate_type, aggregate_id, sequence, reason, attempts) \
         VALUES ('projector', $1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
        env.id.clone(),
        env.aggregate_type.clone(),
        env.aggregate_id.clone(),
        seq,
        reason.to_owned(),
        attempts,
    );
    run(tx, &parked).await?;
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
    let moved = step!(
        "INSERT INTO rm_positions (aggregate_id, sequence) VALUES ($1, $2) \
         ON CONFLICT (aggregate_id) DO UPDATE SET sequence = GREATEST(rm_positions.sequence, EXCLUDED.sequence)",
        env.aggregate_id.clone(),
        seq,
    );
    run(tx, &moved).await?;
    let parked = step!(
        "INSERT INTO parked_events (stage, event_id, aggregate_type, aggregate_id, sequence, reason, attempts) \
         VALUES ('projector', $1, $2, $3, $4, $5, 1) ON CONFLICT DO NOTHING",
        env.id.clone(),
        env.aggregate_type.clone(),
        env.aggregate_id.clone(),
        seq,
        reason.to_owned(),
    );
    run(tx, &parked).await?;
    Ok(())
}

fn organization(event: OrganizationEvent) -> anyhow::Result<Vec<Step>> {
    Ok(match event {
        OrganizationEvent::Created { organization_id, name, owner_id, time } => vec![step!(
            "INSERT INTO rm_organizations (organization_id, name, owner_id, created_at) VALUES ($1, $2, $3, $4)",
            organization_id.to_string(),
            name,
            owner_id.to_string(),
            time,
        )],
        OrganizationEvent::Renamed { organization_id, name, .. } => vec![step!(
            "UPDATE rm_organizations SET name = $2 WHERE organization_id = $1",
            organization_id.to_string(),
            name,
        )],
        OrganizationEvent::MemberRoleChanged { organization_id, user_id, role, .. } => vec![step!(
            "UPDATE rm_members SET role = $3 WHERE organization_id = $1 AND user_id = $2",
            organization_id.to_string(),
            user_id.to_string(),
            role.as_str(),
        )],
        OrganizationEvent::MemberRemoved { organization_id, user_id, .. } => vec![step!(
            "DELETE FROM rm_members WHERE organization_id = $1 AND user_id = $2",
            organization_id.to_string(),
            user_id.to_string(),
        )],
        OrganizationEvent::ConnectionSet { organization_id, connection: c, time, .. } => {
            vec![step!(
                "INSERT INTO rm_connections (connection_id, organization_id, owner_id, kind, provider_id, name, \
                 base_url, headers, models, enabled, fingerprint, key_last4, updated_at, catalog) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) \
             ON CONFLICT (connection_id) DO UPDATE SET name = EXCLUDED.name, base_url = EXCLUDED.base_url, \
                 headers = EXCLUDED.headers, models = EXCLUDED.models, enabled = EXCLUDED.enabled, \
                 catalog = EXCLUDED.catalog, \
                 fingerprint = EXCLUDED.fingerprint, key_last4 = EXCLUDED.key_last4, \
                 updated_at = EXCLUDED.updated_at",
                c.id.to_string(),
                organization_id.to_string(),
                c.owner_id.as_ref().map(|o| o.to_string()),
                serde_json::to_value(c.kind)?.as_str().unwrap_or_default().to_owned(),
                c.provider_id,
                c.name,
                c.base_url,
                serde_json::to_value(&c.headers)?,
                serde_json::to_value(&c.models)?,
                c.enabled,
                c.fingerprint,
                c.key_last4,
                time,
                serde_json::to_value(&c.catalog)?,
            )]
        }
        OrganizationEvent::ConnectionRemoved { connection_id, .. } => vec![step!(
            "DELETE FROM rm_connections WHERE connection_id = $1",
            connection_id.to_string(),
        )],
        OrganizationEvent::ByokPolicySet { organization_id, policy, .. } => vec![step!(
            "UPDATE rm_organizations SET byok_allowed = $2, byok_providers = $3 WHERE organization_id = $1",
            organization_id.to_string(),
            policy.allowed,
            serde_json::to_value(&policy.providers)?,
        )],
        OrganizationEvent::DefaultModelSet { organization_id, model, .. } => vec![step!(
            "UPDATE rm_organizations SET default_model = $2 WHERE organization_id = $1",
            organization_id.to_string(),
            serde_json::to_value(&model)?,
        )],
        // Kept on the organization aggregate (enforced by the command side); the audit trail
        // records the change.
        OrganizationEvent::PromptLimitsSet { .. } => vec![],
        OrganizationEvent::BudgetSet { organization_id, budget, .. } => vec![step!(
            "INSERT INTO rm_budgets (budget_id, organization_id, budget) VALUES ($1, $2, $3) \
             ON CONFLICT (budget_id) DO UPDATE SET budget = EXCLUDED.budget",
            budget.id.to_string(),
            organization_id.to_string(),
            serde_json::to_value(&budget)?,
        )],
        OrganizationEvent::BudgetRemoved { budget_id, .. } => {
            vec![step!("DELETE FROM rm_budgets WHERE budget_id = $1", budget_id.to_string(),)]
        }
        // Read in the audit trail; notifiers take it from the bus.
        OrganizationEvent::BudgetAlert { .. } => vec![],
        OrganizationEvent::MemberAdded { organization_id, user_id, role, time } => vec![step!(
            "INSERT INTO rm_members (organization_id, user_id, role, added_at) VALUES ($1, $2, $3, $4)",
            organization_id.to_string(),
            user_id.to_string(),
            role.as_str(),
            time,
        )],
    })
}

fn api_key(event: ApiKeyEvent) -> Vec<Step> {
    match event {
        ApiKeyEvent::Created {
            key_id,
            organization_id,
            user_id,
            name,
            expires_at,
            time,
            workspace_id,
        } => vec![step!(
            "INSERT INTO rm_api_keys (key_id, organization_id, user_id, name, created_at, expires_at, workspace_id) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
            key_id.to_string(),
            organization_id.to_string(),
            user_id.to_string(),
            name,
            time,
            expires_at,
            workspace_id.map(|w| w.to_string()),
        )],
        ApiKeyEvent::Revoked { key_id, time, .. } => vec![step!(
            "UPDATE rm_api_keys SET revoked_at = $2 WHERE key_id = $1",
            key_id.to_string(),
            time,
        )],
    }
}

/// Run one step as a statement prepared once per connection and cached: one round trip per
/// execution instead of a prepare and an execute.
pub(crate) async fn run(tx: &Transaction<'_>, step: &Step) -> anyhow::Result<u64> {
    let statement = tx.prepare_cached(step.sql).await?;
    Ok(tx.execute(&statement, &step.param_refs()).await?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use schemas::ids::OrganizationId;

    fn event(aggregate: &str, sequence: u64) -> Envelope<Value> {
        Envelope {
            id: format!("{aggregate}:{sequence}"),
            organization_id: OrganizationId::new(),
            aggregate_type: aggregate::SESSION.into(),
            aggregate_id: aggregate.into(),
            sequence: Some(sequence),
            event_type: "session.status_changed".into(),
            event_version: "1".into(),
            time: 0,
            actor: None,
            correlation_id: None,
            causation_id: None,
            payload: Value::Null,
        }
    }

    fn claim(batch: &[Envelope<Value>]) -> Option<(String, u64)> {
        let batch: Vec<&Envelope<Value>> = batch.iter().collect();
        let (step, aggregates) = claim_batch(&batch).expect("events with sequences")?;
        Some((format!("{:?}", step.params), aggregates))
    }

    #[test]
    fn a_batch_claims_each_aggregate_once_from_its_first_event_to_its_last() {
        let batch = [event("ses_a", 4), event("ses_b", 1), event("ses_a", 5), event("ses_a", 6)];
        let (params, aggregates) =
            claim(&batch).expect("each aggregate's events follow each other");
        assert_eq!(aggregates, 2);
        assert_eq!(params, r#"[["ses_a", "ses_b"], [4, 1], [6, 1]]"#, "ids, firsts, lasts");
    }

    #[test]
    fn a_batch_whose_aggregate_repeats_or_skips_a_sequence_is_not_claimed_at_once() {
        assert_eq!(claim(&[event("ses_a", 4), event("ses_a", 4)]), None, "a redelivery beside it");
        assert_eq!(claim(&[event("ses_a", 4), event("ses_a", 6)]), None, "a gap");
        assert_eq!(claim(&[event("ses_a", 5), event("ses_a", 4)]), None, "out of order");
    }
}
