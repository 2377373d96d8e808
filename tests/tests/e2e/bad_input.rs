//! Bad input gets a clear 4xx problem+json and writes nothing.

use e2e_tests::System;
use serde_json::json;

#[tokio::test]
async fn malformed_requests_are_refused_with_problems_and_write_nothing() {
    let system = System::start().await;
    let alice = system.token("alice").await;
    let (_, ws, session) = system.session_for("alice").await;
    let before = system.event_count().await;
    let prompt = format!("/session/{}/prompt_async", session.id);

    let cases: Vec<(&str, String, &str, Vec<u8>, u16)> = vec![
        ("malformed JSON", "/org".into(), "application/json", b"{\"name\": ".to_vec(), 400),
        (
            "unknown field",
            "/org".into(),
            "application/json",
            br#"{"name":"a","nmae":"b"}"#.to_vec(),
            400,
        ),
        ("wrong type", "/org".into(), "application/json", br#"{"name":5}"#.to_vec(), 400),
        ("empty name", "/org".into(), "application/json", br#"{"name":"  "}"#.to_vec(), 400),
        ("not JSON", "/org".into(), "text/plain", b"name=a".to_vec(), 415),
        (
            "oversize body",
            prompt.clone(),
            "application/json",
            serde_json::to_vec(
                &json!({ "parts": [{ "type": "text", "text": "x".repeat(300 * 1024) }] }),
            )
            .unwrap(),
            413,
        ),
        ("empty prompt", prompt.clone(), "application/json", br#"{"parts":[]}"#.to_vec(), 400),
        (
            "unknown part type",
            prompt.clone(),
            "application/json",
            br#"{"parts":[{"type":"tool","text":"x"}]}"#.to_vec(),
            400,
        ),
        (
            "bad session id",
            "/session/ses_nope/prompt_async".into(),
            "application/json",
            br#"{"parts":[{"type":"text","text":"x"}]}"#.to_vec(),
            400,
        ),
        (
            "wrong id kind",
            format!("/session/{}/prompt_async", ws.id),
            "application/json",
            br#"{"parts":[{"type":"text","text":"x"}]}"#.to_vec(),
            400,
        ),
        (
            "bad workspace id",
            "/workspace/wrk_!!/session".into(),
            "application/json",
            b"{}".to_vec(),
            400,
        ),
        (
            "abort with nothing running",
            format!("/session/{}/abort", session.id),
            "application/json",
            b"{}".to_vec(),
            409,
        ),
    ];
    for (what, path, content_type, body, status) in cases {
        let a = system.post_raw(&alice, &path, content_type, body).await;
        assert!(a.is_problem(status), "{what}: expected {status}, got {a:?}");
        assert_eq!(a.body["status"], status, "{what}");
        assert!(a.body["title"].is_string(), "{what}");
    }
    assert_eq!(system.event_count().await, before, "nothing was written");

    // Wrong state: a second prompt while the first reply runs.
    system.prompt(&alice, &session.id, "[[fake tokens=1000 delay_ms=20]]").await;
    let busy =
        system.post(&alice, &prompt, json!({ "parts": [{ "type": "text", "text": "x" }] })).await;
    assert!(busy.is_problem(409), "{busy:?}");

    // Reads: bad ids, bad cursors and limits, bad consistency tokens.
    for (path, status) in [
        ("/session/nonsense".to_string(), 400),
        (format!("/session/{}/message?limit=0", session.id), 400),
        (format!("/session/{}/message?cursor=%%%", session.id), 400),
        (format!("/session/{}/message?bogus=1", session.id), 400),
        (format!("/workspace/{}/session?consistency=garbage", ws.id), 400),
        ("/no/such/route".to_string(), 404),
    ] {
        let a = system.get(&alice, &path, None).await;
        assert!(a.is_problem(status), "{path}: {a:?}");
    }
}

#[tokio::test]
async fn a_nul_character_anywhere_is_bad_input_not_a_server_error() {
    // Found by the API fuzzer: PostgreSQL's JSON cannot hold U+0000.
    let system = e2e_tests::System::start().await;
    let alice = system.token("alice").await;
    let (_, _, session) = system.session_for("alice").await;
    let before = system.event_count().await;
    let named = system.post(&alice, "/org", serde_json::json!({ "name": "a\u{0}b" })).await;
    assert!(named.is_problem(400), "{named:?}");
    let prompt = serde_json::json!({ "parts": [{ "type": "text", "text": "x\u{0}y" }] });
    let prompted =
        system.post(&alice, &format!("/session/{}/prompt_async", session.id), prompt).await;
    assert!(prompted.is_problem(400), "{prompted:?}");
    assert_eq!(system.event_count().await, before, "nothing written");
    // The six characters \u0000 as text are fine.
    let literal = system.post(&alice, "/org", serde_json::json!({ "name": "about \\u0000" })).await;
    assert_eq!(literal.status, 201, "{literal:?}");
}
