//! A signed-in user prompts and watches the reply stream; reads reflect it.

use e2e_tests::sse::{SseClient, is_idle, reply_text};
use e2e_tests::{System, eventually, fake_text};
use serde_json::json;

use crate::WAIT;

#[tokio::test]
async fn a_prompt_streams_its_reply_in_order_and_the_read_models_show_it() {
    // Arrange
    let system = System::start().await;
    let alice = system.token("alice").await;
    let (org, ws, session) = system.session_for("alice").await;
    let url = system.stream_url(0, &session);
    let mut stream = SseClient::connect(&url, &alice, None).await.expect("stream opens");
    let hello = stream.next(WAIT).await;
    assert_eq!(hello.event, "server.connected");

    // Act
    let accepted = system.prompt(&alice, &session.id, "hello [[fake tokens=12]]").await;
    let assistant = accepted["assistantMessageID"].as_str().unwrap();
    let events = stream.until(WAIT, is_idle).await;

    // Assert: the order a client relies on, ids strictly increasing.
    let kinds: Vec<&str> =
        events.iter().map(|e| e.event.as_str()).filter(|k| *k != "message.part.delta").collect();
    assert_eq!(
        kinds,
        [
            "session.status",
            "session.prompted",
            "message.started",
            "message.completed",
            "session.status"
        ]
    );
    assert!(events.windows(2).all(|w| w[0].seq() < w[1].seq()), "ids increase");
    let position = |kind: &str| events.iter().position(|e| e.event == kind);
    let first_delta = position("message.part.delta").expect("the reply streamed");
    assert!(position("message.started") < Some(first_delta), "the attempt is announced first");
    let streamed = reply_text(&events, assistant);
    assert_eq!(streamed, fake_text(12));
    let completed = events.iter().find(|e| e.event == "message.completed").unwrap();
    let message = &completed.data["properties"]["message"];
    assert_eq!(message["parts"][0]["text"], fake_text(12));
    assert_eq!(message["finish"], "stop");
    assert_eq!(message["tokens"]["output"], 12);
    assert!(message["tokens"]["input"].as_u64().unwrap() > 0);

    // The read models, with read-your-writes from the prompt's token.
    let token = accepted["consistencyToken"].as_str().unwrap();
    let sessions =
        system.get(&alice, &format!("/workspace/{}/session", ws.id), Some(&session.token)).await;
    assert_eq!(sessions.status, 200);
    assert_eq!(sessions.body["items"][0]["id"], session.id);
    let messages =
        system.get(&alice, &format!("/session/{}/message", session.id), Some(token)).await;
    assert_eq!(messages.body[0]["info"]["role"], "user");
    assert_eq!(messages.body[0]["parts"][0]["text"], "hello [[fake tokens=12]]");
    let path = format!("/session/{}/message", session.id);
    let reply = eventually("the reply in the read model", WAIT, || async {
        let a = system.get(&alice, &path, None).await;
        let info = &a.body[1]["info"];
        (info["finish"] == "stop").then(|| a.body[1].clone())
    })
    .await;
    assert_eq!(reply["info"]["id"], assistant);
    assert_eq!(reply["parts"][0]["text"], fake_text(12));
    assert_eq!(reply["info"]["tokens"]["output"], 12);
    let s = system.get(&alice, &format!("/session/{}", session.id), None).await;
    assert_eq!(s.body["status"]["type"], "idle");
    let orgs = system.get(&alice, "/org", Some(&org.token)).await;
    assert_eq!(orgs.body["items"][0]["role"], "owner");
}

#[tokio::test]
async fn a_follow_up_prompt_sends_the_conversation_so_far() {
    let system = System::start().await;
    let alice = system.token("alice").await;
    let (_, _, session) = system.session_for("alice").await;
    let mut stream = system.watch(&alice, &session).await;
    for prompt in ["first [[fake tokens=3]]", "second [[fake tokens=4]]"] {
        system.prompt(&alice, &session.id, prompt).await;
        let events = stream.until(WAIT, |e| e.event == "message.completed").await;
        let done = events.last().unwrap();
        assert_eq!(done.data["properties"]["message"]["finish"], "stop");
    }
    let path = format!("/session/{}/message", session.id);
    let all = eventually("four messages", WAIT, || async {
        let a = system.get(&alice, &path, None).await;
        let items = a.body.as_array().cloned().unwrap_or_default();
        (items.len() == 4 && items[3]["info"]["finish"] == "stop").then_some(items)
    })
    .await;
    // The second reply's input counted the whole history (user, assistant, user).
    let first_input = all[1]["info"]["tokens"]["input"].as_u64().unwrap();
    let second_input = all[3]["info"]["tokens"]["input"].as_u64().unwrap();
    assert!(second_input > first_input, "history was sent: {first_input} then {second_input}");
}

#[tokio::test]
async fn a_fast_reply_streams_its_first_token_alone_and_the_rest_in_fewer_frames() {
    let system = System::start().await;
    let alice = system.token("alice").await;
    let (_, _, session) = system.session_for("alice").await;
    let mut stream = system.watch(&alice, &session).await;

    // 60 tokens 2 ms apart: a fast model.
    let accepted = system.prompt(&alice, &session.id, "fast [[fake tokens=60 delay_ms=2]]").await;
    let assistant = accepted["assistantMessageID"].as_str().unwrap();
    let events = stream.until(WAIT, is_idle).await;

    let deltas: Vec<&str> = events
        .iter()
        .filter(|e| e.event == "message.part.delta")
        .filter_map(|e| e.data["properties"]["delta"].as_str())
        .collect();
    assert_eq!(deltas.first(), Some(&"t0 "), "the first token is not held back");
    assert!(deltas.len() <= 30, "tokens coalesced into fewer frames: {} frames", deltas.len());
    assert_eq!(reply_text(&events, assistant), fake_text(60), "no text lost or repeated");
}

#[tokio::test]
async fn aborting_stops_the_reply_promptly_and_ends_it_as_aborted() {
    let system = System::start().await;
    let alice = system.token("alice").await;
    let (_, _, session) = system.session_for("alice").await;
    let mut stream = system.watch(&alice, &session).await;
    let accepted =
        system.prompt(&alice, &session.id, "long [[fake tokens=100000 delay_ms=20]]").await;
    let assistant = accepted["assistantMessageID"].as_str().unwrap().to_owned();
    let mut events = stream.until(WAIT, |e| e.event == "message.part.delta").await;

    let a = system.post(&alice, &format!("/session/{}/abort", session.id), json!({})).await;
    assert_eq!(a.status, 202, "{a:?}");
    events.extend(stream.until(WAIT, |e| e.event == "message.completed").await);

    let message = &events.last().unwrap().data["properties"]["message"];
    assert_eq!(message["finish"], "aborted");
    assert_eq!(message["error"]["name"], "MessageAbortedError");
    let text = message["parts"][0]["text"].as_str().unwrap();
    assert!(!text.is_empty() && fake_text(100000).starts_with(text), "partial text kept");
    assert_eq!(reply_text(&events, &assistant), text, "streamed text matches the final text");
    // The session accepts a new prompt afterwards.
    stream.until(WAIT, |e| e.event == "session.status").await;
    system.prompt(&alice, &session.id, "again [[fake tokens=2]]").await;
}

#[tokio::test]
async fn a_request_id_follows_the_request_into_the_events() {
    let system = System::start().await;
    let alice = system.token("alice").await;
    let res = system
        .http
        .post(format!("{}/org", system.command_url()))
        .bearer_auth(&alice)
        .header("X-Request-Id", "trace-me-123")
        .json(&json!({ "name": "Acme" }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["x-request-id"], "trace-me-123");
    let id = res.json::<serde_json::Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    let rows = system
        .db()
        .await
        .query("SELECT metadata->>'correlation_id', metadata->>'actor' FROM events WHERE aggregate_id = $1", &[&id])
        .await
        .unwrap();
    assert!(!rows.is_empty());
    for row in rows {
        assert_eq!(row.get::<_, String>(0), "trace-me-123");
        assert!(row.get::<_, String>(1).starts_with("usr_"));
    }
    // Without one, the service makes one.
    let res = system
        .http
        .get(format!("{}/org", system.query_url()))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    assert!(res.headers()["x-request-id"].to_str().unwrap().starts_with("req_"));
}

#[tokio::test]
async fn every_service_reports_health_readiness_and_its_metrics() {
    let system = System::start().await;
    let alice = system.token("alice").await;
    let (_, _, session) = system.session_for("alice").await;
    let mut stream = system.watch(&alice, &session).await;
    system.prompt(&alice, &session.id, "[[fake tokens=3]]").await;
    stream.until(WAIT, |e| e.event == "message.completed").await;

    // Operations endpoints are not on the public API ports.
    for api in [system.command_url(), system.query_url()] {
        for probe in ["readyz", "metrics"] {
            let r = system.http.get(format!("{api}/{probe}")).send().await.unwrap();
            assert_eq!(r.status(), 404, "{api}/{probe}");
        }
    }
    let services = [
        (
            system.command.last().unwrap().ops_url.clone(),
            vec!["http_request_duration_seconds", "commands_total", "outbox_published_total"],
        ),
        (
            system.query[0].ops_url.clone(),
            vec!["http_request_duration_seconds", "sse_clients", "sse_events_sent_total"],
        ),
        (
            system.projector.as_ref().unwrap().url.clone(),
            vec!["events_projected_total", "projection_lag_seconds"],
        ),
        (
            system.workers[0].url.clone(),
            vec!["tokens_streamed_total", "provider_first_token_seconds", "generations_total"],
        ),
    ];
    for (base, series) in services {
        for probe in ["healthz", "readyz"] {
            let r = system.http.get(format!("{base}/{probe}")).send().await.unwrap();
            assert_eq!(r.status(), 200, "{base}/{probe}");
        }
        let text = eventually("metrics", WAIT, || async {
            let t =
                system.http.get(format!("{base}/metrics")).send().await.ok()?.text().await.ok()?;
            series.iter().all(|s| t.contains(s)).then_some(t)
        })
        .await;
        assert!(text.contains("service=\""), "{base}: labelled by service");
    }
}
