//! Each query instance follows only the sessions its own clients watch: its traffic from NATS
//! grows with what they watch, not with every tenant's replies. And a session's feed that loses
//! its JetStream consumer follows again from the last event it delivered, so its clients get
//! every event once, in order.

use e2e_tests::sse::{SseClient, is_idle, reply_text};
use e2e_tests::{System, SystemOptions, eventually, fake_text};
use schemas::subjects;

use crate::WAIT;

async fn open(
    system: &System,
    instance: usize,
    bearer: &str,
    session: &e2e_tests::api::Created,
) -> SseClient {
    let url = system.stream_url(instance, session);
    let mut stream = SseClient::connect(&url, bearer, None).await.expect("the stream opens");
    assert_eq!(stream.next(WAIT).await.event, "server.connected");
    stream
}

#[tokio::test]
async fn a_query_instance_receives_only_the_sessions_its_clients_watch() {
    let system = System::start_with(SystemOptions {
        query_instances: 2,
        // every token its own event
        worker_env: vec![("OC_DELTA_COALESCE_MS", "0".into())],
        ..Default::default()
    })
    .await;
    let alice = system.token("alice").await;
    let org = system.create_org(&alice, "Interest").await;
    let ws = system.create_workspace(&alice, &org.id, "w").await;
    let (a, b) =
        (system.create_session(&alice, &ws.id).await, system.create_session(&alice, &ws.id).await);
    // Session a is watched on the first instance, b on the second.
    let mut watch_a = open(&system, 0, &alice, &a).await;
    let mut watch_b = open(&system, 1, &alice, &b).await;
    let first = system.query[0].ops_url.clone();
    let received = || async { system.metric(&first, "nats_received_messages_total").await };
    let before = eventually("the first instance's traffic counter", WAIT, &received).await;

    // A long reply in b, then a short one in a.
    system.prompt(&alice, &b.id, "[[fake tokens=200 delay_ms=2]]").await;
    let b_events = watch_b.until(WAIT, is_idle).await;
    assert!(b_events.len() > 150, "{}", b_events.len());
    system.prompt(&alice, &a.id, "[[fake tokens=3]]").await;
    let a_events = watch_a.until(WAIT, is_idle).await;

    // The first instance received a's events (its counter catches up within a second), and
    // not b's.
    let after = eventually("the counter to include a's reply", WAIT, || async {
        received().await.filter(|n| *n >= before + a_events.len() as f64)
    })
    .await;
    let got = after - before;
    assert!(
        got < (a_events.len() + 50) as f64,
        "the first instance received {got} messages for a's {} events (b had {})",
        a_events.len(),
        b_events.len()
    );
}

#[tokio::test]
async fn a_feed_that_loses_its_consumer_follows_again_from_where_it_was() {
    let system = System::start().await;
    let alice = system.token("alice").await;
    let (_, _, session) = system.session_for("alice").await;
    let mut stream = system.watch(&alice, &session).await;
    let accepted = system.prompt(&alice, &session.id, "[[fake tokens=40 delay_ms=50]]").await;
    let reply = accepted["assistantMessageID"].as_str().unwrap();
    let mut events = stream.until(WAIT, |e| e.event == "message.part.delta").await;

    // Mid-reply, every consumer that is not a service's durable one (the query instance's
    // session feeds) is deleted on the server.
    let js = async_nats::jetstream::new(system.nats().await);
    let events_stream = js.get_stream(subjects::STREAM).await.unwrap();
    let mut names = std::pin::pin!(events_stream.consumer_names());
    let mut deleted = 0;
    while let Some(name) = futures::StreamExt::next(&mut names).await {
        let name = name.unwrap();
        if !["llm-worker", "projector"].contains(&name.as_str()) {
            events_stream.delete_consumer(&name).await.unwrap();
            deleted += 1;
        }
    }
    assert!(deleted >= 1, "the session's feed has a consumer");

    events.extend(stream.until(WAIT, is_idle).await);
    assert_eq!(reply_text(&events, reply), fake_text(40));
    let ids: Vec<u64> = events.iter().map(|e| e.seq()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "an event twice or out of order: {ids:?}");
}
