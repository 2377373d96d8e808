//! Our session events as OpenCode's own clients expect them on `/event` (docs/opencode-clients.md):
//! a reply announces itself with `message.updated`, streams `message.part.delta`, and ends with
//! `message.updated` (completed) and a `message.part.updated` per part with `time.end` set (what
//! `opencode run` prints); `session.status` idle is followed by OpenCode's `session.idle`.
//! A reply regenerated as a new attempt removes the earlier attempt's parts
//! (`message.part.removed`), and whatever the earlier attempt still sends is not passed on:
//! OpenCode's clients know nothing of attempts. Events OpenCode has no counterpart for are not
//! sent.

use std::collections::HashMap;

use schemas::events::SessionEvent;
use schemas::ids::{MessageId, PartId, SessionId};
use schemas::live::LiveEvent;
use schemas::message::ModelRef;
use schemas::read::MessageInfo;
use serde_json::{Value, json};

/// Sessions whose reply model a stream remembers (the newest prompts'): bounded per stream.
const REMEMBERED: usize = 1_000;

/// One stream's translator: it remembers each session's latest prompted model, which OpenCode's
/// `message.updated` names as soon as a reply starts (our `message.started` does not carry it),
/// and each running reply's attempt and parts.
#[derive(Default)]
pub struct Translator {
    models: HashMap<SessionId, ModelRef>,
    replies: HashMap<MessageId, Attempt>,
}

/// The newest attempt of a running reply this stream has seen, and the parts it announced.
struct Attempt {
    number: u32,
    parts: Vec<PartId>,
}

/// What one of our events is on OpenCode's stream.
#[derive(Default)]
pub struct Translated {
    /// OpenCode's events, each `{"type", "properties"}`.
    pub events: Vec<Value>,
    /// The session the event is about.
    pub session: Option<SessionId>,
    /// The reply it completes, if it is a completion.
    pub completed: Option<MessageId>,
}

impl Translator {
    /// OpenCode's events for one of ours (`frame` is `{"type", "properties"}`); `directory` is
    /// the workspace's, as OpenCode's paths are.
    pub fn translate(&mut self, frame: &str, directory: &str) -> Translated {
        if let Ok(event) = serde_json::from_str::<SessionEvent>(frame) {
            let session = Some(event.session_id().clone());
            let mut completed = None;
            if let SessionEvent::MessageCompleted { message, .. } = &event {
                // Whatever a superseded worker still publishes for it is not passed on.
                let done = Attempt { number: u32::MAX, parts: Vec::new() };
                self.replies.insert(message.id.clone(), done);
                completed = Some(message.id.clone());
            }
            if let SessionEvent::Prompted { session_id, message, .. } = &event {
                if self.models.len() >= REMEMBERED {
                    self.models.clear();
                }
                self.models.insert(session_id.clone(), message.model.clone());
            }
            let events = session_event(event, directory);
            return Translated { events, session, completed };
        }
        if let Ok(event) = serde_json::from_str::<LiveEvent>(frame) {
            let mut events = Vec::new();
            let session = Some(event.session_id().clone());
            if self.follow(&event, &mut events) {
                events.extend(live_event(event, directory, &self.models));
            }
            return Translated { events, session, completed: None };
        }
        Translated::default()
    }

    /// Whether `live` belongs to the newest attempt of its reply; a newer attempt's start
    /// removes the earlier attempt's parts (into `out`).
    fn follow(&mut self, live: &LiveEvent, out: &mut Vec<Value>) -> bool {
        let (session, message, attempt, part) = match live {
            LiveEvent::MessageStarted { session_id, message_id, attempt, part_id, .. } => {
                (session_id, message_id, *attempt, Some(part_id))
            }
            LiveEvent::PartUpdated { session_id, message_id, attempt, part, .. } => {
                (session_id, message_id, *attempt, Some(part.id()))
            }
            LiveEvent::PartDelta { session_id, message_id, attempt, .. } => {
                (session_id, message_id, *attempt, None)
            }
        };
        if self.replies.len() >= REMEMBERED && !self.replies.contains_key(message) {
            self.replies.clear();
        }
        let current = self
            .replies
            .entry(message.clone())
            .or_insert_with(|| Attempt { number: attempt, parts: Vec::new() });
        if attempt < current.number {
            return false;
        }
        if attempt > current.number {
            for old in current.parts.drain(..) {
                out.push(event(
                    "message.part.removed",
                    json!({ "sessionID": session, "messageID": message, "partID": old }),
                ));
            }
            current.number = attempt;
        }
        current.parts.extend(part.cloned());
        true
    }
}

fn event(kind: &str, properties: Value) -> Value {
    json!({ "type": kind, "properties": properties })
}

/// The fields OpenCode's assistant message has that ours does not: one agent, the workspace as
/// its path, zero cost and tokens until the reply completes.
fn assistant_defaults(directory: &str) -> Value {
    json!({
        "role": "assistant", "agent": "build", "mode": "build",
        "path": { "cwd": directory, "root": directory },
        "cost": 0, "tokens": { "input": 0, "output": 0, "reasoning": 0, "cache": { "read": 0, "write": 0 } },
    })
}

fn merged(mut base: Value, over: Value) -> Value {
    if let (Some(b), Value::Object(o)) = (base.as_object_mut(), over) {
        b.extend(o);
    }
    base
}

/// A part of ours with what OpenCode's carries besides: its session, and its times (a user's
/// parts have none: `opencode run` prints the parts that have ended).
fn part(part: &schemas::message::Part, session: &str, time: Option<Value>) -> Value {
    let mut p = serde_json::to_value(part).unwrap_or(Value::Null);
    if let Some(o) = p.as_object_mut() {
        o.insert("sessionID".into(), json!(session));
        if let Some(time) = time {
            o.insert("time".into(), time);
        }
    }
    p
}

fn session_event(e: SessionEvent, directory: &str) -> Vec<Value> {
    match e {
        SessionEvent::Created { session_id, title, time, created_by, .. } => vec![event(
            "session.created",
            json!({ "info": { "id": session_id, "slug": session_id, "title": title, "directory": directory,
                    "version": env!("CARGO_PKG_VERSION"), "createdBy": created_by,
                    "time": { "created": time, "updated": time } } }),
        )],
        SessionEvent::Prompted { session_id, message, .. } => {
            let info = json!({ "id": message.id, "sessionID": session_id, "role": "user",
                "time": { "created": message.time }, "agent": "build", "model": message.model });
            let mut out =
                vec![event("message.updated", json!({ "sessionID": session_id, "info": info }))];
            for p in &message.parts {
                let part = part(p, session_id.as_str(), None);
                out.push(event(
                    "message.part.updated",
                    json!({ "sessionID": session_id, "part": part }),
                ));
            }
            out
        }
        SessionEvent::StatusChanged { session_id, status } => {
            let idle = matches!(status, schemas::message::SessionStatus::Idle);
            let mut out =
                vec![event("session.status", json!({ "sessionID": session_id, "status": status }))];
            if idle {
                out.push(event("session.idle", json!({ "sessionID": session_id })));
            }
            out
        }
        SessionEvent::MessageCompleted { session_id, message } => {
            let info = MessageInfo::of_completion(&session_id, &message).for_opencode(directory);
            let info = merged(assistant_defaults(directory), json!(info));
            let mut out =
                vec![event("message.updated", json!({ "sessionID": session_id, "info": info }))];
            let time = json!({ "start": message.time, "end": message.time });
            for p in &message.parts {
                let part = part(p, session_id.as_str(), Some(time.clone()));
                out.push(event(
                    "message.part.updated",
                    json!({ "sessionID": session_id, "part": part }),
                ));
            }
            if let Some(error) = &message.error {
                out.push(event(
                    "session.error",
                    json!({ "sessionID": session_id, "error": error }),
                ));
            }
            out
        }
        _ => Vec::new(),
    }
}

fn live_event(e: LiveEvent, directory: &str, models: &HashMap<SessionId, ModelRef>) -> Vec<Value> {
    match e {
        LiveEvent::MessageStarted { session_id, message_id, part_id, time, attempt } => {
            let model = models.get(&session_id);
            let created = schemas::read::reply_created(&message_id);
            let info = merged(
                assistant_defaults(directory),
                json!({ "id": message_id, "sessionID": session_id, "time": { "created": created },
                        "attempt": attempt, "providerID": model.map(|m| &m.provider_id),
                        "modelID": model.map(|m| &m.model_id) }),
            );
            // The text part the deltas go to, empty until they come.
            let text = json!({ "id": part_id, "messageID": message_id, "sessionID": session_id,
                               "type": "text", "text": "", "time": { "start": time } });
            vec![
                event("message.updated", json!({ "sessionID": session_id, "info": info })),
                event("message.part.updated", json!({ "sessionID": session_id, "part": text })),
            ]
        }
        LiveEvent::PartUpdated { session_id, part: p, .. } => {
            let part = part(&p, session_id.as_str(), Some(json!({ "start": schemas::now_ms() })));
            vec![event("message.part.updated", json!({ "sessionID": session_id, "part": part }))]
        }
        delta @ LiveEvent::PartDelta { .. } => {
            // Already OpenCode's shape (with our `attempt` besides).
            serde_json::to_value(delta).into_iter().collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_idle_session_is_also_opencodes_session_idle_and_the_rest_is_not_sent() {
        let session = schemas::ids::SessionId::new();
        let frame = json!({ "type": "session.status",
            "properties": { "sessionID": session, "status": { "type": "idle" } } });
        let mut translator = Translator::default();
        let out = translator.translate(&frame.to_string(), "/wrk_1").events;
        let kinds: Vec<&str> = out.iter().map(|e| e["type"].as_str().unwrap()).collect();
        assert_eq!(kinds, ["session.status", "session.idle"]);
        assert!(
            translator.translate("{\"type\":\"organization.renamed\"}", "/w").events.is_empty()
        );
    }

    #[test]
    fn a_new_attempt_removes_the_earlier_ones_parts_and_silences_it() {
        let (session, message) = (SessionId::new(), MessageId::new());
        let (first, second) = (PartId::new(), PartId::new());
        let started = |part: &PartId, attempt| {
            json!({ "type": "message.started", "properties": { "sessionID": session,
                "messageID": message, "partID": part, "attempt": attempt, "time": 1 } })
            .to_string()
        };
        let delta = |part: &PartId, attempt| {
            json!({ "type": "message.part.delta", "properties": { "sessionID": session,
                "messageID": message, "partID": part, "field": "text", "delta": "x",
                "attempt": attempt } })
            .to_string()
        };
        let kinds = |out: Translated| -> Vec<String> {
            out.events.iter().map(|e| e["type"].as_str().unwrap().to_owned()).collect()
        };
        let mut translator = Translator::default();
        assert_eq!(kinds(translator.translate(&started(&first, 1), "/w")).len(), 2);
        assert_eq!(kinds(translator.translate(&delta(&first, 1), "/w")), ["message.part.delta"]);
        let out = translator.translate(&started(&second, 2), "/w");
        assert_eq!(out.events[0]["type"], "message.part.removed");
        assert_eq!(out.events[0]["properties"]["partID"], json!(first));
        assert_eq!(kinds(out)[1..], ["message.updated", "message.part.updated"]);
        assert!(
            translator.translate(&delta(&first, 1), "/w").events.is_empty(),
            "the old attempt is quiet"
        );
        assert_eq!(kinds(translator.translate(&delta(&second, 2), "/w")), ["message.part.delta"]);
    }
}
