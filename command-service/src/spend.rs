//! Spend budgets and prompt rates, enforced across every instance in PostgreSQL
//! (migrations/0022_spend.sql): a prompt takes its rates and holds the most its reply can cost
//! under its budgets in one statement before it is accepted; the `message.completed` event
//! releases the hold and counts the real cost, in its own transaction. The admissions of one
//! organization's prompts arriving together are decided in one statement (`prompt_admit_all`,
//! migrations/0030), in the order they came: a burst under one budget takes its locks once
//! instead of queueing on them one statement at a time.
//!
//! PostgreSQL rather than JetStream KV: the counters must move in the same transaction as the
//! completion event (so a cost is counted exactly once whatever crashes), and the check-and-hold
//! across up to four budgets is one statement under row and advisory locks, which a key-value
//! compare-and-set can only approximate with retries.

use std::time::Duration;

use async_trait::async_trait;
use platform::batching::{BatchLimits, Batcher};
use platform::telemetry::InProgress;
use schemas::budget::Budget;
use schemas::ids::{MessageId, OrganizationId, SessionId};
use schemas::provider::{ModelCost, ModelLimit};

use crate::error::{BudgetRefusal, DomainError};
use crate::prompt_limits::PromptRate;

/// Output tokens assumed for a model whose catalog gives no output limit (what the worker asks
/// an Anthropic model for in that case).
pub const DEFAULT_MAX_OUTPUT_TOKENS: u64 = 8192;
/// Input beyond the session's text: instructions and message framing, in tokens.
const PROMPT_OVERHEAD_TOKENS: u64 = 1024;

/// The most a prompt's reply can cost: its input is at most the session's text (a token is
/// never less than a byte) and the model's context, its output at most the model's output limit.
pub fn most_a_reply_costs(price: &ModelCost, limit: ModelLimit, history_bytes: u64) -> u64 {
    let mut input = history_bytes.saturating_add(PROMPT_OVERHEAD_TOKENS);
    if limit.context > 0 {
        input = input.min(limit.context);
    }
    let output = if limit.output > 0 { limit.output } else { DEFAULT_MAX_OUTPUT_TOKENS };
    price.at_most(input, output)
}

/// What a prompt must get past before it is accepted: its rates, and a hold of the most its
/// reply can cost under its budgets.
#[derive(Debug, Clone)]
pub struct Admission<'a> {
    pub session: &'a SessionId,
    /// The assistant message the reply will be: the completion event releases the hold by it.
    pub reply: &'a MessageId,
    pub organization: &'a OrganizationId,
    pub own_key: bool,
    pub micro_dollars: u64,
    pub budgets: &'a [Budget],
    pub rates: &'a [PromptRate],
}

/// Admits prompts (a trait so aggregate tests run without a database).
#[async_trait]
pub trait SpendLedger: Send + Sync {
    /// Take the prompt's rates and hold its reply's most under its budgets, all or nothing, or
    /// refuse with the first budget or rate it would exceed. Idempotent per reply: a command
    /// run again after a conflict takes and holds nothing more.
    async fn admit(&self, admission: &Admission<'_>) -> Result<(), DomainError>;
}

/// The ledger in PostgreSQL.
pub struct PgSpend {
    db: deadpool_postgres::Pool,
    /// Each organization's admissions, batched (`platform::batching`): those arriving while its
    /// statements run go out together as one, which takes its budgets' locks once for all of
    /// them. One organization's burst holds one of the pool's connections at a time
    /// ([`ADMISSIONS`]`.in_flight`), and never shares a statement (or its locks) with another
    /// tenant's prompts.
    batches: moka::future::Cache<OrganizationId, Batcher<Admit, Admitted>>,
}

/// Per organization and instance: one statement at a time (a second would only wait for the
/// first's budget locks, holding a pooled connection, and take fewer admissions with it),
/// admissions in one, admissions waiting (the organization's own bound: no gate per session,
/// which would cost each organization's batcher tens of KB), and how long one waits for room
/// before it is refused (503).
const ADMISSIONS: BatchLimits = BatchLimits {
    in_flight: 1,
    max_batch: 64,
    queue: 512,
    per_key: usize::MAX,
    queue_wait: Duration::from_secs(3),
};

/// One prompt's admission, as `prompt_admit_all` takes it (migrations/0030): the arguments of
/// `prompt_admit` (0022), by name.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct Admit {
    session: String,
    message: String,
    organization: String,
    /// The counters the hold goes to (the budgets' scopes).
    held_in: Vec<String>,
    own_key: bool,
    amount: i64,
    rate_keys: Vec<String>,
    rate_costs: Vec<f64>,
    rate_windows: Vec<f64>,
    budget_ids: Vec<String>,
    budget_scopes: Vec<String>,
    budget_amounts: Vec<i64>,
    budget_periods: Vec<&'static str>,
    budget_hours: Vec<i32>,
    budget_include_own: Vec<bool>,
}

/// An admission's answer: `None` if admitted, else what refused it.
type Admitted = Result<Option<Refused>, DomainError>;

/// What refused an admission, as `prompt_admit` says it.
#[derive(Debug, Clone)]
struct Refused {
    /// The budget that refused, or none if a rate did.
    budget_id: Option<String>,
    spent: i64,
    reserved: i64,
    retry_after_secs: f64,
    /// The rate that refused (1-based), if one did.
    rate_index: Option<i32>,
}

fn db_error(e: impl std::fmt::Display) -> DomainError {
    DomainError::Unavailable(e.to_string())
}

fn n(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl PgSpend {
    pub fn new(db: deadpool_postgres::Pool) -> Self {
        let batches = moka::future::Cache::builder()
            .max_capacity(10_000)
            .time_to_idle(Duration::from_secs(600))
            .build();
        Self { db, batches }
    }
    /// Give back what a prompt held (its command failed); nothing if it held nothing.
    pub async fn release(&self, session: &SessionId, reply: &MessageId) -> anyhow::Result<()> {
        let db = self.db.get().await?;
        let stmt = db.prepare_cached("SELECT spend_release($1, $2)").await?;
        db.execute(&stmt, &[&session.as_str(), &reply.as_str()]).await?;
        Ok(())
    }

    /// Release reservations older than `ttl`; how many there were.
    pub async fn sweep(&self, ttl: Duration) -> anyhow::Result<i32> {
        let db = self.db.get().await?;
        let secs = ttl.as_secs_f64();
        let row = db.query_one("SELECT spend_sweep(make_interval(secs => $1))", &[&secs]).await?;
        Ok(row.get(0))
    }

    /// What each of `budgets` of `org` has spent and holds in its current period, in
    /// micro-dollars, in their order: one statement for them all.
    pub async fn used(
        &self,
        org: &OrganizationId,
        budgets: &[&Budget],
    ) -> anyhow::Result<Vec<(u64, u64)>> {
        if budgets.is_empty() {
            return Ok(Vec::new());
        }
        let db = self.db.get().await?;
        let stmt = db
            .prepare_cached(
                "SELECT u.spent, u.reserved \
                 FROM unnest($1::text[], $2::int[], $3::text[], $4::bool[]) WITH ORDINALITY \
                      b(period, hours, scope, include_own, o), \
                 LATERAL spend_window(b.period, b.hours, clock_timestamp() AT TIME ZONE 'UTC') w, \
                 LATERAL spend_used(b.scope, b.include_own, w.granularity, w.from_ts) u \
                 ORDER BY b.o",
            )
            .await?;
        let (periods, hours): (Vec<&str>, Vec<i32>) =
            budgets.iter().map(|b| b.spec.period.sql()).unzip();
        let scopes: Vec<String> = budgets.iter().map(|b| b.spec.scope.counter_key(org)).collect();
        let own: Vec<bool> = budgets.iter().map(|b| b.spec.include_own_keys).collect();
        let rows = db.query(&stmt, &[&periods, &hours, &scopes, &own]).await?;
        Ok(rows
            .iter()
            .map(|row| {
                let (spent, reserved): (i64, i64) = (row.get(0), row.get(1));
                (spent.max(0) as u64, reserved.max(0) as u64)
            })
            .collect())
    }
}

#[async_trait]
impl SpendLedger for PgSpend {
    async fn admit(&self, a: &Admission<'_>) -> Result<(), DomainError> {
        if a.budgets.is_empty() && a.rates.is_empty() {
            // No budget to hold under and no rate to take: the statement would only record a
            // hold that no counter carries. Skipping it spares the prompt a pooled connection and
            // a turn in its organization's batches. A budget set meanwhile would not have
            // counted this hold either.
            return Ok(());
        }
        let org = a.organization;
        let scopes: Vec<String> = a.budgets.iter().map(|b| b.spec.scope.counter_key(org)).collect();
        // The hold goes where the budgets look: their scopes' counters (the cost, later, goes
        // to every scope the reply is charged to, budgeted or not).
        let mut held_in = scopes.clone();
        held_in.sort_unstable();
        held_in.dedup();
        let admit = Admit {
            session: a.session.to_string(),
            message: a.reply.to_string(),
            organization: org.to_string(),
            held_in,
            own_key: a.own_key,
            amount: n(a.micro_dollars),
            rate_keys: a.rates.iter().map(|r| r.key.clone()).collect(),
            rate_costs: a.rates.iter().map(|r| r.rate.interval_secs()).collect(),
            rate_windows: a.rates.iter().map(|r| r.rate.window_secs()).collect(),
            budget_ids: a.budgets.iter().map(|b| b.id.to_string()).collect(),
            budget_scopes: scopes,
            budget_amounts: a.budgets.iter().map(|b| n(b.spec.amount.micro_dollars)).collect(),
            budget_periods: a.budgets.iter().map(|b| b.spec.period.sql().0).collect(),
            budget_hours: a.budgets.iter().map(|b| b.spec.period.sql().1).collect(),
            budget_include_own: a.budgets.iter().map(|b| b.spec.include_own_keys).collect(),
        };
        let batches = self
            .batches
            .get_with_by_ref(org, async {
                let db = self.db.clone();
                Batcher::start(ADMISSIONS, move |batch| admit_all(db.clone(), batch))
            })
            .await;
        // Counted while it waits for its statement or is in one.
        let waiting = InProgress::new("spend_admissions_in_progress");
        let refused = batches.ask(a.session.as_str(), admit).await.map_err(db_error)??;
        drop(waiting);
        let Some(refused) = refused else { return Ok(()) };
        let retry = refused.retry_after_secs;
        if let Some(index) = refused.rate_index {
            let rate = usize::try_from(index - 1).ok().and_then(|i| a.rates.get(i));
            let rate = rate.ok_or_else(|| db_error(format!("no rate {index}")))?;
            return Err(DomainError::RateLimited(Box::new(rate.refused(retry))));
        }
        let id = refused.budget_id.unwrap_or_default();
        let budget = a.budgets.iter().find(|b| b.id.as_str() == id).ok_or_else(|| db_error(&id))?;
        Err(DomainError::OverBudget(Box::new(BudgetRefusal {
            budget_id: budget.id.clone(),
            scope: budget.spec.scope.clone(),
            amount_micro_dollars: budget.spec.amount.micro_dollars,
            spent_micro_dollars: refused.spent.max(0) as u64,
            reserved_micro_dollars: refused.reserved.max(0) as u64,
            needed_micro_dollars: a.micro_dollars,
            retry_after_secs: retry.max(1.0) as u32,
        })))
    }
}

/// One statement for a batch of one organization's admissions, answered in their order. If
/// the database refuses it (a deadlock, or something about one admission), each goes again
/// alone, so only the one it fails for gets the error; if the database cannot be reached, all
/// are answered so at once.
async fn admit_all(db: deadpool_postgres::Pool, batch: Vec<Admit>) -> Vec<Admitted> {
    metrics::histogram!("spend_admission_batch_size").record(batch.len() as f64);
    let unavailable = |e: &dyn std::fmt::Display| batch.iter().map(|_| Err(db_error(e))).collect();
    let db = match db.get().await {
        Ok(db) => db,
        Err(e) => return unavailable(&e),
    };
    match admit_together(&db, &batch).await {
        Ok(answers) => return answers.into_iter().map(Ok).collect(),
        Err(e) if batch.len() > 1 && e.code().is_some() => {
            tracing::warn!(error = %e, admissions = batch.len(), "admission batch refused; admitting one by one");
            metrics::counter!("spend_admission_batches_retried_alone_total").increment(1);
        }
        Err(e) => return unavailable(&e),
    }
    let mut answers = Vec::with_capacity(batch.len());
    for admit in &batch {
        let alone = admit_together(&db, std::slice::from_ref(admit)).await;
        answers.push(alone.map(|mut one| one.pop().flatten()).map_err(db_error));
    }
    answers
}

/// Each admission of `batch`'s refusal, if it was refused: one statement for them all
/// (`prompt_admit_all`, its arguments as JSON), or, for a lone admission, `prompt_admit` with
/// typed arguments as before batches (the quiet case pays nothing for them).
async fn admit_together(
    db: &deadpool_postgres::Client,
    batch: &[Admit],
) -> Result<Vec<Option<Refused>>, tokio_postgres::Error> {
    let rows = match batch {
        [a] => {
            let stmt = db
                .prepare_cached(
                    "SELECT 1, * FROM prompt_admit($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)",
                )
                .await?;
            let params: [&(dyn tokio_postgres::types::ToSql + Sync); 15] = [
                &a.session,
                &a.message,
                &a.organization,
                &a.held_in,
                &a.own_key,
                &a.amount,
                &a.rate_keys,
                &a.rate_costs,
                &a.rate_windows,
                &a.budget_ids,
                &a.budget_scopes,
                &a.budget_amounts,
                &a.budget_periods,
                &a.budget_hours,
                &a.budget_include_own,
            ];
            db.query(&stmt, &params).await?
        }
        _ => {
            let admissions =
                serde_json::to_value(batch).expect("strings, numbers and booleans serialise");
            let stmt = db.prepare_cached("SELECT * FROM prompt_admit_all($1)").await?;
            db.query(&stmt, &[&admissions]).await?
        }
    };
    let mut answers = vec![None; batch.len()];
    for row in rows {
        // Each row names an admission of the batch by its 1-based place.
        let place = usize::try_from(row.get::<_, i32>(0) - 1).ok();
        if let Some(answer) = place.and_then(|i| answers.get_mut(i)) {
            *answer = Some(Refused {
                budget_id: row.get(1),
                spent: row.get::<_, Option<i64>>(2).unwrap_or_default(),
                reserved: row.get::<_, Option<i64>>(3).unwrap_or_default(),
                retry_after_secs: row.get(4),
                rate_index: row.get(5),
            });
        }
    }
    Ok(answers)
}

/// A ledger that admits everything (aggregate unit tests).
#[cfg(test)]
pub struct NoBudgets;

#[cfg(test)]
#[async_trait]
impl SpendLedger for NoBudgets {
    async fn admit(&self, _: &Admission<'_>) -> Result<(), DomainError> {
        Ok(())
    }
}
