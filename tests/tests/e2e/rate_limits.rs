//! Abuse limits hold across instances: a user's (and an API key's) command rate, and the event
//! streams one user holds open. Going over gives 429 problem+json with Retry-After; nobody else
//! is affected.

use e2e_tests::sse::SseClient;
use e2e_tests::{System, SystemOptions, eventually};
use serde_json::json;

use crate::WAIT;

fn limited(env: &[(&'static str, &str)]) -> SystemOptions {
    SystemOptions {
        query_instances: 2,
        worker: false,
        service_env: env.iter().map(|(k, v)| (*k, v.to_string())).collect(),
        ..Default::default()
    }
}

/// Two command instances whose users may send a burst of five commands, then one a minute (a
/// test cannot outrun the refill).
async fn five_a_minute_on_two_command_instances() -> System {
    let mut system = System::start_with(limited(&[
        ("OC_RATE_LIMIT_PER_MINUTE", "1"),
        ("OC_RATE_LIMIT_BURST", "5"),
    ]))
    .await;
    let second = system.start_command(false).await;
    system.command.push(second);
    system
}

#[tokio::test]
async fn a_users_command_rate_is_limited_across_instances_and_only_theirs() {
    let system = five_a_minute_on_two_command_instances().await;
    let alice = system.token("alice").await;
    let bob = system.token("bob").await;
    let create = |i: usize, who: &str| {
        let url = format!("{}/org", system.command[i % 2].url);
        system.http.post(url).bearer_auth(who.to_owned()).json(&json!({ "name": "x" })).send()
    };
    let mut statuses = Vec::new();
    for i in 0..8 {
        statuses.push(create(i, &alice).await.unwrap().status().as_u16());
    }
    assert_eq!(statuses, [201, 201, 201, 201, 201, 429, 429, 429], "five across both instances");
    let refused = create(0, &alice).await.unwrap();
    let retry_after: u64 = refused.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(retry_after >= 1);
    assert_eq!(refused.headers()["content-type"], "application/problem+json");
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["type"], "urn:oc:problem:request-rate");
    assert!(body["limit"].as_str().unwrap().contains("1 requests per minute"), "{body}");
    // Bob is not slowed by alice.
    assert_eq!(create(1, &bob).await.unwrap().status(), 201);
}

/// Requests that arrive at the same instant have their rates taken together (several in one
/// statement): a burst of one user still gets exactly its allowance, across two instances, and
/// takes nothing from another user who came at the same instant.
#[tokio::test]
async fn a_burst_at_one_instant_gets_exactly_its_allowance_and_takes_no_one_elses() {
    let system = five_a_minute_on_two_command_instances().await;
    let alice = system.token("alice").await;
    let bob = system.token("bob").await;
    let create = |i: usize, who: &str| {
        let url = format!("{}/org", system.command[i % 2].url);
        let req = system.http.post(url).bearer_auth(who.to_owned()).json(&json!({ "name": "x" }));
        async move { req.send().await.expect("command service reachable").status().as_u16() }
    };
    let (alices, bobs) = tokio::join!(
        futures::future::join_all((0..40).map(|i| create(i, &alice))),
        futures::future::join_all((0..3).map(|i| create(i, &bob))),
    );
    let accepted = alices.iter().filter(|s| **s == 201).count();
    assert_eq!(accepted, 5, "exactly the burst of five: {alices:?}");
    assert!(alices.iter().all(|s| *s == 201 || *s == 429), "{alices:?}");
    assert_eq!(bobs, [201, 201, 201], "Bob's own allowance is untouched");
}

#[tokio::test]
async fn an_api_key_has_a_rate_of_its_own() {
    let system = System::start_with(limited(&[
        ("OC_API_KEY_RATE_LIMIT_PER_MINUTE", "1"),
        ("OC_API_KEY_RATE_LIMIT_BURST", "2"),
    ]))
    .await;
    let alice = system.token("alice").await;
    let (org, ws, _) = system.session_for("alice").await;
    let key =
        system.post(&alice, &format!("/org/{}/api-key", org.id), json!({ "name": "ci" })).await;
    let key = key.body["key"].as_str().unwrap().to_owned();
    let path = format!("/workspace/{}/session", ws.id);
    let statuses: Vec<u16> = {
        let mut s = Vec::new();
        for _ in 0..3 {
            s.push(system.post(&key, &path, json!({})).await.status);
        }
        s
    };
    assert_eq!(statuses, [201, 201, 429]);
    let a = system.post(&key, &path, json!({})).await;
    assert_eq!(a.body["type"], "urn:oc:problem:api-key-request-rate");
    // Its owner, with a token, is not limited by the key's rate.
    assert_eq!(system.post(&alice, &path, json!({})).await.status, 201);
}

#[tokio::test]
async fn a_user_holds_a_limited_number_of_streams_across_instances() {
    // Heartbeats every second: a server notices a client went away when it next writes.
    let system = System::start_with(limited(&[
        ("OC_SSE_STREAMS_PER_USER", "2"),
        ("OC_SSE_KEEP_ALIVE_SECS", "1"),
    ]))
    .await;
    let alice = system.token("alice").await;
    let (_, _, session) = system.session_for("alice").await;
    let first = system.watch(&alice, &session).await;
    let url = system.stream_url(1, &session);
    let _second = SseClient::connect(&url, &alice, None).await.expect("the second stream opens");
    for instance in [0, 1] {
        let Err((status, body)) =
            SseClient::connect(&system.stream_url(instance, &session), &alice, None).await
        else {
            panic!("a third stream opened on instance {instance}");
        };
        assert_eq!(status, 429);
        assert_eq!(body["type"], "urn:oc:problem:concurrent-streams");
    }
    // Bob streams his own sessions meanwhile.
    let bob = system.token("bob").await;
    let (_, _, bobs) = system.session_for("bob").await;
    let _bob_stream = system.watch(&bob, &bobs).await;
    // Closing a stream frees its place.
    drop(first);
    eventually("a place freed", WAIT, || async {
        SseClient::connect(&system.stream_url(0, &session), &alice, None).await.ok()
    })
    .await;
}

#[tokio::test]
async fn streams_opened_all_at_once_on_two_instances_get_exactly_the_cap() {
    let system = System::start_with(limited(&[("OC_SSE_STREAMS_PER_USER", "5")])).await;
    let alice = system.token("alice").await;
    let (_, _, session) = system.session_for("alice").await;
    // Twenty at once, ten on each instance: their takes go out together, several in one
    // statement, and a user's later take must count the leases of the earlier ones.
    let opens = (0..20).map(|i| {
        let url = system.stream_url(i % 2, &session);
        let alice = alice.clone();
        async move { SseClient::connect(&url, &alice, None).await }
    });
    let opened = futures::future::join_all(opens).await;
    let mut refused = 0;
    for open in &opened {
        if let Err((status, body)) = open {
            assert_eq!(
                (*status, &body["type"]),
                (429, &json!("urn:oc:problem:concurrent-streams"))
            );
            refused += 1;
        }
    }
    assert_eq!(refused, 15, "five streams open, the other fifteen refused");
    // Bob's stream is his own.
    let bob = system.token("bob").await;
    let (_, _, bobs) = system.session_for("bob").await;
    let _bob_stream = system.watch(&bob, &bobs).await;
}
