//! NATS subject names. Every subject carries the organization, so a consumer can take one
//! session, one workspace, one organization or everything with a wildcard:
//!
//! ```text
//! oc.evt.<org>.<workspace|_>.<session|_>.<event>   domain events (from the outbox relay)
//! oc.live.<org>.<workspace>.<session>.<event>      live events (from the LLM worker)
//! oc.cmd.<name>                                    internal commands (request/reply, not stored)
//! oc.feed.<stored subject>                         every stored event again, on core NATS
//! ```
//! `<event>` is the event type with dots replaced by underscores, so it is one token.

use crate::ids::{OrganizationId, SessionId, UserId, WorkspaceId};

/// The JetStream stream holding domain and live events.
pub const STREAM: &str = "OC_EVENTS";
/// Subjects the stream captures.
pub const STREAM_SUBJECTS: [&str; 2] = ["oc.evt.>", "oc.live.>"];
/// The JetStream stream keeping max-deliveries advisories of the LLM workers' prompt consumer
/// until a worker has ended the reply they are about.
pub const WORKER_ADVISORY_STREAM: &str = "OC_WORKER_ADVISORIES";
/// Where the stream republishes each event it stored, on core NATS (its subject appended), with
/// its stream sequence in the `Nats-Sequence` header: what query instances follow live, each
/// subscribed to its clients' sessions only, without a JetStream consumer per session.
pub const REPUBLISHED: &str = "oc.feed";
/// The republished subjects of the stored subjects `filter` selects.
pub fn republished(filter: &str) -> String {
    format!("{REPUBLISHED}.{filter}")
}
/// Every domain event.
pub const ALL_DOMAIN_EVENTS: &str = "oc.evt.>";
/// Every prompt, whatever the tenant: what LLM workers consume.
pub const ALL_PROMPTS: &str = "oc.evt.*.*.*.session_prompted";
/// Every abort request, which workers watch to stop a reply in progress.
pub const ALL_ABORTS: &str = "oc.evt.*.*.*.session_abort_requested";
/// Every reply taken over by a new attempt, which workers watch to stop an earlier one.
pub const ALL_RETRIES: &str = "oc.evt.*.*.*.message_retried";
/// Every completed reply of one session, whatever its organization and workspace (session ids are
/// unique): what a synchronous prompt waits on.
pub fn session_completions(session: &SessionId) -> String {
    format!("oc.evt.*.*.{session}.message_completed")
}
/// Core NATS (not stored): an OpenCode event stream has been sent one of the session's replies
/// (`live::StreamSaid::Sent`); what a synchronous prompt's answer waits for.
pub fn stream_receipts(session: &SessionId) -> String {
    format!("oc.sys.streamed.{session}")
}
/// Core NATS (not stored): one user's OpenCode event streams say they are open, or have ended
/// (`live::StreamSaid::Open`, `Closed`); a synchronous prompt's answer waits for those open.
pub fn user_streams(user: &UserId) -> String {
    format!("oc.sys.streams.{user}")
}
/// Core NATS (not stored): a synchronous prompt calls the roll of its user's OpenCode event
/// streams, each of which says again on `user_streams` that it is open.
pub fn user_streams_roll_call(user: &UserId) -> String {
    format!("oc.sys.roll_call.{user}")
}
/// Core NATS (not stored): the command service committed events; the outbox relay, on whichever
/// instance it runs, wakes up. (A PostgreSQL NOTIFY at every commit would serialise all commits
/// behind the one global lock PostgreSQL takes for NOTIFY at commit.)
pub const OUTBOX_WAKE: &str = "oc.sys.outbox";
/// Internal command: an LLM worker reports a finished reply.
pub const CMD_COMPLETE_MESSAGE: &str = "oc.cmd.complete_message";
/// Internal command: an LLM worker takes a reply over from an earlier attempt before it
/// regenerates it.
pub const CMD_RETRY_REPLY: &str = "oc.cmd.retry_reply";

/// `_` stands for "not scoped to this level" (an organization event has no workspace).
const NONE: &str = "_";

fn token(event_type: &str) -> String {
    event_type.replace('.', "_")
}

/// Where a domain event is published.
pub fn domain_event(
    org: &OrganizationId,
    workspace: Option<&WorkspaceId>,
    session: Option<&SessionId>,
    event_type: &str,
) -> String {
    format!(
        "oc.evt.{org}.{}.{}.{}",
        workspace.map_or(NONE, |w| w.as_str()),
        session.map_or(NONE, |s| s.as_str()),
        token(event_type)
    )
}

/// Where a live event is published.
pub fn live_event(
    org: &OrganizationId,
    workspace: &WorkspaceId,
    session: &SessionId,
    event_type: &str,
) -> String {
    format!("oc.live.{org}.{workspace}.{session}.{}", token(event_type))
}

/// Both filters that together select everything about one session.
pub fn session_filters(org: &OrganizationId, session: &SessionId) -> [String; 2] {
    session_filters_of(org.as_str(), session.as_str())
}

/// `session_filters`, from ids already checked.
pub fn session_filters_of(org: &str, session: &str) -> [String; 2] {
    [format!("oc.evt.{org}.*.{session}.>"), format!("oc.live.{org}.*.{session}.>")]
}

/// One filter selecting everything about one session in the stream (whose subjects are only
/// `oc.evt.>` and `oc.live.>`).
pub fn session_events(org: &str, session: &str) -> String {
    format!("oc.*.{org}.*.{session}.>")
}

/// The (organization, workspace, session) tokens of an event subject, `_` where not scoped.
pub fn scope_of(subject: &str) -> Option<(&str, &str, &str)> {
    let mut parts = subject.split('.');
    let (_oc, _kind) = (parts.next()?, parts.next()?);
    Some((parts.next()?, parts.next()?, parts.next()?))
}

/// The session a subject is about, if it is a session subject.
pub fn session_of(subject: &str) -> Option<&str> {
    let mut parts = subject.split('.');
    let (_oc, _kind, _org, _ws) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    parts.next().filter(|s| *s != NONE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_nest_by_tenant() {
        let (o, w, s) = (OrganizationId::new(), WorkspaceId::new(), SessionId::new());
        let subject = domain_event(&o, Some(&w), Some(&s), "session.prompted");
        assert_eq!(subject, format!("oc.evt.{o}.{w}.{s}.session_prompted"));
        assert_eq!(session_of(&subject), Some(s.as_str()));
        assert_eq!(scope_of(&subject), Some((o.as_str(), w.as_str(), s.as_str())));
        let org_subject = domain_event(&o, None, None, "organization.created");
        assert_eq!(session_of(&org_subject), None);
        assert_eq!(session_events(o.as_str(), s.as_str()), format!("oc.*.{o}.*.{s}.>"));
        assert_eq!(
            live_event(&o, &w, &s, "message.part.delta"),
            format!("oc.live.{o}.{w}.{s}.message_part_delta")
        );
    }
}
