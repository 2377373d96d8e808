//! Both wire formats end to end: OpenAI chat completions and Anthropic Messages stream text and
//! reasoning (a part of its own) to clients and into the read model, with their usage; their
//! faults end replies with classified errors; failures before the first byte are retried.

use e2e_tests::api::Created;
use e2e_tests::sse::{Event, is_idle, part_text, reply_text};
use e2e_tests::{System, eventually};
use serde_json::{Value, json};

use crate::WAIT;

/// An organization with one connection of each kind, both at the fake provider.
async fn setup(system: &System) -> (String, Created) {
    let alice = system.token("alice").await;
    let (org, _, session) = system.session_for("alice").await;
    for (kind, provider) in [("openai-compatible", "oa"), ("anthropic", "an")] {
        let body = json!({
            "kind": kind, "providerID": provider, "name": provider,
            "baseURL": format!("{}/v1", system.provider_url), "apiKey": format!("key-{provider}"),
            "models": ["m"],
        });
        let a = system.post(&alice, &format!("/org/{}/provider", org.id), body).await;
        assert_eq!(a.status, 201, "{a:?}");
    }
    (alice, session)
}

async fn ask(
    system: &System,
    alice: &str,
    session: &Created,
    provider: &str,
    text: &str,
) -> (Vec<Event>, Value) {
    let mut stream = system.watch(alice, session).await;
    let body = json!({ "model": { "providerID": provider, "modelID": "m" }, "parts": [{ "type": "text", "text": text }] });
    let a = system.post(alice, &format!("/session/{}/prompt_async", session.id), body).await;
    assert_eq!(a.status, 202, "{a:?}");
    let events = stream.until(WAIT, is_idle).await;
    let done = events.iter().find(|e| e.event == "message.completed").expect("a completion");
    let message = done.data["properties"]["message"].clone();
    (events, message)
}

#[tokio::test]
async fn both_providers_stream_text_and_reasoning_with_their_usage() {
    let system = System::start().await;
    let (alice, session) = setup(&system).await;
    for provider in ["oa", "an"] {
        let (events, message) = ask(
            &system,
            &alice,
            &session,
            provider,
            "think [[fake tokens=3 reasoning=2 cached=4 created=1]]",
        )
        .await;
        assert_eq!(message["finish"], "stop", "{provider}: {message}");
        let id = message["id"].as_str().unwrap();
        // The reasoning part is announced, then streamed apart from the text.
        let announced =
            events.iter().find(|e| e.event == "message.part.updated").expect("a reasoning part");
        let part = &announced.data["properties"]["part"];
        assert_eq!(part["type"], "reasoning");
        assert_eq!(part_text(&events, part["id"].as_str().unwrap()), "r0 r1 ", "{provider}");
        assert_eq!(reply_text(&events, id), "t0 t1 t2 ", "{provider}");
        // The completed message holds both parts, reasoning first.
        assert_eq!(message["parts"][0]["type"], "reasoning");
        assert_eq!(message["parts"][0]["text"], "r0 r1 ");
        assert_eq!(message["parts"][1]["text"], "t0 t1 t2 ");
        let tokens = &message["tokens"];
        assert_eq!(
            (tokens["output"].as_u64(), tokens["cache"]["read"].as_u64()),
            (Some(5), Some(4)),
            "{provider}: {tokens}"
        );
        if provider == "oa" {
            assert_eq!(tokens["reasoning"], 2);
        } else {
            assert_eq!(tokens["cache"]["write"], 1, "Anthropic reports cache writes");
        }
        assert_eq!(message["model"]["providerID"], provider);
        // And so does the read model.
        let path = format!("/session/{}/message", session.id);
        eventually("the reply in the read model", WAIT, || async {
            let a = system.get(&alice, &path, None).await;
            let items = a.body.as_array()?.clone();
            let stored = items.iter().find(|m| m["info"]["id"] == id)?;
            (stored["parts"][0]["type"] == "reasoning" && stored["parts"][1]["text"] == "t0 t1 t2 ")
                .then_some(())
        })
        .await;
    }
    // What each provider was sent: its own authentication, the model, no reasoning back.
    let seen = system.provider_requests().await;
    let last = seen.last().unwrap();
    assert_eq!(last["headers"]["x-api-key"], "key-an");
    assert!(last["authorization"].is_null(), "Anthropic authenticates with x-api-key only");
}

#[tokio::test]
async fn provider_faults_end_replies_with_classified_errors_and_early_failures_are_retried() {
    let system = System::start().await;
    let (alice, session) = setup(&system).await;
    let cases = [
        ("an", "[[fake fault=overloaded]]", "provider_failed", Some(529)),
        ("an", "[[fake fault=nostop tokens=2]]", "stream_broken", None),
        ("oa", "[[fake fault=nostop tokens=2]]", "stream_broken", None),
        ("an", "[[fake fault=http401]]", "auth", Some(401)),
    ];
    for (provider, prompt, kind, status) in cases {
        let (_, message) = ask(&system, &alice, &session, provider, prompt).await;
        assert_eq!(message["finish"], "error", "{provider} {prompt}: {message}");
        assert_eq!(message["error"]["kind"], kind, "{provider} {prompt}: {message}");
        assert_eq!(
            message["error"]["statusCode"].as_u64().map(|s| s as u16),
            status,
            "{provider} {prompt}"
        );
    }
    // Two 503s before the stream starts are retried (retry-after: 0), and the reply completes.
    for provider in ["oa", "an"] {
        let prompt = format!("{provider} flaky [[fake fail_first=2 tokens=2]]");
        let (_, message) = ask(&system, &alice, &session, provider, &prompt).await;
        assert_eq!(message["finish"], "stop", "{provider}: {message}");
        let seen = system.provider_requests().await;
        let tries = seen.iter().filter(|r| r["prompt"] == prompt.as_str()).count();
        assert_eq!(tries, 3, "{provider}: two failures, then the answer");
    }
}
