//! Internal commands over NATS request/reply: LLM workers report finished replies here, and
//! record a new attempt before regenerating one, so the worker never writes the event store
//! itself. Not reachable from outside: only the bus carries
//! these subjects, and a queue group spreads them over command-service instances.

use std::sync::Arc;

use futures::StreamExt;
use schemas::api::{CommandReply, CompleteMessage, RetryReply};
use schemas::subjects;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

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
    let group = || "command-service".to_owned();
    let completions = nats.queue_subscribe(subjects::CMD_COMPLETE_MESSAGE, group()).await?;
    let retries = nats.queue_subscribe(subjects::CMD_RETRY_REPLY, group()).await?;
    futures::stream::select(completions, retries)
        .take_until(shutdown.cancelled())
        .for_each_concurrent(CONCURRENCY, |msg| {
            let (nats, state) = (nats.clone(), state.clone());
            // A reply's completion continues the reply's trace.
            let span = tracing::info_span!(
                target: platform::telemetry::TRACE_TARGET,
                "internal command",
                otel.kind = "server",
                messaging.destination.name = %msg.subject,
            );
            platform::trace_context::follow_nats(&span, msg.headers.as_ref());
            async move {
                let invalid = |e: serde_json::Error| CommandReply::Rejected {
                    reason: format!("invalid command: {e}"),
                };
                let reply = if msg.subject.as_str() == subjects::CMD_RETRY_REPLY {
                    match serde_json::from_slice::<RetryReply>(&msg.payload) {
                        Ok(retry) => self::retry(&state, retry).await,
                        Err(e) => invalid(e),
                    }
                } else {
                    match serde_json::from_slice::<CompleteMessage>(&msg.payload) {
                        Ok(report) => complete(&state, report).await,
                        Err(e) => invalid(e),
                    }
                };
                if let Some(to) = msg.reply {
                    let body = serde_json::to_vec(&reply).unwrap_or_default();
                    if let Err(e) = nats.publish(to, body.into()).await {
                        tracing::warn!(error = %e, "cannot answer internal command");
                    }
                }
            }
            .instrument(span)
        })
        .await;
    Ok(())
}

async fn retry(state: &AppState, retry: RetryReply) -> CommandReply {
    let ctx = CommandContext {
        actor: "service:llm-worker".into(),
        correlation_id: retry.message_id.to_string(),
        causation_id: Some(retry.causation_id),
        organization_scope: None,
    };
    let command = SessionCommand::Retry { message_id: retry.message_id, attempt: retry.attempt };
    let done = state.sessions.execute(retry.session_id.as_str(), command, &ctx).await;
    command_reply(done.map(|_| None))
}

/// The worker's view of a command's outcome: `through` is the last event it committed.
fn command_reply(outcome: Result<Option<u64>, CommandError>) -> CommandReply {
    match outcome {
        Ok(through) => CommandReply::Done { through },
        Err(CommandError::Domain(DomainError::AlreadyDone)) => CommandReply::AlreadyDone,
        Err(CommandError::Domain(DomainError::Superseded)) => CommandReply::Superseded,
        // A lookup the decision needed failed (the database restarting): not a refusal, and
        // the worker must ask again, not drop its reply.
        Err(CommandError::Domain(DomainError::Unavailable(reason))) => {
            CommandReply::Unavailable { reason }
        }
        Err(CommandError::Domain(d)) => CommandReply::Rejected { reason: d.to_string() },
        Err(e) => CommandReply::Unavailable { reason: e.to_string() },
    }
}

async fn complete(state: &AppState, report: CompleteMessage) -> CommandReply {
    let ctx = CommandContext {
        actor: "service:llm-worker".into(),
        correlation_id: report.message_id.to_string(),
        causation_id: Some(report.causation_id.clone()),
        organization_scope: None,
    };
    let id = report.session_id.to_string();
    let (org, workspace, user) =
        (report.organization_id.clone(), report.workspace_id.clone(), report.user_id.clone());
    match state
        .sessions
        .execute(&id, SessionCommand::Complete { report: Box::new(report) }, &ctx)
        .await
    {
        Ok(committed) => {
            // The reply is the commit's last event but one: the worker may take its
            // conversation on from there without reading it back.
            let done = CommandReply::Done { through: Some(committed.sequence) };
            // Its tokens were charged to the token rates, and its cost counted, with the event
            // (migrations/0027, 0022); thresholds it crossed are raised now (missed ones are
            // raised by the next reply of the budget).
            if let Some(user) = user {
                // (the organization as held: no read per reply, `Directory::spend_rules`)
                let rules = match state.directory.spend_rules(&org, schemas::now_ms()).await {
                    Ok(rules) => rules,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot read the organization's budgets");
                        return done;
                    }
                };
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
            done
        }
        Err(e) => command_reply(Err(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lookup_that_failed_is_asked_again_and_only_a_refusal_is_final() {
        let failed = command_reply(Err(CommandError::Domain(DomainError::Unavailable(
            "the database is restarting".into(),
        ))));
        assert!(matches!(failed, CommandReply::Unavailable { .. }), "{failed:?}");
        let refused = command_reply(Err(CommandError::Domain(DomainError::NotFound)));
        assert!(matches!(refused, CommandReply::Rejected { .. }), "{refused:?}");
    }
}
