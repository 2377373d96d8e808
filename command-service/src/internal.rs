//! Internal commands over NATS request/reply: LLM workers report finished replies here, so the
//! worker never writes the event store itself. Not reachable from outside: only the bus carries
//! these subjects, and a queue group spreads them over command-service instances.

use std::sync::Arc;

use futures::StreamExt;
use schemas::api::{CommandReply, CompleteMessage};
use schemas::subjects;
use tokio_util::sync::CancellationToken;

use crate::aggregates::SessionCommand;
use crate::error::{CommandError, DomainError};
use crate::executor::CommandContext;
use crate::startup::AppState;

/// Requests handled at once per instance.
const CONCURRENCY: usize = 64;

pub async fn run(
    nats: async_nats::Client,
    state: Arc<AppState>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let requests =
        nats.queue_subscribe(subjects::CMD_COMPLETE_MESSAGE, "command-service".into()).await?;
    requests
        .take_until(shutdown.cancelled())
        .for_each_concurrent(CONCURRENCY, |msg| {
            let (nats, state) = (nats.clone(), state.clone());
            async move {
                let reply = match serde_json::from_slice::<CompleteMessage>(&msg.payload) {
                    Ok(report) => complete(&state, report).await,
                    Err(e) => CommandReply::Rejected { reason: format!("invalid command: {e}") },
                };
                if let Some(to) = msg.reply {
                    let body = serde_json::to_vec(&reply).unwrap_or_default();
                    if let Err(e) = nats.publish(to, body.into()).await {
                        tracing::warn!(error = %e, "cannot answer internal command");
                    }
                }
            }
        })
        .await;
    Ok(())
}

async fn complete(state: &AppState, report: CompleteMessage) -> CommandReply {
    let ctx = CommandContext {
        actor: "service:llm-worker".into(),
        correlation_id: report.message_id.to_string(),
        causation_id: Some(report.causation_id.clone()),
        organization_scope: None,
    };
    let id = report.session_id.to_string();
    let (org, workspace, user, tokens) = (
        report.organization_id.clone(),
        report.workspace_id.clone(),
        report.user_id.clone(),
        report.tokens,
    );
    match state
        .sessions
        .execute(&id, SessionCommand::Complete { report: Box::new(report) }, &ctx)
        .await
    {
        Ok(_) => {
            // The reply's tokens count toward the token rates (once: a repeated report is
            // AlreadyDone and charges nothing).
            if let Some(user) = user {
                let rules = match state.directory.spend_rules(&org, schemas::now_ms()).await {
                    Ok(rules) => rules,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot read the organization's rates and budgets");
                        return CommandReply::Done;
                    }
                };
                let charged =
                    crate::prompt_limits::charge(&state.db, rules.limits, &org, &user, &tokens);
                if let Err(e) = charged.await {
                    tracing::warn!(error = %e, "cannot charge a reply's tokens to the token rates");
                }
                // Its cost was counted with the event (migrations/0022_spend.sql); thresholds it
                // crossed are raised now (missed ones are raised by the next reply of the budget).
                let alerts = crate::spend_alerts::raise_crossed_thresholds(
                    state,
                    &org,
                    (&workspace, &user),
                    rules.budgets,
                );
                if let Err(e) = alerts.await {
                    tracing::warn!(error = %e, "cannot raise budget threshold alerts");
                }
            }
            CommandReply::Done
        }
        Err(CommandError::Domain(DomainError::AlreadyDone)) => CommandReply::AlreadyDone,
        Err(CommandError::Domain(d)) => CommandReply::Rejected { reason: d.to_string() },
        Err(e) => CommandReply::Unavailable { reason: e.to_string() },
    }
}
