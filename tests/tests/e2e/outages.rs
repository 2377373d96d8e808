//! Dependency outages give 503 and recover by themselves; shutdown finishes work in hand.

use std::process::Command;
use std::time::Duration;

use e2e_tests::process::{Proc, bin, free_port};
use e2e_tests::sse::SseClient;
use e2e_tests::{System, eventually, fake_text};
use futures::StreamExt;
use serde_json::json;

use crate::WAIT;

async fn status(system: &System, url: &str) -> u16 {
    match system.http.get(url).timeout(Duration::from_secs(5)).send().await {
        Ok(r) => r.status().as_u16(),
        Err(_) => 0,
    }
}

#[tokio::test]
async fn while_nats_is_down_writes_are_kept_and_everything_recovers_when_it_returns() {
    let mut system = System::start().await;
    let alice = system.token("alice").await;
    let (_, ws, _) = system.session_for("alice").await;

    system.nats.kill();
    let ready = format!("{}/readyz", system.query[0].ops_url);
    eventually("the query service to report not ready", WAIT, || async {
        (status(&system, &ready).await == 503).then_some(())
    })
    .await;
    let r = system.http.get(&ready).send().await.unwrap();
    assert!(r.headers().contains_key("retry-after"));
    // Writes still succeed: the events wait in the outbox. More of them than the NATS client
    // buffers while disconnected (2,048 messages): nothing a commit does waits for the bus.
    let many: Vec<_> = futures::stream::iter(0..2_100)
        .map(|_| system.create_session(&alice, &ws.id))
        .buffer_unordered(16)
        .collect()
        .await;
    let during = many.into_iter().last().expect("sessions written during the outage");

    system.restart_nats();
    for url in [&system.command[0].ops_url, &system.query[0].ops_url] {
        let ready = format!("{url}/readyz");
        eventually("readiness to return", WAIT, || async {
            (status(&system, &ready).await == 200).then_some(())
        })
        .await;
    }
    // The session written during the outage reaches the read models, and prompting works.
    let path = format!("/session/{}", during.id);
    eventually("the session written during the outage", WAIT, || async {
        (system.get(&alice, &path, Some(&during.token)).await.status == 200).then_some(())
    })
    .await;
    let url = format!("{}/session/{}/event", system.query_url(), during.id);
    let mut stream = SseClient::connect(&url, &alice, None).await.unwrap();
    let accepted = system.prompt(&alice, &during.id, "[[fake tokens=4]]").await;
    let events = stream.until(WAIT, |e| e.event == "message.completed").await;
    assert_eq!(
        e2e_tests::sse::reply_text(&events, accepted["assistantMessageID"].as_str().unwrap()),
        fake_text(4)
    );
}

#[tokio::test]
async fn an_unreachable_database_gives_503_with_retry_after_not_a_hang() {
    let system = System::start().await;
    let alice = system.token("alice").await;
    let (port, ops_port) = (free_port(), free_port());
    let mut cmd = Command::new(bin("command-service"));
    system.env(&mut cmd);
    cmd.env("OC_DATABASE_URL", format!("postgres://postgres@127.0.0.1:{}/nothing", free_port()))
        .env("OC_RUN_MIGRATIONS", "false")
        .env("OC_COMMAND_ADDR", format!("127.0.0.1:{port}"))
        .env("OC_COMMAND_OPS_ADDR", format!("127.0.0.1:{ops_port}"));
    let _service = Proc::spawn("command-service", cmd);
    let url = format!("http://127.0.0.1:{port}");
    let ops = format!("http://127.0.0.1:{ops_port}");
    system.wait_http(&format!("{ops}/healthz")).await;

    let r = system
        .http
        .post(format!("{url}/org"))
        .bearer_auth(&alice)
        .json(&json!({ "name": "Acme" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let ready = system.http.get(format!("{ops}/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    let body = ready.text().await.unwrap();
    assert!(!body.contains("nothing") && !body.contains("127.0.0.1"), "no error details: {body}");
}

#[tokio::test]
async fn a_worker_asked_to_stop_finishes_the_reply_in_hand() {
    let mut system = System::start().await;
    let alice = system.token("alice").await;
    let (_, _, session) = system.session_for("alice").await;
    let mut stream = system.watch(&alice, &session).await;
    system.prompt(&alice, &session.id, "[[fake tokens=20 delay_ms=40]]").await;
    stream.until(WAIT, |e| e.event == "message.part.delta").await;

    let exit = system.workers[0].proc.terminate();
    assert!(exit.success(), "clean exit: {exit:?}");
    let done = stream.until(WAIT, |e| e.event == "message.completed").await;
    let message = &done.last().unwrap().data["properties"]["message"];
    assert_eq!(message["finish"], "stop");
    assert_eq!(message["attempt"], 1, "finished by the same worker, not regenerated");
    assert_eq!(message["parts"][0]["text"], fake_text(20));
}
