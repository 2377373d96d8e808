//! Where configured (`OC_HTTP2_CLEARTEXT`), the API services also speak cleartext HTTP/2 with
//! prior knowledge, beside HTTP/1.1 on the same port: a front that multiplexes upstream carries
//! prompts and many event streams over one connection each, and a stream it cancels gives its
//! place back. Unconfigured, they speak HTTP/1.1 only.

use e2e_tests::http2::Http2;
use e2e_tests::sse::{SseClient, is_idle, reply_text};
use e2e_tests::{System, SystemOptions, eventually, fake_text};
use serde_json::json;

use crate::WAIT;

fn stream_path(session: &e2e_tests::api::Created) -> String {
    format!("/session/{}/event?consistency={}", session.id, session.token)
}

/// The services' settings for a front that speaks HTTP/2 to them, with `env` besides.
fn behind_an_http2_front(worker: bool, env: &[(&'static str, &str)]) -> SystemOptions {
    let mut service_env = vec![("OC_HTTP2_CLEARTEXT", "true".to_owned())];
    service_env.extend(env.iter().map(|(k, v)| (*k, v.to_string())));
    SystemOptions { worker, service_env, ..Default::default() }
}

#[tokio::test]
async fn http2_is_not_spoken_unless_configured() {
    let system = System::start_with(SystemOptions { worker: false, ..Default::default() }).await;
    assert!(Http2::connect(&system.query[0].url).await.is_none(), "query service");
    assert!(Http2::connect(system.command_url()).await.is_none(), "command service");
    // HTTP/1.1 is served as ever.
    let alice = system.token("alice").await;
    let (_, _, session) = system.session_for("alice").await;
    system.watch(&alice, &session).await;
}

#[tokio::test]
async fn prompts_and_streams_share_one_http2_connection_per_service() {
    let system = System::start_with(behind_an_http2_front(true, &[])).await;
    let alice = system.token("alice").await;
    let (_, ws, first) = system.session_for("alice").await;
    let mut sessions = vec![first];
    for _ in 0..2 {
        sessions.push(system.create_session(&alice, &ws.id).await);
    }
    let query = Http2::connect(&system.query[0].url).await.expect("the query service speaks h2c");
    let command = Http2::connect(system.command_url()).await.expect("the command service too");

    // Two streams on each session, all six on the one connection, and one more over HTTP/1.1
    // on the same port.
    let mut streams = Vec::new();
    for (n, session) in sessions.iter().enumerate() {
        for _ in 0..2 {
            let stream = query.stream(&stream_path(session), &alice).await.expect("it opens");
            streams.push((n, stream));
        }
    }
    let url = system.stream_url(0, &sessions[0]);
    streams.push((0, SseClient::connect(&url, &alice, None).await.expect("HTTP/1.1 still")));
    for (_, stream) in &mut streams {
        assert_eq!(stream.next(WAIT).await.event, "server.connected");
    }

    // Each session's reply has its own length, so a stream given another session's is noticed.
    let (mut replies, mut tokens) = (Vec::new(), Vec::new());
    for (n, session) in sessions.iter().enumerate() {
        let text = format!("hello [[fake tokens={}]]", 5 + n);
        let body = json!({ "parts": [{ "type": "text", "text": text }] });
        let path = format!("/session/{}/prompt_async", session.id);
        let (status, accepted) = command.send("POST", &path, &alice, Some(&body)).await;
        assert_eq!(status, 202, "{accepted}");
        replies.push(accepted["assistantMessageID"].as_str().unwrap().to_owned());
        tokens.push(accepted["consistencyToken"].as_str().unwrap().to_owned());
    }
    for (n, stream) in &mut streams {
        let events = stream.until(WAIT, is_idle).await;
        assert_eq!(reply_text(&events, &replies[*n]), fake_text(5 + *n), "session {n}");
    }

    // Reads answer over it as well, as of the prompt's consistency token.
    let path = format!("/session/{}/message", sessions[2].id);
    let (status, messages) = query.get(&path, &alice, &tokens[2]).await;
    assert_eq!(status, 200, "{messages}");
    assert_eq!(messages[0]["parts"][0]["text"], "hello [[fake tokens=7]]");
}

#[tokio::test]
async fn a_stream_cancelled_over_http2_gives_its_place_back() {
    let system = System::start_with(behind_an_http2_front(
        false,
        &[("OC_SSE_STREAMS_PER_USER", "2"), ("OC_SSE_KEEP_ALIVE_SECS", "1")],
    ))
    .await;
    let alice = system.token("alice").await;
    let (_, _, session) = system.session_for("alice").await;
    let query = Http2::connect(&system.query[0].url).await.expect("h2c");
    let path = stream_path(&session);
    let first = query.stream(&path, &alice).await.expect("the first stream opens");
    let _second = query.stream(&path, &alice).await.expect("the second stream opens");
    let Err((status, problem)) = query.stream(&path, &alice).await else {
        panic!("a third stream opened on the same connection");
    };
    assert_eq!((status, &problem["type"]), (429, &json!("urn:oc:problem:concurrent-streams")));

    // Dropping a response resets its stream (RST_STREAM); the connection stays open, and the
    // place is free again on it.
    drop(first);
    eventually("a place freed", WAIT, || async { query.stream(&path, &alice).await.ok() }).await;
}
