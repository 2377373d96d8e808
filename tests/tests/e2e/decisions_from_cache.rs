//! A command instance decides from the aggregates it holds, without reading them first, and its
//! commit checks they were still current: whatever another instance committed meanwhile (a
//! membership removed, a reply completed) counts at once, as if every command read first.
//! Instances also follow each other's commits (from the bus, or the relaying one from its
//! relay), so that a session prompted through either finds its state current, rather than found
//! stale at commit and decided again.

use e2e_tests::System;
use e2e_tests::api::Created;
use e2e_tests::sse::is_idle;
use serde_json::{Value, json};

use crate::WAIT;

/// POST `body` to `path` on the command instance at `url` as `bearer`: the status.
async fn post_on(system: &System, url: &str, bearer: &str, path: &str, body: Value) -> u16 {
    let res = system.http.post(format!("{url}{path}")).bearer_auth(bearer).json(&body).send();
    res.await.expect("command service reachable").status().as_u16()
}

/// Prompt `session` on the command instance at `url`: the status.
async fn prompt_on(system: &System, url: &str, bearer: &str, session: &Created) -> u16 {
    let body = json!({ "parts": [{ "type": "text", "text": "[[fake tokens=2]]" }] });
    post_on(system, url, bearer, &format!("/session/{}/prompt_async", session.id), body).await
}

/// Bob prompts through a second instance, which holds his session, its workspace and its
/// organization from then on. Replies are completed by either instance (their queue group):
/// each prompt after one completed elsewhere is decided on a session the second instance still
/// holds as busy, and must be accepted all the same. Alice then removes Bob from the workspace
/// through the first instance: the second refuses his next prompt at once, and accepts one
/// again once he is added back.
#[tokio::test]
async fn what_another_instance_committed_counts_at_once_for_a_decision_from_cache() {
    let t = crate::BobOnTwoInstances::start().await;
    let (system, second, bob) = (&t.system, &t.second, t.bob.as_str());
    let path = format!("{}/workspace/{}/session", second.url, t.ws.id);
    let created = system.http.post(path).bearer_auth(bob).json(&json!({})).send().await.unwrap();
    assert_eq!(created.status(), 201);
    let body: Value = created.json().await.unwrap();
    let session = Created {
        id: body["id"].as_str().unwrap().to_owned(),
        token: body["consistencyToken"].as_str().unwrap().to_owned(),
    };
    let mut stream = system.watch(bob, &session).await;
    let stale = || system.metric(&second.ops_url, "commands_from_stale_cache_total");

    // Until a reply completed by the first instance has been followed by a prompt on the second.
    let mut prompts = 0;
    while stale().await.unwrap_or(0.0) == 0.0 {
        assert!(prompts < 40, "no reply was completed by the first instance in {prompts} prompts");
        assert_eq!(
            prompt_on(system, &second.url, bob, &session).await,
            202,
            "a prompt on an idle session"
        );
        stream.until(WAIT, is_idle).await;
        prompts += 1;
    }
    assert!(system.metric(&second.ops_url, "commands_from_cache_total").await.unwrap_or(0.0) > 0.0);

    t.set_bob_in_workspace(false).await;
    let before = stale().await.unwrap_or(0.0);
    assert_eq!(prompt_on(system, &second.url, bob, &session).await, 403, "no longer a member");
    assert!(stale().await.unwrap_or(0.0) > before, "the refusal came from the check");

    t.set_bob_in_workspace(true).await;
    assert_eq!(prompt_on(system, &second.url, bob, &session).await, 202, "a member again");
    stream.until(WAIT, is_idle).await;
}

/// A session prompted through two instances in turn, each prompt once the last reply is shown:
/// without following, every prompt would find the other instance's commits missing from the
/// state it holds (found stale at commit, and decided again), and the first instance would
/// decide its first prompt from no state at all. Following the bus, each instance holds the
/// session as committed, whichever instance committed it: the prompts are decided from current
/// states. (A follower lagging behind a prompt only costs that prompt a second decision; the
/// margin of two allows for a machine slow at the moment.)
#[tokio::test]
async fn an_instance_follows_the_others_commits_and_decides_from_current_states() {
    let mut system = System::start().await;
    let second = system.start_command(false).await;
    system.command.push(second);
    let alice = system.token("alice").await;
    let org = system.create_org(&alice, "Acme").await;
    let ws = system.create_workspace(&alice, &org.id, "main").await;
    // Created through the second instance; the first holds nothing of it but what it follows.
    let session = system.create_session(&alice, &ws.id).await;
    let mut stream = system.watch(&alice, &session).await;
    let metric = |i: usize, name: &'static str| {
        let ops = system.command[i].ops_url.clone();
        let system = &system;
        async move { system.metric(&ops, name).await.unwrap_or(0.0) }
    };
    const PROMPTS: usize = 8;
    for n in 0..PROMPTS {
        let url = system.command[n % 2].url.clone();
        assert_eq!(prompt_on(&system, &url, &alice, &session).await, 202, "prompt {n}");
        stream.until(WAIT, is_idle).await;
    }
    let stale = metric(0, "commands_from_stale_cache_total").await
        + metric(1, "commands_from_stale_cache_total").await;
    assert!(stale <= 2.0, "{stale} of {PROMPTS} prompts (and their replies) decided again");
    let followed = metric(0, "aggregate_events_followed_total").await
        + metric(1, "aggregate_events_followed_total").await;
    assert!(followed >= PROMPTS as f64, "events followed: {followed}");
}

/// Command instances subscribed to the domain events on the bus, as NATS counts them.
async fn following_the_bus(system: &System) -> usize {
    let url = format!("{}/connz?subs=1&limit=1000", system.nats.monitor_url(0));
    let connz: Value = system.http.get(url).send().await.unwrap().json().await.unwrap();
    let connections = connz["connections"].as_array().cloned().unwrap_or_default();
    let subscribed = |c: &&Value| {
        let subs = c["subscriptions_list"].as_array();
        subs.is_some_and(|s| s.iter().any(|s| s == "oc.evt.>"))
    };
    connections.iter().filter(|c| c["name"] == "command-service").filter(subscribed).count()
}

/// The relaying instance hears what it publishes from its relay (the test above fails without
/// it), not back from the bus: alone, an instance subscribes to no domain event; a second, which
/// does not relay, follows the bus.
#[tokio::test]
async fn the_relaying_instance_follows_from_its_relay_and_the_others_from_the_bus() {
    let mut system = System::start().await;
    let alice = system.token("alice").await;
    let org = system.create_org(&alice, "Acme").await;
    let _ = system.create_workspace(&alice, &org.id, "main").await;
    let alone =
        e2e_tests::within(WAIT, || async { (following_the_bus(&system).await == 0).then_some(()) });
    assert!(alone.await.is_some(), "a lone relaying instance subscribed to the domain events");
    let second = system.start_command(false).await;
    system.command.push(second);
    let one =
        e2e_tests::within(WAIT, || async { (following_the_bus(&system).await == 1).then_some(()) });
    assert!(one.await.is_some(), "the instance that does not relay follows the bus");
}
