//! Spend budgets hold across command-service instances: a prompt holds the most its reply can
//! cost before it is accepted, so concurrent prompts never take more than the budget; each kind
//! of budget refuses with its own problem type and lets prompts in again when its window turns;
//! a failed or aborted reply gives back what it held; replies on members' own keys can be left
//! out; thresholds and exhaustion are raised once per period, on the bus and in the audit trail.
//!
//! Prices are chosen so the arithmetic is plain: output $100 per million tokens, input free, at
//! most 1,000 output tokens, so every prompt holds $0.10 and a reply of N tokens costs N × $0.0001.

use e2e_tests::api::Created;
use e2e_tests::{System, SystemOptions, eventually};
use futures::StreamExt;
use futures::future::join_all;
use serde_json::{Value, json};

use crate::WAIT;

/// What every prompt holds: 1,000 output tokens at $100 per million.
const HOLD_USD: f64 = 0.1;

pub(crate) struct Org {
    pub(crate) org: Created,
    pub(crate) ws: Created,
    connection: String,
}

/// Alice's organization with a priced connection `oa` offering model `m`, and `members` in
/// its workspace.
pub(crate) async fn priced_org(system: &System, members: &[&str]) -> Org {
    let alice = system.token("alice").await;
    let org = system.create_org(&alice, "Budgeted").await;
    let ws = system.create_workspace(&alice, &org.id, "w").await;
    for name in members {
        let token = system.token(name).await;
        system.add_member(&alice, &org.id, &token, "member", Some(&ws.id)).await;
    }
    let body = json!({ "kind": "openai-compatible", "providerID": "oa", "name": "OA",
        "baseURL": format!("{}/v1", system.provider_url), "apiKey": "org-key", "models": ["m"] });
    let created = system.post(&alice, &format!("/org/{}/provider", org.id), body).await;
    assert_eq!(created.status, 201, "{created:?}");
    let connection = created.body["id"].as_str().unwrap().to_owned();
    price(system, &alice, &org, &connection).await;
    let body = json!({ "model": { "providerID": "oa", "modelID": "m" } });
    let url = format!("{}/org/{}/default-model", system.command_url(), org.id);
    let res = system.http.put(url).bearer_auth(&alice).json(&body).send().await.unwrap();
    assert_eq!(res.status(), 200);
    Org { org, ws, connection }
}

async fn price(system: &System, bearer: &str, org: &Created, connection: &str) {
    let url = format!("{}/org/{}/provider/{connection}/catalog", system.command_url(), org.id);
    let catalog = json!({ "models": { "m": {
        "cost": { "input": 0.0, "output": 100.0 },
        "limit": { "context": 100000, "output": 1000 } } } });
    let res = system.http.put(url).bearer_auth(bearer).json(&catalog).send().await.unwrap();
    assert_eq!(res.status(), 200);
}

/// An organization budget of `usd` dollars per `period` (day or month).
pub(crate) fn org_budget(usd: f64, period: &str) -> Value {
    json!({ "scope": { "type": "organization" }, "amountUsd": usd, "period": { "type": period } })
}

pub(crate) async fn set_budget(system: &System, org: &Created, budget: Value) -> String {
    let alice = system.token("alice").await;
    let a = system.post(&alice, &format!("/org/{}/budget", org.id), budget).await;
    assert_eq!(a.status, 201, "{a:?}");
    a.body["id"].as_str().unwrap().to_owned()
}

/// Prompt in `session` on command instance `instance`: the status and body.
async fn prompt_on(
    system: &System,
    instance: usize,
    bearer: &str,
    session: &str,
    text: &str,
) -> (u16, Value) {
    let url = format!("{}/session/{session}/prompt_async", system.command[instance].url);
    let body = json!({ "parts": [{ "type": "text", "text": text }] });
    let res = system.http.post(url).bearer_auth(bearer).json(&body).send().await.unwrap();
    let status = res.status().as_u16();
    let retry_after = res.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned());
    let mut body: Value = res.json().await.unwrap_or(Value::Null);
    body["retryAfterHeader"] = json!(retry_after);
    (status, body)
}

/// Wait until `session` is idle again after the prompt `accepted` answered (read at its
/// consistency token, so the prompt itself has been seen).
async fn idle(system: &System, bearer: &str, session: &str, accepted: &Value) {
    let token = accepted["consistencyToken"].as_str().expect("an accepted prompt");
    eventually("the reply to complete", WAIT, || async {
        let a = system.get(bearer, &format!("/session/{session}"), Some(token)).await;
        (a.body["status"]["type"] == "idle").then_some(())
    })
    .await;
}

/// The budget's status as `GET /org/{org}/budget` shows it, once `ready` holds.
async fn status_when(
    system: &System,
    org: &Created,
    id: &str,
    ready: impl Fn(&Value) -> bool,
) -> Value {
    let alice = system.token("alice").await;
    eventually("the budget's status", WAIT, || async {
        let list = system.get(&alice, &format!("/org/{}/budget", org.id), None).await;
        let items = list.body["items"].as_array()?.clone();
        items.into_iter().find(|b| b["id"] == id && ready(b))
    })
    .await
}

fn usd(v: &Value) -> f64 {
    v.as_f64().unwrap()
}

#[tokio::test]
async fn fifty_prompts_at_once_on_two_instances_take_only_what_the_budget_allows() {
    let mut system = System::start_with(SystemOptions::default()).await;
    let second = system.start_command(false).await;
    system.command.push(second);
    let alice = system.token("alice").await;
    let o = priced_org(&system, &[]).await;
    // Room for exactly ten prompts' holds.
    let budget = set_budget(&system, &o.org, org_budget(10.0 * HOLD_USD, "day")).await;

    let mut sessions = Vec::new();
    for _ in 0..50 {
        sessions.push(system.create_session(&alice, &o.ws.id).await.id);
    }
    // Replies wait a little before their first token, so none completes (and frees its hold)
    // while the prompts arrive.
    let answers =
        join_all(sessions.iter().enumerate().map(|(i, s)| {
            prompt_on(&system, i % 2, &alice, s, "go [[fake tokens=1 ttft_ms=3000]]")
        }))
        .await;
    let accepted = answers.iter().filter(|(status, _)| *status == 202).count();
    let refused: Vec<&Value> =
        answers.iter().filter(|(status, _)| *status == 429).map(|(_, b)| b).collect();
    assert_eq!(accepted, 10, "{answers:?}");
    assert_eq!(refused.len(), 40, "{answers:?}");
    for body in &refused {
        assert_eq!(body["type"], "urn:oc:problem:organization-budget", "{body}");
        assert_eq!(body["budgetID"], budget.as_str());
        assert_eq!(usd(&body["limit"]), 1.0);
        assert!(usd(&body["used"]) > 1.0 - HOLD_USD, "{body}");
        // Replies still running hold the rest: try again soon, not tomorrow.
        assert_eq!(body["retryAfterHeader"], "5", "{body}");
    }
    // Each reply cost one token: $0.0001. Once they are done, nothing is held and the budget
    // has room again.
    for (s, (status, body)) in sessions.iter().zip(&answers) {
        if *status == 202 {
            idle(&system, &alice, s, body).await;
        }
    }
    let settled = status_when(&system, &o.org, &budget, |b| b["reservedUsd"] == 0.0).await;
    assert!((usd(&settled["spentUsd"]) - 0.001).abs() < 1e-9, "{settled}");
    let again = system.create_session(&alice, &o.ws.id).await;
    assert_eq!(prompt_on(&system, 1, &alice, &again.id, "[[fake tokens=1]]").await.0, 202);
}

#[tokio::test]
async fn each_kind_of_budget_refuses_with_its_type_and_lets_prompts_in_when_its_window_turns() {
    let system = System::start().await;
    let alice = system.token("alice").await;
    let bob = system.token("bob").await;
    let o = priced_org(&system, &["bob"]).await;
    let bob_id = system.user_id(&bob).await;
    let key =
        system.post(&bob, &format!("/org/{}/api-key", o.org.id), json!({ "name": "ci" })).await;
    let (key_id, key) =
        (key.body["id"].as_str().unwrap().to_owned(), key.body["key"].as_str().unwrap().to_owned());

    // Each budget has room for one hold ($0.10) plus a reply of 900 tokens ($0.09), not two.
    let cases = [
        (
            json!({ "type": "member", "id": bob_id }),
            json!({ "type": "day" }),
            "member-budget",
            "24 hours",
        ),
        (
            json!({ "type": "workspace", "id": o.ws.id }),
            json!({ "type": "month" }),
            "workspace-budget",
            "32 days",
        ),
        (
            json!({ "type": "apiKey", "id": key_id }),
            json!({ "type": "rolling", "hours": 24 }),
            "api-key-budget",
            "24 hours",
        ),
        (
            json!({ "type": "organization" }),
            json!({ "type": "day" }),
            "organization-budget",
            "24 hours",
        ),
    ];
    let db = system.db().await;
    for (scope, period, kind, turn) in cases {
        // Each case starts with nothing spent (the last case's spend is forgotten).
        db.execute("DELETE FROM spend_counters", &[]).await.unwrap();
        let budget = set_budget(
            &system,
            &o.org,
            json!({ "scope": scope, "amountUsd": 0.15,
            "period": period }),
        )
        .await;
        let session = system.create_session(&bob, &o.ws.id).await.id;
        let (status, body) = prompt_on(&system, 0, &key, &session, "[[fake tokens=900]]").await;
        assert_eq!(status, 202, "{kind}: {body}");
        idle(&system, &bob, &session, &body).await;
        let (status, body) = prompt_on(&system, 0, &key, &session, "[[fake tokens=1]]").await;
        assert_eq!(status, 429, "{kind}: {body}");
        assert_eq!(body["type"], format!("urn:oc:problem:{kind}"), "{body}");
        assert!((usd(&body["used"]) - 0.09).abs() < 1e-9, "{body}");
        // Spent, not held: the window must move first (seconds until it does).
        let retry: u64 = body["retryAfterHeader"].as_str().unwrap().parse().unwrap();
        assert!(retry > 5, "{kind}: {body}");

        // The window turns: the spend now lies in the past.
        let moved = format!("UPDATE spend_counters SET bucket = bucket - interval '{turn}'");
        db.execute(&moved, &[]).await.unwrap();
        let (status, body) = prompt_on(&system, 0, &key, &session, "[[fake tokens=1]]").await;
        assert_eq!(status, 202, "{kind}, after the window turned: {body}");
        idle(&system, &bob, &session, &body).await;
        let remove = format!("{}/org/{}/budget/{budget}", system.command_url(), o.org.id);
        let res = system.http.delete(remove).bearer_auth(&alice).send().await.unwrap();
        assert_eq!(res.status(), 200);
    }

    // Only owners and admins set budgets, and only on what is in their organization.
    let budget = org_budget(5.0, "day");
    assert!(system.post(&bob, &format!("/org/{}/budget", o.org.id), budget).await.is_problem(403));
    let elsewhere = system.create_org(&alice, "Other").await;
    let their_ws = system.create_workspace(&alice, &elsewhere.id, "x").await;
    for bad in [
        json!({ "scope": { "type": "workspace", "id": their_ws.id }, "amountUsd": 5, "period": { "type": "day" } }),
        json!({ "scope": { "type": "member", "id": system.user_id(&system.token("carol").await).await }, "amountUsd": 5, "period": { "type": "day" } }),
        org_budget(0.0, "day"),
        json!({ "scope": { "type": "organization" }, "amountUsd": 5, "period": { "type": "rolling", "hours": 0 } }),
        json!({ "scope": { "type": "organization" }, "amountUsd": 5, "period": { "type": "day" }, "thresholds": [100] }),
        org_budget(-1.0, "day"),
        org_budget(5.0, "week"),
    ] {
        let a = system.post(&alice, &format!("/org/{}/budget", o.org.id), bad.clone()).await;
        assert!(a.is_problem(400), "{bad}: {a:?}");
    }
}

#[tokio::test]
async fn a_failed_or_aborted_reply_gives_back_what_it_held() {
    let system = System::start().await;
    let alice = system.token("alice").await;
    let o = priced_org(&system, &[]).await;
    // Room for one hold at a time.
    let budget = set_budget(&system, &o.org, org_budget(0.15, "day")).await;
    let session = system.create_session(&alice, &o.ws.id).await.id;

    // A reply the provider refuses outright costs nothing and holds nothing afterwards.
    let (status, body) = prompt_on(&system, 0, &alice, &session, "[[fake fault=http500]]").await;
    assert_eq!(status, 202);
    idle(&system, &alice, &session, &body).await;
    let after_failure = status_when(&system, &o.org, &budget, |b| b["reservedUsd"] == 0.0).await;
    assert_eq!(after_failure["spentUsd"], 0.0);

    // An aborted reply: while it runs, nothing else fits; once aborted, its hold is gone.
    let (status, running) =
        prompt_on(&system, 0, &alice, &session, "[[fake tokens=200 delay_ms=50]]").await;
    assert_eq!(status, 202);
    let other = system.create_session(&alice, &o.ws.id).await.id;
    assert_eq!(prompt_on(&system, 0, &alice, &other, "[[fake tokens=1]]").await.0, 429);
    let abort = system.post(&alice, &format!("/session/{session}/abort"), json!({})).await;
    assert_eq!(abort.status, 202, "{abort:?}");
    idle(&system, &alice, &session, &running).await;
    let after_abort = status_when(&system, &o.org, &budget, |b| b["reservedUsd"] == 0.0).await;
    assert!(usd(&after_abort["spentUsd"]) < 0.02, "only the tokens streamed: {after_abort}");
    assert_eq!(prompt_on(&system, 0, &alice, &other, "[[fake tokens=1]]").await.0, 202);
}

#[tokio::test]
async fn replies_on_a_members_own_key_count_as_usage_but_not_toward_a_budget_that_leaves_them_out()
{
    let system = System::start().await;
    let alice = system.token("alice").await;
    let bob = system.token("bob").await;
    let o = priced_org(&system, &["bob"]).await;
    let byok = format!("{}/org/{}/byok", system.command_url(), o.org.id);
    let allow = json!({ "allowed": true, "providers": [] });
    assert_eq!(
        system.http.put(byok).bearer_auth(&alice).json(&allow).send().await.unwrap().status(),
        200
    );
    let own = json!({ "kind": "openai-compatible", "providerID": "oa", "name": "mine", "personal": true,
        "baseURL": format!("{}/v1", system.provider_url), "apiKey": "bobs-key", "models": ["m"] });
    let created = system.post(&bob, &format!("/org/{}/provider", o.org.id), own).await;
    assert_eq!(created.status, 201, "{created:?}");
    price(&system, &bob, &o.org, created.body["id"].as_str().unwrap()).await;
    let org_only = set_budget(
        &system,
        &o.org,
        json!({ "scope": { "type": "organization" },
        "amountUsd": 0.15, "period": { "type": "day" }, "includeOwnKeys": false }),
    )
    .await;

    // Bob's replies, paid with his own key, do not use up the organization's budget.
    let session = system.create_session(&bob, &o.ws.id).await.id;
    for _ in 0..3 {
        let (status, body) = prompt_on(&system, 0, &bob, &session, "[[fake tokens=900]]").await;
        assert_eq!(status, 202, "{body}");
        idle(&system, &bob, &session, &body).await;
    }
    let status = status_when(&system, &o.org, &org_only, |_| true).await;
    assert_eq!(status["spentUsd"], 0.0, "{status}");
    // They are usage all the same: $0.27 on Bob's own key.
    let usage = format!("/org/{}/usage?groupBy=connection", o.org.id);
    let report = eventually("the own-key usage", WAIT, || async {
        let a = system.get(&alice, &usage, None).await;
        (a.body["total"]["requests"] == 3).then_some(a.body)
    })
    .await;
    assert_eq!(report["total"]["costMicroDollars"], 270_000, "{report}");
    assert_eq!(report["items"][0]["ownKey"], true, "{report}");
    // The organization's key still has the whole budget: Alice's prompt is held and accepted.
    let hers = system.create_session(&alice, &o.ws.id).await.id;
    assert_eq!(prompt_on(&system, 0, &alice, &hers, "[[fake tokens=1]]").await.0, 202);
    let _ = o.connection;
}

#[tokio::test]
async fn thresholds_and_exhaustion_are_raised_once_a_period_on_the_bus_and_in_the_audit_trail() {
    let system = System::start().await;
    let alice = system.token("alice").await;
    let o = priced_org(&system, &[]).await;
    let nats = system.nats().await;
    let mut bus = nats.subscribe(format!("oc.evt.{}.>", o.org.id)).await.unwrap();
    let budget = set_budget(
        &system,
        &o.org,
        json!({ "scope": { "type": "organization" },
        "amountUsd": 0.15, "period": { "type": "month" }, "thresholds": [50, 80] }),
    )
    .await;
    // Read with the organization's in one statement after each reply: $0.09 of $1 crosses 5 %.
    let workspace = set_budget(
        &system,
        &o.org,
        json!({ "scope": { "type": "workspace", "id": o.ws.id },
        "amountUsd": 1.0, "period": { "type": "month" }, "thresholds": [5, 50] }),
    )
    .await;
    let session = system.create_session(&alice, &o.ws.id).await.id;

    // $0.09 of $0.15 is 60 %: the 50 % threshold, not the 80 % one.
    let (status, body) = prompt_on(&system, 0, &alice, &session, "[[fake tokens=900]]").await;
    assert_eq!(status, 202);
    idle(&system, &alice, &session, &body).await;
    // Refused twice: exhausted, raised once.
    for _ in 0..2 {
        assert_eq!(prompt_on(&system, 0, &alice, &session, "[[fake tokens=1]]").await.0, 429);
    }

    let audit = format!("/org/{}/audit", o.org.id);
    let alerts = eventually("the three alerts in the audit trail", WAIT, || async {
        let a = system.get(&alice, &audit, None).await;
        let alerts: Vec<Value> = a.body["items"]
            .as_array()?
            .iter()
            .filter(|e| e["type"] == "organization.budget_alert")
            .cloned()
            .collect();
        (alerts.len() >= 3).then_some(alerts)
    })
    .await;
    assert_eq!(alerts.len(), 3, "{alerts:?}");
    let mut raised: Vec<(&str, &Value)> = alerts
        .iter()
        .map(|e| (e["details"]["budgetID"].as_str().unwrap(), &e["details"]["alert"]))
        .collect();
    raised.sort_by_key(|(id, alert)| (*id == workspace, alert.to_string()));
    let threshold = |percent: u8| json!({ "type": "threshold", "percent": percent });
    assert_eq!(
        raised,
        [
            (budget.as_str(), &threshold(50)),
            (budget.as_str(), &json!({ "type": "exhausted" })),
            (workspace.as_str(), &threshold(5)),
        ],
        "{alerts:?}"
    );

    // On the bus, for a notifier to subscribe to by subject.
    let mut on_bus = 0;
    while on_bus < 3 {
        let msg = tokio::time::timeout(WAIT, bus.next()).await.expect("alerts on the bus").unwrap();
        if msg.subject.as_str().ends_with("organization_budget_alert") {
            on_bus += 1;
        }
    }
}

/// A reply's thresholds are checked against the organization as the instance completing it
/// holds it, without a read. Here the second instance took the organization in before it had a
/// budget, and the instances do not follow each other's commits: the next prompt's commit
/// brought its copy up to date, so the threshold that prompt's reply crossed is raised, whichever
/// instance completes it.
#[tokio::test]
async fn a_threshold_is_raised_by_an_instance_that_held_the_organization_before_its_budget() {
    let mut system = System::start_with(SystemOptions {
        service_env: vec![("OC_FOLLOW_COMMITS", "false".into())],
        ..Default::default()
    })
    .await;
    let second = system.start_command(false).await;
    system.command.push(second);
    let alice = system.token("alice").await;
    let o = priced_org(&system, &[]).await;
    let session = system.create_session(&alice, &o.ws.id).await.id;
    let (status, body) = prompt_on(&system, 1, &alice, &session, "[[fake tokens=1]]").await;
    assert_eq!(status, 202, "{body}");
    idle(&system, &alice, &session, &body).await;
    // Through the first instance.
    let budget = set_budget(
        &system,
        &o.org,
        json!({ "scope": { "type": "organization" },
        "amountUsd": 0.15, "period": { "type": "month" }, "thresholds": [50] }),
    )
    .await;

    // $0.0001 + $0.09 of $0.15 is over 60 %.
    let (status, body) = prompt_on(&system, 1, &alice, &session, "[[fake tokens=900]]").await;
    assert_eq!(status, 202, "{body}");
    idle(&system, &alice, &session, &body).await;
    let audit = format!("/org/{}/audit", o.org.id);
    let alert = eventually("the threshold's alert in the audit trail", WAIT, || async {
        let a = system.get(&alice, &audit, None).await;
        let items = a.body["items"].as_array()?.clone();
        items.into_iter().find(|e| e["type"] == "organization.budget_alert")
    })
    .await;
    assert_eq!(alert["details"]["budgetID"], budget.as_str(), "{alert}");
    assert_eq!(alert["details"]["alert"], json!({ "type": "threshold", "percent": 50 }), "{alert}");
}

#[tokio::test]
async fn holds_taken_on_twenty_connections_at_the_same_instant_never_overlap() {
    // The statement itself, without HTTP in front of it to spread the calls out: twenty
    // connections (a number the test database's connection limit leaves room for beside the
    // other tests) each ask for $0.10 of a $0.50 budget at the same moment.
    let system = System::start().await;
    let mut clients = Vec::new();
    for _ in 0..20 {
        clients.push(system.db().await);
    }
    let start = std::sync::Arc::new(tokio::sync::Barrier::new(clients.len()));
    let holds = clients.into_iter().enumerate().map(|(i, db)| {
        let start = start.clone();
        async move {
            let stmt = db
                .prepare(
                    "SELECT count(*) FROM prompt_admit('ses_x', $1, 'org_x', ARRAY['org:org_x'], \
                     false, 100000, '{}', '{}', '{}', ARRAY['bdg_x'], ARRAY['org:org_x'], \
                     ARRAY[500000::bigint], ARRAY['day'], ARRAY[0], ARRAY[true])",
                )
                .await
                .unwrap();
            start.wait().await;
            let refused: i64 = db.query_one(&stmt, &[&format!("msg_{i}")]).await.unwrap().get(0);
            refused == 0
        }
    });
    let taken = join_all(holds).await.into_iter().filter(|taken| *taken).count();
    assert_eq!(taken, 5);
}

/// A prompt sent through an instance that still holds its session as idle, while a reply sent
/// through another instance runs, is refused as busy and holds nothing: the instance learns the
/// session moved on before it takes any of the budget (a hold taken on the stale state would
/// stay until the sweep, an hour later, and count against everyone under the budget).
#[tokio::test]
async fn a_prompt_refused_once_its_instance_caught_up_holds_nothing() {
    let mut system = System::start().await;
    let second = system.start_command(false).await;
    system.command.push(second);
    let o = priced_org(&system, &[]).await;
    set_budget(&system, &o.org, org_budget(100.0, "month")).await;
    let alice = system.token("alice").await;
    let session = system.create_session(&alice, &o.ws.id).await;
    let (status, accepted) = prompt_on(&system, 1, &alice, &session.id, "[[fake tokens=2]]").await;
    assert_eq!(status, 202, "{accepted:?}");
    idle(&system, &alice, &session.id, &accepted).await;
    // Refused (nothing runs), which brings the second instance's copy up to date: idle.
    let abort = format!("{}/session/{}/abort", system.command[1].url, session.id);
    let refused = system.http.post(abort).bearer_auth(&alice).json(&json!({})).send().await;
    assert_eq!(refused.unwrap().status(), 409);

    let long = "[[fake tokens=100000 delay_ms=20]]";
    let (status, running) = prompt_on(&system, 0, &alice, &session.id, long).await;
    assert_eq!(status, 202, "{running:?}");
    let (status, busy) = prompt_on(&system, 1, &alice, &session.id, "[[fake tokens=2]]").await;
    assert_eq!(status, 409, "{busy:?}");
    let db = system.db().await;
    let held: Vec<String> = db
        .query("SELECT message_id FROM spend_reservations WHERE session_id = $1", &[&session.id])
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(held, vec![running["assistantMessageID"].as_str().unwrap().to_owned()]);
}
