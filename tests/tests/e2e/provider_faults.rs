//! A failing provider ends the reply as an error the user can see, and frees the session.

use e2e_tests::sse::{Event, is_idle};
use e2e_tests::{System, SystemOptions};

use crate::WAIT;

async fn reply_to(system: &System, prompt: &str) -> Vec<Event> {
    let alice = system.token("alice").await;
    let (_, _, session) = system.session_for("alice").await;
    let mut stream = system.watch(&alice, &session).await;
    system.prompt(&alice, &session.id, prompt).await;
    stream.until(WAIT, is_idle).await
}

fn completed(events: &[Event]) -> &serde_json::Value {
    &events.iter().find(|e| e.event == "message.completed").expect("a completion").data["properties"]
        ["message"]
}

#[tokio::test]
async fn provider_errors_cuts_and_silence_end_the_reply_as_an_error() {
    let system = System::start_with(SystemOptions {
        worker_env: vec![
            ("OC_PROVIDER_FIRST_TOKEN_TIMEOUT_MS", "1000".into()),
            ("OC_PROVIDER_IDLE_TIMEOUT_MS", "1000".into()),
        ],
        ..Default::default()
    })
    .await;
    let cases = [
        ("[[fake fault=http500]]", "APIError", "HTTP 500"),
        ("[[fake fault=http401]]", "ProviderAuthError", "HTTP 401"),
        ("[[fake tokens=10 delay_ms=20 fault=cut:3]]", "APIError", "stream"),
        ("[[fake fault=hang]]", "APIError", "first token"),
        ("[[fake tokens=5 delay_ms=3000]]", "APIError", "idle"),
    ];
    for (prompt, name, says) in cases {
        let events = reply_to(&system, prompt).await;
        let message = completed(&events);
        assert_eq!(message["finish"], "error", "{prompt}");
        assert_eq!(message["error"]["name"], name, "{prompt}");
        let text = message["error"]["message"].as_str().unwrap();
        assert!(text.contains(says), "{prompt}: {text}");
    }

    // What the provider said stays in the worker's log: stored is a class, a status and the
    // provider's request id.
    let events = reply_to(&system, "[[fake fault=http401]]").await;
    let error = &completed(&events)["error"];
    assert_eq!(error["kind"], "auth");
    assert_eq!(error["statusCode"], 401);
    assert_eq!(error["requestID"], "req_fake401");
    let db = system.db().await;
    let leaks: i64 = db
        .query_one(
            "SELECT (SELECT count(*) FROM events WHERE payload::text ~* 'api key|sk-fa|10\\.0\\.0\\.7|fake failure|127\\.0\\.0\\.1') \
                  + (SELECT count(*) FROM rm_messages WHERE info::text ~* 'api key|sk-fa|10\\.0\\.0\\.7|fake failure|127\\.0\\.0\\.1')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(leaks, 0, "no provider text or internal address is stored");
}

#[tokio::test]
async fn an_unreachable_provider_is_reported_without_its_address() {
    let system = System::start_with(SystemOptions {
        worker_env: vec![("OC_PROVIDER_BASE_URL", "http://127.0.0.1:9/v1".into())],
        ..Default::default()
    })
    .await;
    let events = reply_to(&system, "hello").await;
    let error = &completed(&events)["error"];
    assert_eq!(error["kind"], "unreachable", "{error}");
    assert!(!error.to_string().contains("127.0.0.1"), "{error}");
}

#[tokio::test]
async fn a_reply_longer_than_the_limit_stops_with_finish_length() {
    let system = System::start_with(SystemOptions {
        worker_env: vec![("OC_MAX_REPLY_BYTES", "1000".into())],
        ..Default::default()
    })
    .await;
    let events = reply_to(&system, "[[fake tokens=100000]]").await;
    let message = completed(&events);
    assert_eq!(message["finish"], "length");
    let text = message["parts"][0]["text"].as_str().unwrap();
    assert_eq!(text, &e2e_tests::fake_text(100000)[..1000]);
}

#[tokio::test]
async fn a_reply_holding_the_nul_character_completes_and_frees_the_session() {
    // PostgreSQL's JSON cannot hold U+0000, so an event carrying it is refused; a model that
    // outputs it must not leave its reply unfinished and its session busy.
    let system = System::start().await;
    let alice = system.token("alice").await;
    let (_, _, session) = system.session_for("alice").await;
    let mut stream = system.watch(&alice, &session).await;
    let accepted = system.prompt(&alice, &session.id, "[[fake tokens=3 fault=nul]]").await;
    let assistant = accepted["assistantMessageID"].as_str().unwrap().to_owned();
    let events = stream.until(WAIT, is_idle).await;

    let message = completed(&events);
    assert_eq!(message["finish"], "stop");
    let shown = "\u{fffd}t0 \u{fffd}t1 \u{fffd}t2 ";
    assert_eq!(message["parts"][0]["text"], shown, "each U+0000 shown as U+FFFD");
    assert_eq!(e2e_tests::sse::reply_text(&events, &assistant), shown, "streamed as stored");
    // The session takes the next prompt.
    system.prompt(&alice, &session.id, "again [[fake tokens=2]]").await;
    stream.until(WAIT, is_idle).await;
}
