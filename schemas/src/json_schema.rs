//! JSON Schemas of every bus message, generated from the Rust types. The files in
//! `schemas/json/` are checked in for outside consumers; the test below fails when they drift
//! (regenerate with `UPDATE_SCHEMAS=1 cargo test -p schemas`).

use schemars::{JsonSchema, schema_for};

use crate::api::{CommandReply, CompleteMessage, RetryReply};
use crate::envelope::Envelope;
use crate::events::{ApiKeyEvent, OrganizationEvent, SessionEvent, WorkspaceEvent};
use crate::live::LiveEvent;

/// File name and pretty-printed schema of every bus message.
pub fn all() -> Vec<(&'static str, String)> {
    fn render<T: JsonSchema>() -> String {
        let mut s = serde_json::to_string_pretty(&schema_for!(T)).expect("schemas serialise");
        s.push('\n');
        s
    }
    vec![
        ("organization-event.json", render::<Envelope<OrganizationEvent>>()),
        ("workspace-event.json", render::<Envelope<WorkspaceEvent>>()),
        ("session-event.json", render::<Envelope<SessionEvent>>()),
        ("live-event.json", render::<Envelope<LiveEvent>>()),
        ("api-key-event.json", render::<Envelope<ApiKeyEvent>>()),
        ("complete-message-command.json", render::<CompleteMessage>()),
        ("retry-reply-command.json", render::<RetryReply>()),
        ("command-reply.json", render::<CommandReply>()),
    ]
}

/// Compare a generated file with its checked-in copy under `schemas/<dir>/`, or rewrite the
/// copy when `UPDATE_SCHEMAS` is set: the drift check every published contract shares.
#[cfg(test)]
pub(crate) fn check_in(dir: &str, name: &str, generated: &str) {
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(dir);
    let path = dir.join(name);
    if std::env::var_os("UPDATE_SCHEMAS").is_some() {
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(&path, generated).unwrap();
        return;
    }
    let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        on_disk == generated,
        "{} is out of date: run `UPDATE_SCHEMAS=1 cargo test -p schemas`",
        path.display()
    );
}

#[cfg(test)]
mod tests {
    #[test]
    fn checked_in_schemas_match_the_types() {
        for (name, generated) in super::all() {
            super::check_in("json", name, &generated);
        }
    }
}
