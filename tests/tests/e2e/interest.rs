//! Each query instance follows only the sessions its own clients watch: its traffic from NATS
//! grows with what they watch, not with every tenant's replies. A session's feed is a
//! subscription to what the stream republishes; one that misses events follows a JetStream
//! consumer from the last event it delivered, and one that loses its consumer follows again from
//! there, so its clients get every event once, in order.

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

/// The names of the stream's consumers that are not a service's durable one: the query
/// instances' session feeds that follow a consumer.
async fn feed_consumers(events: &async_nats::jetstream::stream::Stream) -> Vec<String> {
    let names: Vec<String> = futures::StreamExt::collect::<Vec<_>>(events.consumer_names())
        .await
        .into_iter()
        .map(|name| name.unwrap())
        .collect();
    names.into_iter().filter(|n| !["llm-worker", "projector"].contains(&n.as_str())).collect()
}

#[tokio::test]
async fn a_feed_that_misses_events_or_loses_its_consumer_follows_again_from_where_it_was() {
    let system = System::start().await;
    let alice = system.token("alice").await;
    let (_, _, session) = system.session_for("alice").await;
    let mut stream = system.watch(&alice, &session).await;
    let accepted = system.prompt(&alice, &session.id, "[[fake tokens=160 delay_ms=50]]").await;
    let reply = accepted["assistantMessageID"].as_str().unwrap();
    let mut events = stream.until(WAIT, |e| e.event == "message.part.delta").await;
    let js = async_nats::jetstream::new(system.nats().await);
    let mut events_stream = js.get_stream(subjects::STREAM).await.unwrap();
    assert!(
        feed_consumers(&events_stream).await.is_empty(),
        "a feed served by the republished events has no consumer"
    );

    // Mid-reply, the stream stops republishing (as if a writer of an older version had set it
    // up): the feed hears nothing more, finds the stream has more, and follows a consumer.
    let mut config = events_stream.info().await.unwrap().config.clone();
    config.republish = None;
    js.update_stream(config).await.unwrap();
    let found = e2e_tests::within(WAIT, || async {
        Some(feed_consumers(&events_stream).await).filter(|c| !c.is_empty())
    });
    let consumers = found.await.expect("the feed follows a consumer");

    // Then every such consumer is deleted on the server.
    for name in consumers {
        events_stream.delete_consumer(&name).await.unwrap();
    }

    events.extend(stream.until(WAIT, is_idle).await);
    assert_eq!(reply_text(&events, reply), fake_text(160));
    let ids: Vec<u64> = events.iter().map(|e| e.seq()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "an event twice or out of order: {ids:?}");
}

/// A republished event can be lost between servers without the subscriber's connection
/// noticing. Each names its predecessor on the same subject: one whose predecessor the feed
/// never delivered shows the loss, and the feed follows the stream itself from what it
/// delivered. Here the "event" is made up, and claims a predecessor no one delivered: had the
/// feed taken it, its sequence (past everything) would have hidden the rest of the reply.
#[tokio::test]
async fn an_event_after_one_the_feed_never_saw_makes_it_follow_the_stream_itself() {
    let system = System::start().await;
    let alice = system.token("alice").await;
    let (_, _, session) = system.session_for("alice").await;
    let mut stream = system.watch(&alice, &session).await;
    let nats = system.nats().await;
    let mut republished = nats.subscribe(subjects::republished(">")).await.unwrap();
    let accepted = system.prompt(&alice, &session.id, "[[fake tokens=60 delay_ms=50]]").await;
    let reply = accepted["assistantMessageID"].as_str().unwrap();
    let mut events = stream.until(WAIT, |e| e.event == "message.part.delta").await;

    // A delta as republished, sent again past the end of the stream, its predecessor unseen.
    let delta = tokio::time::timeout(WAIT, async {
        loop {
            let msg = futures::StreamExt::next(&mut republished).await.expect("subscribed");
            if msg.subject.ends_with("message_part_delta") {
                break msg;
            }
        }
    });
    let delta = delta.await.expect("a republished delta");
    let mut headers = delta.headers.clone().unwrap_or_default();
    headers.insert(async_nats::header::NATS_SEQUENCE, "1000000000");
    headers.insert(async_nats::header::NATS_LAST_SEQUENCE, "999999999");
    nats.publish_with_headers(delta.subject.clone(), headers, delta.payload.clone()).await.unwrap();
    nats.flush().await.unwrap();

    events.extend(stream.until(WAIT, is_idle).await);
    assert_eq!(reply_text(&events, reply), fake_text(60));
    let ids: Vec<u64> = events.iter().map(|e| e.seq()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "an event twice or out of order: {ids:?}");
    let query = system.query[0].ops_url.clone();
    let gaps = system.metric(&query, "hub_republish_gaps_total").await;
    assert!(gaps.unwrap_or(0.0) >= 1.0, "the gap was seen");
}
