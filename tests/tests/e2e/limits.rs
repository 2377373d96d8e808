//! Work per request is bounded: a session has a documented size, a prompt sends only the newest
//! history that fits, and an event the bus cannot carry is parked instead of stalling the outbox.

use e2e_tests::sse::is_idle;
use e2e_tests::{System, SystemOptions, eventually};
use schemas::api::MAX_SESSION_BYTES;
use serde_json::json;

use crate::WAIT;

#[tokio::test]
async fn a_session_stops_taking_prompts_at_its_documented_size() {
    let system = System::start().await;
    let alice = system.token("alice").await;
    let (_, ws, session) = system.session_for("alice").await;
    let mut stream = system.watch(&alice, &session).await;
    let path = format!("/session/{}/prompt_async", session.id);
    // Prompts near the body limit, each answered with one token.
    let big = format!("{} [[fake tokens=1]]", "x".repeat(250 * 1024));
    let most = (MAX_SESSION_BYTES / big.len() as u64) as usize;
    for _ in 0..most {
        let a =
            system.post(&alice, &path, json!({ "parts": [{ "type": "text", "text": big }] })).await;
        assert_eq!(a.status, 202, "{a:?}");
        stream.until(WAIT, is_idle).await;
    }
    let full =
        system.post(&alice, &path, json!({ "parts": [{ "type": "text", "text": big }] })).await;
    assert!(full.is_problem(413), "{full:?}");
    assert!(full.body["detail"].as_str().unwrap().contains("new session"), "{full:?}");
    // A new session takes prompts again.
    let fresh = system.create_session(&alice, &ws.id).await;
    system.prompt(&alice, &fresh.id, "hi [[fake tokens=1]]").await;
}

#[tokio::test]
async fn a_prompt_sends_only_the_newest_history_that_fits() {
    let system = System::start_with(SystemOptions {
        worker_env: vec![("OC_WORKER_CONTEXT_BYTES", "3000".into())],
        ..Default::default()
    })
    .await;
    let alice = system.token("alice").await;
    let (_, _, session) = system.session_for("alice").await;
    let mut stream = system.watch(&alice, &session).await;
    // Thirty prompts of a hundred words each: 3,000 words of history by the end.
    let words = "w ".repeat(100);
    for _ in 0..30 {
        system.prompt(&alice, &session.id, &format!("{words}[[fake tokens=1]]")).await;
        stream.until(WAIT, is_idle).await;
    }
    let path = format!("/session/{}/message", session.id);
    // (the stream can say idle before the read models show the last completion: count the
    // replies that have finished, whose token counts are final)
    let inputs: Vec<u64> = eventually("every reply projected", WAIT, || async {
        let a = system.get(&alice, &format!("{path}?limit=100"), None).await;
        let items = a.body.as_array()?.clone();
        let finished = items.iter().filter(|m| m["info"]["finish"].is_string());
        let inputs: Vec<u64> =
            finished.filter_map(|m| m["info"]["tokens"]["input"].as_u64()).collect();
        (inputs.len() == 30).then_some(inputs)
    })
    .await;
    // The fake provider counts the words it was sent: history grows at first, then stays
    // within the budget (3,000 bytes is about 1,500 words) however long the session gets.
    assert!(inputs[1] > inputs[0], "history is sent: {inputs:?}");
    let last = *inputs.last().unwrap();
    assert!(last >= 200, "the previous turn is still sent: {inputs:?}");
    assert!(last <= 1_700, "old turns are left out: {inputs:?}");
}

#[tokio::test]
async fn an_event_too_large_for_the_bus_is_parked_and_the_outbox_moves_on() {
    let system = System::start().await;
    let (_, _, session) = system.session_for("alice").await;
    // An event as no command would write it any more (the command side refuses events this
    // large): 2 MB, over NATS' 1 MiB payload limit.
    let db = system.db().await;
    db.execute(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata) \
         SELECT aggregate_type, aggregate_id, 2, 'session.status', '1.0', \
                json_build_object('type', 'session.status', 'properties', \
                    json_build_object('sessionID', aggregate_id, 'status', json_build_object('type', 'busy'), \
                                      'padding', repeat('x', 2000000))), \
                metadata \
         FROM events WHERE aggregate_id = $1 AND sequence = 1",
        &[&session.id],
    )
    .await
    .unwrap();
    eventually("the event parked by the relay", WAIT, || async {
        let row = db
            .query_opt(
                "SELECT 1 FROM parked_events WHERE stage = 'relay' AND event_id = $1",
                &[&format!("{}:2", session.id)],
            )
            .await
            .unwrap();
        row.map(drop)
    })
    .await;
    // Events behind it are published and projected as usual.
    let bob = system.token("bob").await;
    let bobs = system.create_org(&bob, "Bob's").await;
    assert_eq!(system.get(&bob, "/org", Some(&bobs.token)).await.status, 200);
    let left: i64 = db.query_one("SELECT count(*) FROM outbox", &[]).await.unwrap().get(0);
    assert_eq!(left, 0, "the outbox drained");
}
