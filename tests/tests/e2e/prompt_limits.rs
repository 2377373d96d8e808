//! An organization's prompt rates (requests and tokens per minute, per member and for the whole
//! organization) hold across command-service instances: concurrent prompts on two instances are
//! accepted up to the limit (a minute's worth at once, plus what refills meanwhile: at these
//! rates, one more at most), the rest refused with 429, the limit's type and Retry-After.

use e2e_tests::api::Created;
use e2e_tests::sse::is_idle;
use e2e_tests::{System, SystemOptions};
use futures::future::join_all;
use serde_json::{Value, json};

use crate::WAIT;

async fn two_instances() -> System {
    let mut system = System::start_with(SystemOptions::default()).await;
    let second = system.start_command(false).await;
    system.command.push(second);
    system
}

/// Members `names` of a new organization of alice's, with a workspace all of them work in.
async fn organization(system: &System, names: &[&str]) -> (Created, Created) {
    let alice = system.token("alice").await;
    let org = system.create_org(&alice, "Limited").await;
    let ws = system.create_workspace(&alice, &org.id, "w").await;
    for name in names {
        let token = system.token(name).await;
        system.add_member(&alice, &org.id, &token, "member", Some(&ws.id)).await;
    }
    (org, ws)
}

async fn set_limits(system: &System, org: &Created, limits: Value) {
    let alice = system.token("alice").await;
    let url = format!("{}/org/{}/limits", system.command_url(), org.id);
    assert_eq!(
        system.http.put(url).bearer_auth(alice).json(&limits).send().await.unwrap().status(),
        200
    );
}

/// `count` prompts at once, each in a session of its own, alternating between the two command
/// instances; the answers' status and problem type.
async fn burst(system: &System, who: &str, ws: &Created, count: usize) -> Vec<(u16, Value)> {
    let token = system.token(who).await;
    let mut sessions = Vec::new();
    for _ in 0..count {
        sessions.push(system.create_session(&token, &ws.id).await);
    }
    let prompts = sessions.iter().enumerate().map(|(i, s)| {
        let url = format!("{}/session/{}/prompt_async", system.command[i % 2].url, s.id);
        let req = system
            .http
            .post(url)
            .bearer_auth(&token)
            .json(&json!({ "parts": [{ "type": "text", "text": "hi [[fake tokens=1]]" }] }));
        async move {
            let res = req.send().await.unwrap();
            let status = res.status().as_u16();
            let retry = res.headers().get("retry-after").is_some();
            let mut body: Value = res.json().await.unwrap_or(Value::Null);
            body["retryAfterHeader"] = json!(retry);
            (status, body)
        }
    });
    join_all(prompts).await
}

/// Every rate's window moves a minute on, as if a minute had passed.
async fn minute_passes(system: &System) {
    let db = system.db().await;
    db.execute("UPDATE rate_limits SET tat = tat - interval '1 minute'", &[]).await.unwrap();
}

fn refused_as(answers: &[(u16, Value)], kind: &str) -> usize {
    answers
        .iter()
        .filter(|(status, body)| {
            *status == 429 && body["type"] == kind && body["retryAfterHeader"] == true
        })
        .count()
}

#[tokio::test]
async fn a_members_prompt_rate_holds_across_instances_and_only_for_them() {
    let system = two_instances().await;
    let (org, ws) = organization(&system, &["bob", "carol"]).await;
    set_limits(&system, &org, json!({ "member": { "requestsPerMinute": 5 } })).await;
    let answers = burst(&system, "bob", &ws, 20).await;
    let accepted = answers.iter().filter(|(s, _)| *s == 202).count();
    assert!((5..=6).contains(&accepted), "accepted {accepted} of 20 at 5 a minute: {answers:?}");
    assert_eq!(refused_as(&answers, "urn:oc:problem:member-request-rate"), 20 - accepted);
    let refusal = &answers.iter().find(|(s, _)| *s == 429).unwrap().1;
    let used = refusal["used"].as_u64().expect("what is used");
    assert!((4..=6).contains(&used), "a minute's worth is in use: {refusal}");
    assert_eq!(refusal["limit"], "5 prompts per minute");
    // A minute later the rate has refilled.
    minute_passes(&system).await;
    let later = burst(&system, "bob", &ws, 1).await;
    assert_eq!(later[0].0, 202, "{later:?}");
    // Another member prompts as usual.
    let carols = burst(&system, "carol", &ws, 2).await;
    assert!(carols.iter().all(|(s, _)| *s == 202), "{carols:?}");
}

#[tokio::test]
async fn the_organizations_prompt_rate_holds_for_all_its_members_together() {
    let system = two_instances().await;
    let (org, ws) = organization(&system, &["bob", "carol"]).await;
    set_limits(&system, &org, json!({ "organization": { "requestsPerMinute": 4 } })).await;
    // A stranger's prompts at the organization's sessions are "not found", and use none of its rate.
    let alice = system.token("alice").await;
    let target = system.create_session(&alice, &ws.id).await;
    let mallory = system.token("mallory").await;
    for _ in 0..10 {
        let body = json!({ "parts": [{ "type": "text", "text": "hi" }] });
        let a = system.post(&mallory, &format!("/session/{}/prompt_async", target.id), body).await;
        assert!(a.is_problem(404), "{a:?}");
    }
    let (bob, carol) =
        futures::join!(burst(&system, "bob", &ws, 6), burst(&system, "carol", &ws, 6));
    let all: Vec<_> = bob.into_iter().chain(carol).collect();
    let accepted = all.iter().filter(|(s, _)| *s == 202).count();
    assert!((4..=5).contains(&accepted), "accepted {accepted} of 12 at 4 a minute: {all:?}");
    assert_eq!(refused_as(&all, "urn:oc:problem:organization-request-rate"), 12 - accepted);
}

#[tokio::test]
async fn a_members_token_rate_is_charged_with_each_reply_and_refuses_once_spent() {
    let system = two_instances().await;
    let (org, ws) = organization(&system, &["bob"]).await;
    let limits =
        json!({ "member": { "tokensPerMinute": 40 }, "organization": { "tokensPerMinute": 600 } });
    set_limits(&system, &org, limits).await;
    let bob = system.token("bob").await;
    let session = system.create_session(&bob, &ws.id).await;
    let mut stream = system.watch(&bob, &session).await;
    // Each reply uses about 25 tokens: the second prompt still fits the minute, a later one not.
    let mut refused = None;
    for i in 0..4 {
        let body =
            json!({ "parts": [{ "type": "text", "text": format!("q{i} [[fake tokens=20]]") }] });
        let a = system.post(&bob, &format!("/session/{}/prompt_async", session.id), body).await;
        if a.status == 429 {
            refused = Some((i, a));
            break;
        }
        assert_eq!(a.status, 202, "{a:?}");
        stream.until(WAIT, is_idle).await;
    }
    let (i, a) = refused.expect("the token rate refused a prompt");
    // Exactly the third: each reply's tokens are charged before its session shows idle, so the
    // prompt sent the instant it does already finds the first two replies' 45+ tokens charged.
    assert_eq!(i, 2, "the first two prompts fit the minute, the third not: {a:?}");
    assert_eq!(a.body["type"], "urn:oc:problem:member-token-rate", "{a:?}");
    assert!(a.body["used"].as_u64().unwrap() >= 39, "the tokens charged: {a:?}");
    // The organization's token rate was charged the same replies (45+ tokens at 600 a minute:
    // 4.5 s and more ahead), not only the prompts' takes (0.1 s each).
    let db = system.db().await;
    let ahead: f64 = db
        .query_one(
            "SELECT extract(epoch FROM tat - clock_timestamp())::float8 FROM rate_limits WHERE key = $1",
            &[&format!("tokens:{}", org.id)],
        )
        .await
        .unwrap()
        .get(0);
    assert!(ahead > 1.0, "the organization's token rate is {ahead} s ahead");
    // A minute later the tokens are paid off.
    minute_passes(&system).await;
    let body = json!({ "parts": [{ "type": "text", "text": "later [[fake tokens=1]]" }] });
    let a = system.post(&bob, &format!("/session/{}/prompt_async", session.id), body).await;
    assert_eq!(a.status, 202, "{a:?}");
}
