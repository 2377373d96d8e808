//! A session (conversation): its prompts and the one assistant reply each prompt is owed.
//!
//! A prompt is accepted only while no reply is running, and is answered by exactly one
//! `message.completed`: a second completion for the same message (a worker that was presumed
//! dead and finished anyway, or a retried report) is refused as `AlreadyDone`. A worker that
//! regenerates a reply records its attempt first (`message.retried`); a report from an earlier
//! attempt is then refused as `Superseded`, so the stored reply is the attempt clients follow.

use std::collections::HashSet;

use cqrs_es::Aggregate;
use cqrs_es::event_sink::EventSink;
use schemas::api::{CompleteMessage, MAX_CLIENT_ID_SKEW_MS, MAX_SESSION_BYTES, MAX_SESSION_TURNS};
use schemas::envelope::aggregate;
use schemas::events::{AssistantCompletion, ReplyCost, SessionEvent, UserMessage};
use schemas::ids::{
    ApiKeyId, ConnectionId, MessageId, OrganizationId, ProjectId, SessionId, UserId, WorkspaceId,
};
use schemas::message::{ModelRef, Part, SessionStatus};
use schemas::policy::Action;
use serde::{Deserialize, Serialize};

use super::{Scope, Scoped};
use crate::directory::{PromptPayer, Services, WorkspaceView};
use crate::error::DomainError;
use crate::spend::{Admission, most_a_reply_costs};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Session {
    id: Option<SessionId>,
    organization_id: Option<OrganizationId>,
    workspace_id: Option<WorkspaceId>,
    /// The reply being generated, if any.
    running: Option<RunningReply>,
    /// Replies already completed, to recognise repeated completion reports.
    completed: HashSet<MessageId>,
    /// The newest message id of the session. A new message's id must sort after it: ids a client
    /// chooses are then unique in the session (the read model's key is session × message) and
    /// keep the conversation in order.
    #[serde(default)]
    last_message: Option<MessageId>,
    /// Prompts so far (bounded by `MAX_SESSION_TURNS`).
    #[serde(default)]
    turns: u32,
    /// Text so far, prompts and replies, in bytes (bounded by `MAX_SESSION_BYTES`).
    #[serde(default)]
    bytes: u64,
    /// The model of the last prompt: the next prompt's unless it names one.
    #[serde(default)]
    last_model: Option<ModelRef>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct RunningReply {
    user_message: MessageId,
    assistant_message: MessageId,
    abort_requested: bool,
    /// Who prompted, the model and the connection: what the reply is attributed and priced by.
    #[serde(default)]
    user: Option<UserId>,
    #[serde(default)]
    model: Option<ModelRef>,
    #[serde(default)]
    connection: Option<ConnectionId>,
    /// Paid with the member's own key; sent with this API key: what the spend is charged to.
    #[serde(default)]
    own_key: bool,
    #[serde(default)]
    api_key: Option<ApiKeyId>,
    /// The newest attempt a worker has taken the reply over with (0 until one is retried).
    #[serde(default)]
    attempt: u32,
}

#[derive(Debug, Clone)]
pub enum SessionCommand {
    Create {
        id: SessionId,
        workspace: WorkspaceId,
        project: Option<ProjectId>,
        title: Option<String>,
        actor: UserId,
    },
    Prompt {
        /// Its `model` is decided here: `model` below, else the session's last, the
        /// workspace's default, the organization's, the deployment's.
        message: UserMessage,
        assistant_message_id: MessageId,
        model: Option<ModelRef>,
        /// The API key the prompt came with, if any (its budgets apply).
        api_key: Option<ApiKeyId>,
    },
    Abort {
        actor: UserId,
    },
    /// From an LLM worker about to regenerate the reply as `attempt`.
    Retry {
        message_id: MessageId,
        attempt: u32,
    },
    /// From an LLM worker: the reply is finished.
    Complete {
        /// Boxed: a report (the whole reply) is far larger than the other commands.
        report: Box<CompleteMessage>,
    },
}

impl Session {
    /// The session's workspace, once `actor` may take `action` in it.
    async fn authorize(
        &self,
        services: &Services,
        actor: &UserId,
        action: Action,
    ) -> Result<WorkspaceView, DomainError> {
        let workspace = self.workspace_id.as_ref().ok_or(DomainError::NotFound)?;
        let view = services.directory.workspace(workspace).await?.ok_or(DomainError::NotFound)?;
        super::authorize_in_workspace(services, &view, actor, action).await?;
        Ok(view)
    }

    fn id(&self) -> Result<SessionId, DomainError> {
        self.id.clone().ok_or(DomainError::NotFound)
    }

    /// The running reply `message`: `AlreadyDone` if it was completed.
    fn running_reply(&self, message: &MessageId) -> Result<&RunningReply, DomainError> {
        if self.completed.contains(message) {
            return Err(DomainError::AlreadyDone);
        }
        match &self.running {
            Some(r) if r.assistant_message == *message => Ok(r),
            _ => Err(DomainError::WrongState("no such reply is running".into())),
        }
    }

    /// A prompt's message id (possibly the client's) and its reply's id (ours) must be new: later
    /// than every id in the session, and not from the future.
    fn check_new_ids(&self, user: &MessageId, reply: &MessageId) -> Result<(), DomainError> {
        let latest_allowed = schemas::now_ms().max(0) as u64 + MAX_CLIENT_ID_SKEW_MS;
        if user.timestamp_ms() > latest_allowed {
            return Err(DomainError::Invalid(
                "messageID: the id's time lies in the future; ids must be made from the current time".into(),
            ));
        }
        if self.last_message.as_ref().is_some_and(|last| user <= last) {
            return Err(DomainError::WrongState(
                "messageID: the id must sort after every message already in the session".into(),
            ));
        }
        if reply <= user {
            return Err(DomainError::Invalid("the reply's id must sort after the prompt's".into()));
        }
        Ok(())
    }

    /// Refuse a prompt that would take the session past its documented size.
    fn check_room(&self, prompt_bytes: u64) -> Result<(), DomainError> {
        if self.turns >= MAX_SESSION_TURNS {
            return Err(DomainError::TooLarge(format!(
                "the session holds its maximum of {MAX_SESSION_TURNS} prompts; start a new session"
            )));
        }
        if self.bytes + prompt_bytes > MAX_SESSION_BYTES {
            return Err(DomainError::TooLarge(format!(
                "the session holds its maximum of {MAX_SESSION_BYTES} bytes of text; start a new session"
            )));
        }
        Ok(())
    }
}

fn prompt_bytes(message: &UserMessage) -> u64 {
    message.parts.iter().map(|p| p.text().len() as u64).sum()
}

/// A session's title when it is given none (OpenCode's own form).
pub fn default_title(time: i64) -> String {
    format!("New session - {time}")
}

impl Aggregate for Session {
    const TYPE: &'static str = aggregate::SESSION;
    type Command = SessionCommand;
    type Event = SessionEvent;
    type Error = DomainError;
    type Services = Services;

    async fn handle(
        &mut self,
        command: Self::Command,
        services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), DomainError> {
        match command {
            SessionCommand::Create { id, workspace, project, title, actor } => {
                if self.id.is_some() {
                    return Err(DomainError::WrongState("the session already exists".into()));
                }
                let view =
                    services.directory.workspace(&workspace).await?.ok_or(DomainError::NotFound)?;
                super::authorize_in_workspace(services, &view, &actor, Action::CreateSession)
                    .await?;
                if view.archived {
                    return Err(DomainError::WrongState("the workspace is archived".into()));
                }
                if project.as_ref().is_some_and(|p| !view.projects.contains(p)) {
                    return Err(DomainError::Invalid("no such project in this workspace".into()));
                }
                let (time, org) = (schemas::now_ms(), view.organization_id);
                let title = match title {
                    Some(t) => super::valid_name("title", &t)?,
                    None => default_title(time),
                };
                let created = SessionEvent::Created {
                    session_id: id,
                    organization_id: org,
                    workspace_id: workspace,
                    project_id: project,
                    title,
                    created_by: actor,
                    time,
                };
                sink.write(created, self).await;
            }
            SessionCommand::Prompt { mut message, assistant_message_id, model, api_key } => {
                let session_id = self.id()?;
                let org = self.organization_id.clone().ok_or(DomainError::NotFound)?;
                let payer = PromptPayer {
                    workspace: self.workspace_id.clone().ok_or(DomainError::NotFound)?,
                    user: message.user_id.clone(),
                    api_key: api_key.clone(),
                };
                let wanted = model.or_else(|| self.last_model.clone());
                let context = services.directory.prompt_context(&org, payer, wanted).await?;
                let workspace = context.workspace.ok_or(DomainError::NotFound)?;
                super::decide_in_workspace(
                    &workspace,
                    context.role,
                    &message.user_id,
                    Action::Prompt,
                )?;
                if workspace.archived {
                    return Err(DomainError::WrongState("the workspace is archived".into()));
                }
                if self.running.is_some() {
                    return Err(DomainError::WrongState(
                        "the session is busy: wait for the reply or abort it".into(),
                    ));
                }
                if message.parts.is_empty()
                    || message.parts.iter().all(|p| p.text().trim().is_empty())
                {
                    return Err(DomainError::Invalid(
                        "a prompt needs at least one non-empty text part".into(),
                    ));
                }
                self.check_new_ids(&message.id, &assistant_message_id)?;
                self.check_room(prompt_bytes(&message))?;
                // Busy first: `session.prompted` is what starts a worker, so as the commit's last
                // event everything the worker publishes is ordered after the whole commit.
                let busy = SessionEvent::StatusChanged {
                    session_id: session_id.clone(),
                    status: SessionStatus::Busy,
                };
                sink.write(busy, self).await;
                // Refused now, not discovered later by the worker: a model nobody offers, a
                // disabled connection, a key the organization does not allow.
                let terms = context.terms?;
                let org = &org;
                // Last, once everything else has passed (strangers and refused prompts use up
                // nothing): take the organization's prompt rates and hold the most the reply
                // can cost under the budgets it falls under — one statement, idempotent if this
                // runs again after a conflict.
                let rates = crate::prompt_limits::rates_for(terms.limits, org, &message.user_id);
                if !terms.budgets.is_empty() || !rates.is_empty() {
                    let limit = terms.connection.as_ref().map(|c| c.limit).unwrap_or_default();
                    let history = self.bytes + prompt_bytes(&message);
                    let most = match (&terms.price, terms.budgets.is_empty()) {
                        (Some(price), false) => most_a_reply_costs(price, limit, history),
                        _ => 0,
                    };
                    let admission = Admission {
                        session: &session_id,
                        reply: &assistant_message_id,
                        organization: org,
                        own_key: terms.connection.as_ref().is_some_and(|c| c.own_key),
                        micro_dollars: most,
                        budgets: &terms.budgets,
                        rates: &rates,
                    };
                    services.spend.admit(&admission).await?;
                }
                message.model = terms.model;
                let prompted = SessionEvent::Prompted {
                    session_id,
                    message,
                    assistant_message_id,
                    connection: terms.connection,
                    api_key_id: api_key,
                };
                sink.write(prompted, self).await;
            }
            SessionCommand::Abort { actor } => {
                let session_id = self.id()?;
                self.authorize(services, &actor, Action::Prompt).await?;
                let running = self
                    .running
                    .as_ref()
                    .ok_or_else(|| DomainError::WrongState("no reply is running".into()))?;
                if running.abort_requested {
                    return Err(DomainError::AlreadyDone);
                }
                let event = SessionEvent::AbortRequested {
                    session_id,
                    message_id: running.assistant_message.clone(),
                    requested_by: actor,
                    time: schemas::now_ms(),
                };
                sink.write(event, self).await;
            }
            SessionCommand::Retry { message_id, attempt } => {
                let session_id = self.id()?;
                let running = self.running_reply(&message_id)?;
                if attempt < running.attempt {
                    return Err(DomainError::Superseded);
                }
                if attempt > running.attempt {
                    let time = schemas::now_ms();
                    let retried =
                        SessionEvent::MessageRetried { session_id, message_id, attempt, time };
                    sink.write(retried, self).await;
                }
            }
            SessionCommand::Complete { report } => {
                let report = *report;
                let session_id = self.id()?;
                let running = self.running_reply(&report.message_id)?;
                if report.attempt < running.attempt {
                    return Err(DomainError::Superseded);
                }
                // Priced now, at the prices in force as it completes; the provider's own figure
                // wins where it reported one.
                let cost = match (report.provider_cost_micro_dollars, &running.connection) {
                    (Some(micro_dollars), _) => Some(ReplyCost { micro_dollars, prices: None }),
                    (None, Some(connection)) => {
                        let org = self.organization_id.clone().ok_or(DomainError::NotFound)?;
                        services
                            .directory
                            .price_of(&org, connection, &report.model.model_id)
                            .await?
                            .map(|prices| ReplyCost {
                                micro_dollars: prices.charge(&report.tokens),
                                prices: Some(prices),
                            })
                    }
                    (None, None) => None,
                };
                let completion = AssistantCompletion {
                    id: report.message_id.clone(),
                    parent_id: running.user_message.clone(),
                    parts: report
                        .reasoning
                        .map(|r| Part::Reasoning {
                            id: r.part_id,
                            message_id: report.message_id.clone(),
                            text: r.text,
                        })
                        .into_iter()
                        .chain([Part::Text {
                            id: report.part_id,
                            message_id: report.message_id,
                            text: report.text,
                        }])
                        .collect(),
                    finish: report.finish,
                    error: report.error,
                    tokens: report.tokens,
                    model: report.model,
                    connection_id: report.connection_id,
                    user_id: running.user.clone(),
                    workspace_id: self.workspace_id.clone(),
                    cost,
                    own_key: running.own_key,
                    api_key_id: running.api_key.clone(),
                    attempt: report.attempt,
                    time: schemas::now_ms(),
                };
                let done = SessionEvent::MessageCompleted {
                    session_id: session_id.clone(),
                    message: completion,
                };
                sink.write(done, self).await;
                let idle = SessionEvent::StatusChanged { session_id, status: SessionStatus::Idle };
                sink.write(idle, self).await;
            }
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            SessionEvent::Created { session_id, organization_id, workspace_id, .. } => {
                self.id = Some(session_id);
                self.organization_id = Some(organization_id);
                self.workspace_id = Some(workspace_id);
            }
            SessionEvent::Prompted {
                message,
                assistant_message_id,
                connection,
                api_key_id,
                ..
            } => {
                self.last_model = Some(message.model.clone());
                self.turns += 1;
                self.bytes += prompt_bytes(&message);
                self.last_message = Some(assistant_message_id.clone());
                self.running = Some(RunningReply {
                    user_message: message.id,
                    assistant_message: assistant_message_id,
                    abort_requested: false,
                    user: Some(message.user_id),
                    model: Some(message.model),
                    own_key: connection.as_ref().is_some_and(|c| c.own_key),
                    connection: connection.map(|c| c.id),
                    api_key: api_key_id,
                    attempt: 0,
                });
            }
            SessionEvent::StatusChanged { .. } => {}
            SessionEvent::AbortRequested { .. } => {
                if let Some(r) = self.running.as_mut() {
                    r.abort_requested = true;
                }
            }
            SessionEvent::MessageRetried { attempt, .. } => {
                if let Some(r) = self.running.as_mut() {
                    r.attempt = attempt;
                }
            }
            SessionEvent::MessageCompleted { message, .. } => {
                self.bytes += message.parts.iter().map(|p| p.len() as u64).sum::<u64>();
                if let Some(r) = self.running.take() {
                    self.completed.insert(r.user_message);
                }
                self.completed.insert(message.id);
            }
        }
    }
}

impl Scoped for Session {
    fn scope(&self) -> Scope {
        Scope {
            organization: self.organization_id.clone(),
            workspace: self.workspace_id.clone(),
            session: self.id.clone(),
        }
    }

    /// A prompt asks about both (membership, models, budgets), an abort about both (membership);
    /// the worker's reports about the organization at most.
    fn directory_reads(&self, command: &SessionCommand) -> Option<(OrganizationId, WorkspaceId)> {
        match command {
            SessionCommand::Prompt { .. } | SessionCommand::Abort { .. } => {
                Some((self.organization_id.clone()?, self.workspace_id.clone()?))
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests;
