//! Session events into `rm_sessions`, `rm_messages` and `rm_usage`: the effects of any number
//! of them as one statement per kind.
//!
//! Under load nearly every event is a session's (a prompt brings four: busy, prompted,
//! completed, idle), and one statement per effect made a projector batch about six statements
//! per prompt, each PostgreSQL's to parse, plan and answer on its own. Grouped by kind, a batch
//! of session events is at most six statements, whatever its size. Grouping keeps what
//! applying the events one at a time gives, because the kinds run in an order every session's
//! events allow:
//!
//! 1. creations: a session's row exists before anything else of it;
//! 2. prompts' two messages: their rows exist before an abort or a completion changes them;
//! 3. aborts, then completions: both merge keys into a message's `info`, different ones (a
//!    completion's info never holds `abortRequested`), so either order gives the same row;
//! 4. each session's last status: every status event overwrites the status and the time;
//! 5. usage, summed per row first: a row's counters are sums, whatever their order.
//!
//! What the statements read besides their own rows is the same as one at a time: a session's
//! organization and workspace never change once created, and no session event changes a
//! connection. The one batch this cannot group exactly is a message completed twice (the
//! session aggregate never commits that): [`effects`] answers `None` and the caller applies the
//! events one by one.

use std::collections::{HashMap, HashSet};

use schemas::envelope::Envelope;
use schemas::events::SessionEvent;
use schemas::read::MessageInfo;
use serde_json::{Value, json};

use crate::projection::{Step, step};

const CREATE: &str = "INSERT INTO rm_sessions (session_id, organization_id, workspace_id, project_id, title, \
         status, created_by, created_at, updated_at) \
     SELECT x.session_id, x.organization_id, x.workspace_id, x.project_id, x.title, 'idle', x.created_by, x.at, x.at \
     FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::bigint[]) \
         WITH ORDINALITY AS x(session_id, organization_id, workspace_id, project_id, title, created_by, at, n) \
     ORDER BY x.n";

/// Each message with its session's organization (none if the session is unknown here).
const INSERT_MESSAGES: &str = "INSERT INTO rm_messages (message_id, organization_id, session_id, role, info, parts) \
     SELECT x.message_id, s.organization_id, s.session_id, x.role, x.info, x.parts \
     FROM unnest($1::text[], $2::text[], $3::jsonb[], $4::jsonb[], $5::text[]) \
         WITH ORDINALITY AS x(message_id, role, info, parts, session_id, n) \
     JOIN rm_sessions s ON s.session_id = x.session_id \
     ORDER BY x.n";

/// Recorded so a worker that starts (or restarts) the reply later stops at once.
const ABORT: &str = "UPDATE rm_messages m SET info = m.info || '{\"abortRequested\": true}'::jsonb \
     FROM (SELECT DISTINCT * FROM unnest($1::text[], $2::text[]) AS x(session_id, message_id)) x \
     WHERE m.session_id = x.session_id AND m.message_id = x.message_id";

/// The reply's info and text; merged so `time.created` from the prompt survives.
const COMPLETE: &str = "UPDATE rm_messages m SET info = m.info || (x.info - 'time') \
         || jsonb_build_object('time', (m.info->'time') || (x.info->'time')), parts = x.parts \
     FROM unnest($1::text[], $2::text[], $3::jsonb[], $4::jsonb[]) AS x(session_id, message_id, info, parts) \
     WHERE m.session_id = x.session_id AND m.message_id = x.message_id";

const STATUS: &str = "UPDATE rm_sessions s SET status = x.status, updated_at = x.at \
     FROM unnest($1::text[], $2::text[], $3::bigint[]) AS x(session_id, status, at) \
     WHERE s.session_id = x.session_id";

/// Each kind's rows, column by column, in event order.
#[derive(Default)]
struct Rows {
    created: Created,
    messages: Messages,
    aborts: MessageKeys,
    completions: Completions,
    statuses: Statuses,
    usage: crate::usage::Usage,
}

#[derive(Default)]
struct Created {
    session_id: Vec<String>,
    organization_id: Vec<String>,
    workspace_id: Vec<String>,
    project_id: Vec<Option<String>>,
    title: Vec<String>,
    created_by: Vec<String>,
    at: Vec<i64>,
}

#[derive(Default)]
struct Messages {
    message_id: Vec<String>,
    role: Vec<&'static str>,
    info: Vec<Value>,
    parts: Vec<Value>,
    session_id: Vec<String>,
}

#[derive(Default)]
struct MessageKeys {
    session_id: Vec<String>,
    message_id: Vec<String>,
}

#[derive(Default)]
struct Completions {
    keys: MessageKeys,
    info: Vec<Value>,
    parts: Vec<Value>,
}

/// Each session's last status and its time.
#[derive(Default)]
struct Statuses {
    index: HashMap<String, usize>,
    session_id: Vec<String>,
    status: Vec<&'static str>,
    at: Vec<i64>,
}

impl Statuses {
    fn set(&mut self, session_id: String, status: &'static str, at: i64) {
        let i = *self.index.entry(session_id.clone()).or_insert_with(|| {
            self.session_id.push(session_id);
            self.status.push(status);
            self.at.push(at);
            self.at.len() - 1
        });
        (self.status[i], self.at[i]) = (status, at);
    }
}

/// What the session events `envs` (in order) change in the read models, as one statement per
/// kind; `None` if they cannot be grouped exactly (see the module's doc).
pub(crate) fn effects(envs: &[&Envelope<Value>]) -> anyhow::Result<Option<Vec<Step>>> {
    let mut rows = Rows::default();
    let mut completed = HashSet::new();
    for env in envs {
        match serde_json::from_value(env.payload.clone())? {
            SessionEvent::Created {
                session_id,
                organization_id,
                workspace_id,
                project_id,
                title,
                created_by,
                time,
            } => {
                let c = &mut rows.created;
                c.session_id.push(session_id.to_string());
                c.organization_id.push(organization_id.to_string());
                c.workspace_id.push(workspace_id.to_string());
                c.project_id.push(project_id.map(|p| p.to_string()));
                c.title.push(title);
                c.created_by.push(created_by.to_string());
                c.at.push(time);
            }
            SessionEvent::Prompted { session_id, message, assistant_message_id, .. } => {
                let user_info = json!({
                    "id": message.id, "sessionID": session_id, "role": "user",
                    "userID": message.user_id, "time": { "created": message.time },
                    "model": message.model,
                });
                let assistant_info = json!({
                    "id": assistant_message_id, "sessionID": session_id, "role": "assistant",
                    "parentID": message.id, "time": { "created": message.time },
                });
                let m = &mut rows.messages;
                for (id, role, info, parts) in [
                    (
                        message.id.to_string(),
                        "user",
                        user_info,
                        serde_json::to_value(&message.parts)?,
                    ),
                    (assistant_message_id.to_string(), "assistant", assistant_info, json!([])),
                ] {
                    m.message_id.push(id);
                    m.role.push(role);
                    m.info.push(info);
                    m.parts.push(parts);
                    m.session_id.push(session_id.to_string());
                }
            }
            SessionEvent::StatusChanged { session_id, status } => {
                rows.statuses.set(session_id.to_string(), status.as_str(), env.time);
            }
            SessionEvent::AbortRequested { session_id, message_id, .. } => {
                rows.aborts.session_id.push(session_id.to_string());
                rows.aborts.message_id.push(message_id.to_string());
            }
            // The reply's text comes with its completion, from whichever attempt completes it.
            SessionEvent::MessageRetried { .. } => {}
            SessionEvent::MessageCompleted { session_id, message } => {
                if !completed.insert((session_id.clone(), message.id.clone())) {
                    return Ok(None);
                }
                let info = MessageInfo::of_completion(&session_id, &message);
                let c = &mut rows.completions;
                c.keys.session_id.push(session_id.to_string());
                c.keys.message_id.push(message.id.to_string());
                c.info.push(serde_json::to_value(info)?);
                c.parts.push(serde_json::to_value(&message.parts)?);
                rows.usage.add(&session_id, &message);
            }
        }
    }
    Ok(Some(rows.into_steps()))
}

impl Rows {
    /// The statements, in the order the module's doc gives; none for a kind without rows.
    fn into_steps(self) -> Vec<Step> {
        let Rows { created: c, messages: m, aborts: a, completions: done, statuses: s, usage } =
            self;
        let mut steps = Vec::new();
        if !c.session_id.is_empty() {
            steps.push(step!(
                CREATE,
                c.session_id,
                c.organization_id,
                c.workspace_id,
                c.project_id,
                c.title,
                c.created_by,
                c.at
            ));
        }
        if !m.message_id.is_empty() {
            steps.push(step!(INSERT_MESSAGES, m.message_id, m.role, m.info, m.parts, m.session_id));
        }
        if !a.session_id.is_empty() {
            steps.push(step!(ABORT, a.session_id, a.message_id));
        }
        if !done.keys.session_id.is_empty() {
            steps.push(step!(
                COMPLETE,
                done.keys.session_id,
                done.keys.message_id,
                done.info,
                done.parts
            ));
        }
        if !s.session_id.is_empty() {
            steps.push(step!(STATUS, s.session_id, s.status, s.at));
        }
        steps.extend(usage.into_step());
        steps
    }
}
