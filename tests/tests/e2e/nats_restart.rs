//! A reply streaming while NATS restarts is ridden out: the worker sends each live event again
//! until NATS has stored it (once: same message id), the query service follows the stream again
//! from where it was, and what the client assembles from its stream equals the stored reply.

use e2e_tests::sse::{is_idle, reply_text};
use e2e_tests::{System, eventually, fake_text};

use crate::WAIT;

#[tokio::test]
async fn a_reply_streaming_through_a_nats_restart_completes_and_the_stream_carries_all_of_it() {
    let mut system = System::start().await;
    let alice = system.token("alice").await;
    let (_, _, session) = system.session_for("alice").await;
    let mut stream = system.watch(&alice, &session).await;
    // About three seconds of streaming.
    let accepted = system.prompt(&alice, &session.id, "[[fake tokens=60 delay_ms=50]]").await;
    let assistant = accepted["assistantMessageID"].as_str().unwrap().to_owned();
    let before = stream.until(WAIT, |e| e.event == "message.part.delta").await;

    // NATS dies mid-reply, stays down until the worker has failed to publish (its publish timed
    // out), and comes back on the same storage.
    system.nats.kill();
    let metrics = format!("{}/metrics", system.workers[0].ops_url);
    eventually("a live event to fail to publish", WAIT, || async {
        let text = system.http.get(&metrics).send().await.ok()?.text().await.ok()?;
        text.lines().any(|l| l.starts_with("live_publish_failures_total")).then_some(())
    })
    .await;
    system.restart_nats();

    let after = stream.until(WAIT, is_idle).await;
    let events: Vec<_> = before.into_iter().chain(after).collect();
    let ids: Vec<u64> = events.iter().map(|e| e.seq()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "in order, none twice: {ids:?}");
    assert_eq!(reply_text(&events, &assistant), fake_text(60), "what the client assembled");

    let completed = events.iter().find(|e| e.event == "message.completed").expect("completed");
    let message = &completed.data["properties"]["message"];
    assert_eq!(message["finish"], "stop", "{message}");
    assert_eq!(message["parts"][0]["text"], fake_text(60), "what was stored");
}
