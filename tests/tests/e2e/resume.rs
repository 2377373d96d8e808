//! SSE streams resume exactly where the client left off, on any query-service instance.

use std::collections::HashSet;

use e2e_tests::sse::{Event, SseClient, is_idle, reply_text};
use e2e_tests::{System, SystemOptions, fake_text};

use crate::WAIT;

#[tokio::test]
async fn a_client_that_reconnects_to_another_instance_gets_exactly_what_it_missed() {
    let system =
        System::start_with(SystemOptions { query_instances: 2, ..Default::default() }).await;
    let alice = system.token("alice").await;
    let (_, _, session) = system.session_for("alice").await;
    let mut first = system.watch(&alice, &session).await;

    let accepted = system.prompt(&alice, &session.id, "[[fake tokens=60 delay_ms=15]]").await;
    let assistant = accepted["assistantMessageID"].as_str().unwrap();
    let mut seen = Vec::new();
    while seen.iter().filter(|e: &&Event| e.event == "message.part.delta").count() < 5 {
        seen.push(first.next(WAIT).await);
    }
    let last_id = seen.last().unwrap().id.clone();
    drop(first); // the connection drops mid-reply

    let mut second =
        SseClient::connect(&system.stream_url(1, &session), &alice, Some(&last_id)).await.unwrap();
    let rest = second.until(WAIT, is_idle).await;

    let all: Vec<Event> = seen.into_iter().chain(rest).collect();
    let ids: Vec<u64> = all.iter().map(Event::seq).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "in order, no duplicates: {ids:?}");
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), ids.len());
    assert_eq!(reply_text(&all, assistant), fake_text(60), "no delta lost or doubled");
    assert_eq!(all.iter().filter(|e| e.event == "message.completed").count(), 1);
}

#[tokio::test]
async fn a_client_that_missed_a_whole_reply_gets_all_of_it_on_reconnect() {
    let system = System::start().await;
    let alice = system.token("alice").await;
    let (_, _, session) = system.session_for("alice").await;
    let url = system.stream_url(0, &session);
    let mut live = SseClient::connect(&url, &alice, None).await.unwrap();
    let connected = live.next(WAIT).await;
    assert_eq!(connected.event, "server.connected");
    drop(live);

    let accepted = system.prompt(&alice, &session.id, "[[fake tokens=8]]").await;
    let assistant = accepted["assistantMessageID"].as_str().unwrap();
    // Watch the reply finish on a second connection, then catch up the first from its id.
    let mut watcher = SseClient::connect(&url, &alice, Some(&connected.id)).await.unwrap();
    let replayed = watcher.until(WAIT, is_idle).await;
    assert_eq!(replayed[0].event, "session.status");
    assert_eq!(replayed[1].event, "session.prompted");
    assert_eq!(reply_text(&replayed, assistant), fake_text(8));
    let mut again = SseClient::connect(&url, &alice, Some(&connected.id)).await.unwrap();
    let replayed_again = again.until(WAIT, is_idle).await;
    let ids = |v: &[Event]| v.iter().map(|e| e.id.clone()).collect::<Vec<_>>();
    assert_eq!(ids(&replayed), ids(&replayed_again), "replay is deterministic");
}

#[tokio::test]
async fn a_client_whose_missed_events_are_gone_is_told_to_reload() {
    let system = System::start().await;
    let alice = system.token("alice").await;
    let (_, _, session) = system.session_for("alice").await;
    let url = system.stream_url(0, &session);
    let mut live = SseClient::connect(&url, &alice, None).await.unwrap();
    let connected = live.next(WAIT).await;
    system.prompt(&alice, &session.id, "[[fake tokens=3]]").await;
    live.until(WAIT, is_idle).await;

    // Retention runs out: the stream no longer holds what the client missed.
    let js = async_nats::jetstream::new(system.nats().await);
    js.get_stream(schemas::subjects::STREAM).await.unwrap().purge().await.unwrap();

    let mut resumed = SseClient::connect(&url, &alice, Some(&connected.id)).await.unwrap();
    let first = resumed.next(WAIT).await;
    assert_eq!(first.event, "sync.reload");
    // And it goes on live from there.
    system.prompt(&alice, &session.id, "[[fake tokens=2]]").await;
    let after = resumed.until(WAIT, is_idle).await;
    assert!(after.iter().all(|e| e.seq() > first.seq()));
    assert!(after.iter().any(|e| e.event == "message.completed"));
}

/// An id past the stream's end is what a client holds when the NATS server it asked lags
/// behind the one it heard from (a leader being elected): the stream waits for it to catch up
/// rather than take the client's id backwards. Only an id that stays past the end (made up,
/// from another deployment) is told to reload.
#[tokio::test]
async fn an_id_past_the_streams_end_waits_for_the_stream_and_a_made_up_one_reloads() {
    let system = System::start().await;
    let alice = system.token("alice").await;
    let (_, _, session) = system.session_for("alice").await;
    let url = system.stream_url(0, &session);
    let mut live = SseClient::connect(&url, &alice, None).await.unwrap();
    system.prompt(&alice, &session.id, "[[fake tokens=3]]").await;
    let seen = live.until(WAIT, is_idle).await;
    let last = seen.last().unwrap().seq();

    // Two past the end: the next prompt's events reach it.
    let ahead = (last + 2).to_string();
    let mut resumed = SseClient::connect(&url, &alice, Some(&ahead)).await.unwrap();
    system.prompt(&alice, &session.id, "[[fake tokens=2]]").await;
    let after = resumed.until(WAIT, is_idle).await;
    assert!(after.iter().all(|e| e.event != "sync.reload"), "{after:?}");
    assert!(after.iter().all(|e| e.seq() > last + 2), "nothing at or before its id");
    assert!(after.iter().any(|e| e.event == "message.completed"));

    let mut made_up = SseClient::connect(&url, &alice, Some("999999999")).await.unwrap();
    assert_eq!(made_up.next(WAIT).await.event, "sync.reload");
}

#[tokio::test]
async fn a_malformed_last_event_id_is_a_bad_request() {
    let system = System::start().await;
    let alice = system.token("alice").await;
    let (_, _, session) = system.session_for("alice").await;
    let url = system.stream_url(0, &session);
    let Err((status, body)) = SseClient::connect(&url, &alice, Some("yesterday")).await else {
        panic!("a malformed Last-Event-ID must be refused");
    };
    assert_eq!(status, 400);
    assert_eq!(body["status"], 400);
}

#[tokio::test]
async fn the_stream_says_how_soon_to_reconnect_and_is_not_buffered() {
    let system = System::start().await;
    let alice = system.token("alice").await;
    let (_, _, session) = system.session_for("alice").await;
    let url = system.stream_url(0, &session);
    let mut res = system.http.get(&url).bearer_auth(&alice).send().await.unwrap();
    assert_eq!(res.headers()["cache-control"], "no-cache");
    let first = tokio::time::timeout(WAIT, res.chunk()).await.unwrap().unwrap().unwrap();
    let text = String::from_utf8_lossy(&first);
    assert!(text.starts_with("retry:"), "first bytes: {text}");
}

#[tokio::test]
async fn a_client_too_slow_to_keep_up_is_dropped_with_a_position_it_can_resume_from() {
    let system = System::start_with(SystemOptions {
        service_env: vec![("OC_SSE_SESSION_BUFFER", "16".into())],
        ..Default::default()
    })
    .await;
    let alice = system.token("alice").await;
    let (_, _, session) = system.session_for("alice").await;
    let mut slow = SseClient::connect_slow(&system.stream_url(0, &session), &alice).await;
    let mut watcher = system.watch(&alice, &session).await;
    // More than the way to one unread client can hold before the service's queues fill: the
    // socket's send buffer (it grows up to tcp_wmem's maximum, 4 MB by default), the client's
    // HTTP read buffer (~400 KB), and the frames the service queues (32 for the socket, 16 for
    // the session: a few replies' worth). Eight replies, 3.2 MB, were once all held without a
    // lag in CI; 19 are 7.6 MB, near the 8 MB of text one session may hold.
    let kernel = kernel_send_buffer_max();
    assert!(
        kernel <= 4 << 20,
        "a socket here may buffer {kernel} bytes, more than a session holds"
    );
    let word = "y".repeat(100);
    let prompt = format!("[[fake tokens=4000 text={word}]]");
    let mut replies = Vec::new();
    for _ in 0..19 {
        let accepted = system.prompt(&alice, &session.id, &prompt).await;
        replies.push(accepted["assistantMessageID"].as_str().unwrap().to_owned());
        watcher.until(WAIT, is_idle).await;
    }

    let events = slow.until(WAIT, |e| e.event == "server.lagged").await;
    assert!(slow.ends_within(WAIT).await, "the server closed the slow stream");
    let resume_from = events.last().unwrap().data["properties"]["lastEventID"].to_string();
    let mut again = SseClient::connect(&system.stream_url(0, &session), &alice, Some(&resume_from))
        .await
        .unwrap();
    let last = replies.last().unwrap().clone();
    let rest = again
        .until(WAIT, |e| {
            e.event == "message.completed" && e.data["properties"]["message"]["id"] == last
        })
        .await;
    let all: Vec<Event> =
        events.into_iter().filter(|e| e.event != "server.lagged").chain(rest).collect();
    let ids: Vec<u64> = all.iter().map(Event::seq).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "in order, no duplicates");
    for reply in &replies {
        assert_eq!(reply_text(&all, reply), word.repeat(4000), "nothing lost across the drop");
    }
}

/// The most the kernel lets one TCP socket's send buffer grow to (4 MB where it cannot be read).
fn kernel_send_buffer_max() -> usize {
    std::fs::read_to_string("/proc/sys/net/ipv4/tcp_wmem")
        .ok()
        .and_then(|s| s.split_whitespace().nth(2)?.parse().ok())
        .unwrap_or(4 << 20)
}
