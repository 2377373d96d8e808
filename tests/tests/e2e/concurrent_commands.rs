//! Commands running at the same instant on one command-service instance read their aggregates
//! together (several callers' catch-up reads in one statement): each must still decide on its
//! own session, workspace and organization, whoever else was read alongside it.

use std::time::Duration;

use e2e_tests::{System, eventually};
use futures::future::join_all;
use serde_json::json;

/// Sessions of each organization prompted at once.
const SESSIONS: usize = 12;

/// Two organizations prompt in many sessions at once through a second instance, while the
/// first removes one organization's member: every answer is the one that session, workspace and
/// member call for (accepted, busy, or forbidden), never another's.
#[tokio::test]
async fn commands_running_at_once_each_decide_on_their_own_aggregates() {
    let system = System::start().await;
    let second = system.start_command(false).await;
    let (alice, bob, carol) =
        (system.token("alice").await, system.token("bob").await, system.token("carol").await);
    let org_a = system.create_org(&alice, "Acme").await;
    let ws_a = system.create_workspace(&alice, &org_a.id, "main").await;
    let org_b = system.create_org(&carol, "Globex").await;
    let ws_b = system.create_workspace(&carol, &org_b.id, "main").await;
    let bob_id = system.add_member(&carol, &org_b.id, &bob, "member", Some(&ws_b.id)).await;

    // Every session made, and then used, through the second instance, all at once.
    let post = |bearer: &str, path: String, body: serde_json::Value| {
        let req = system.http.post(format!("{}{path}", second.url)).bearer_auth(bearer).json(&body);
        async move { req.send().await.expect("command service reachable") }
    };
    let create = |bearer: &str, ws: &str| {
        let reply = post(bearer, format!("/workspace/{ws}/session"), json!({}));
        async move {
            let res = reply.await;
            assert_eq!(res.status().as_u16(), 201, "{res:?}");
            let body: serde_json::Value = res.json().await.expect("JSON");
            body["id"].as_str().expect("a session id").to_owned()
        }
    };
    let a_sessions = join_all((0..SESSIONS).map(|_| create(&alice, &ws_a.id))).await;
    let b_sessions = join_all((0..SESSIONS).map(|_| create(&bob, &ws_b.id))).await;
    let everyone: Vec<(&str, &String)> = a_sessions
        .iter()
        .map(|s| (alice.as_str(), s))
        .chain(b_sessions.iter().map(|s| (bob.as_str(), s)))
        .collect();
    // Each caller's answers to one prompt in every session at once, in `everyone`'s order.
    let prompt_all = |text: &'static str| {
        join_all(everyone.iter().map(|(bearer, session)| {
            let body = json!({ "parts": [{ "type": "text", "text": text }] });
            let reply = post(bearer, format!("/session/{session}/prompt_async"), body);
            async move { reply.await.status().as_u16() }
        }))
    };

    // Replies held at the provider: every session stays busy until released.
    let first = prompt_all("first [[fake tokens=2 hold=concurrent]]").await;
    assert!(first.iter().all(|s| *s == 202), "every first prompt accepted: {first:?}");
    let again = prompt_all("again [[fake tokens=2]]").await;
    assert!(again.iter().all(|s| *s == 409), "every session is busy with its own reply: {again:?}");

    // Carol removes Bob through the first instance; the second hears of it at its next read.
    let url = format!("{}/workspace/{}/member/{bob_id}", system.command_url(), ws_b.id);
    let removed = system.http.delete(url).bearer_auth(&carol).send().await.unwrap();
    assert!(removed.status().is_success(), "{removed:?}");
    let after_removal = prompt_all("again [[fake tokens=2]]").await;
    let (a, b) = after_removal.split_at(SESSIONS);
    assert!(a.iter().all(|s| *s == 409), "Alice's sessions are still busy: {a:?}");
    assert!(b.iter().all(|s| *s == 403), "Bob is no longer a member: {b:?}");

    // Released: Alice's sessions take prompts again, Bob's still refuse him.
    let release = format!("{}/release/concurrent", system.provider_url);
    system.http.post(release).send().await.expect("fake provider");
    let alice = alice.as_str();
    let accepted_again = |session: &String| {
        let path = format!("/session/{session}/prompt_async");
        eventually("the session to take a prompt again", Duration::from_secs(30), move || {
            let body = json!({ "parts": [{ "type": "text", "text": "third [[fake tokens=2]]" }] });
            let reply = post(alice, path.clone(), body);
            // Busy (409) until its reply's completion is committed.
            async move { (reply.await.status().as_u16() == 202).then_some(()) }
        })
    };
    join_all(a_sessions.iter().map(accepted_again)).await;
    let bob_again = prompt_all("again [[fake tokens=2]]").await;
    assert!(
        bob_again[SESSIONS..].iter().all(|s| *s == 403),
        "Bob is still not a member: {bob_again:?}"
    );
}
