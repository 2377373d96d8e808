//! Nothing one tenant sends can stop projection for the others: ids a client chooses are unique
//! per session and checked before they are stored, and an event that cannot be projected is
//! parked after a few attempts while everything else keeps flowing.

use e2e_tests::{System, eventually};
use schemas::ids::MessageId;
use serde_json::json;

use crate::WAIT;

fn prompt_with_id(id: &str, text: &str) -> serde_json::Value {
    json!({ "messageID": id, "parts": [{ "type": "text", "text": text }] })
}

#[tokio::test]
async fn a_reused_client_message_id_cannot_stall_projection_for_anyone() {
    let system = System::start().await;
    let alice = system.token("alice").await;
    let (org, ws, _) = system.session_for("alice").await;
    let reused = MessageId::new().to_string();

    // The same client-chosen id in many sessions: each session's own message, all projected.
    let mut prompted = Vec::new();
    for _ in 0..40 {
        let session = system.create_session(&alice, &ws.id).await;
        let path = format!("/session/{}/prompt_async", session.id);
        let a = system.post(&alice, &path, prompt_with_id(&reused, "hi [[fake tokens=1]]")).await;
        assert_eq!(a.status, 202, "{a:?}");
        assert_eq!(a.body["userMessageID"], reused.as_str());
        prompted.push((session.id, a.body["consistencyToken"].as_str().unwrap().to_owned()));
    }
    for (session, token) in &prompted {
        let a = system.get(&alice, &format!("/session/{session}/message"), Some(token)).await;
        assert_eq!(a.status, 200, "{session}'s prompt is projected: {a:?}");
        assert_eq!(a.body[0]["info"]["id"], reused.as_str());
    }

    // Within one session an id is used once, and only ids after the session's last are taken.
    let (session, _) = &prompted[0];
    let path = format!("/session/{session}/prompt_async");
    eventually("the first reply finished", WAIT, || async {
        let a = system.get(&alice, &format!("/session/{session}"), None).await;
        (a.body["status"]["type"] == "idle").then_some(())
    })
    .await;
    let again = system.post(&alice, &path, prompt_with_id(&reused, "again")).await;
    assert!(again.is_problem(409), "{again:?}");
    let future = "msg_7ZZZZZZZZZZZZZZZZZZZZZZZZZ";
    let ahead = system.post(&alice, &path, prompt_with_id(future, "from the future")).await;
    assert!(ahead.is_problem(400), "{ahead:?}");

    // Another organization, created afterwards, reads its own write at once.
    let bob = system.token("bob").await;
    let bobs = system.create_org(&bob, "Bob's").await;
    let a = system.get(&bob, "/org", Some(&bobs.token)).await;
    assert_eq!(a.status, 200, "{a:?}");
    let parked: i64 = system
        .db()
        .await
        .query_one("SELECT count(*) FROM parked_events", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(parked, 0, "nothing had to be parked");
    let _ = org;
}

#[tokio::test]
async fn an_event_that_cannot_be_projected_is_parked_and_everything_else_flows() {
    let system = System::start().await;
    let alice = system.token("alice").await;
    let (_, _, session) = system.session_for("alice").await;
    let db = system.db().await;
    // Make the session's next event one no projection understands (as a bug or a bad upcast
    // would), then a good one after it.
    db.execute(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata) \
         SELECT aggregate_type, aggregate_id, 2, 'session.unknown', '1.0', \
                '{\"type\": \"session.unknown\", \"properties\": {}}', metadata \
         FROM events WHERE aggregate_id = $1 AND sequence = 1",
        &[&session.id],
    )
    .await
    .unwrap();
    db.execute(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata) \
         SELECT aggregate_type, aggregate_id, 3, 'session.status', '1.0', \
                json_build_object('type', 'session.status', 'properties', \
                    json_build_object('sessionID', aggregate_id, 'status', json_build_object('type', 'busy'))), \
                metadata \
         FROM events WHERE aggregate_id = $1 AND sequence = 1",
        &[&session.id],
    )
    .await
    .unwrap();

    // Other tenants are not held up meanwhile.
    let bob = system.token("bob").await;
    let bobs = system.create_org(&bob, "Bob's").await;
    assert_eq!(system.get(&bob, "/org", Some(&bobs.token)).await.status, 200);

    // The bad event is parked where operators see it; the session's next event is projected.
    let reason: String = eventually("the event parked", WAIT, || async {
        let row = db
            .query_opt(
                "SELECT reason FROM parked_events WHERE stage = 'projector' AND event_id = $1",
                &[&format!("{}:2", session.id)],
            )
            .await
            .unwrap()?;
        Some(row.get(0))
    })
    .await;
    assert!(reason.contains("session.unknown"), "the reason says what failed: {reason}");
    let token = format!("{}.3", session.id);
    let a = system.get(&alice, &format!("/session/{}", session.id), Some(&token)).await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(a.body["status"]["type"], "busy", "the event after the parked one applied");

    // A rebuild skips it too, says so, and finishes.
    let stdout = system.rebuild().await;
    assert!(stdout.contains("parked 1"), "the rebuild reports what it parked: {stdout}");
    let a = system.get(&alice, &format!("/session/{}", session.id), None).await;
    assert_eq!(a.body["status"]["type"], "busy");
}
