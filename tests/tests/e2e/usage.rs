//! What replies cost, exactly, and usage reports that add up to the events — also after a
//! rebuild.

use e2e_tests::api::Created;
use e2e_tests::{System, eventually};
use futures::future::join_all;
use serde_json::{Value, json};

use crate::WAIT;

/// Prompt `times` times in `session`, one after the other.
async fn prompts(system: &System, bearer: &str, session: &Created, times: usize) {
    for i in 0..times {
        let body = json!({ "model": { "providerID": "oa", "modelID": "m" },
            "parts": [{ "type": "text", "text": format!("n{i} [[fake tokens=5 reasoning=2 cached=4]]") }] });
        let a = system.post(bearer, &format!("/session/{}/prompt_async", session.id), body).await;
        assert_eq!(a.status, 202, "{a:?}");
        let token = a.body["consistencyToken"].as_str().unwrap().to_owned();
        eventually("the reply", WAIT, || async {
            let a = system.get(bearer, &format!("/session/{}", session.id), Some(&token)).await;
            (a.body["status"]["type"] == "idle").then_some(())
        })
        .await;
    }
}

#[tokio::test]
async fn replies_cost_exactly_their_tokens_and_usage_adds_up_to_the_events() {
    let system = System::start().await;
    let alice = system.token("alice").await;
    let bob = system.token("bob").await;
    let (org, ws, first) = system.session_for("alice").await;
    system.add_member(&alice, &org.id, &bob, "member", Some(&ws.id)).await;
    let body = json!({ "kind": "openai-compatible", "providerID": "oa", "name": "OA",
        "baseURL": format!("{}/v1", system.provider_url), "apiKey": "k", "models": ["m"] });
    let connection = system.post(&alice, &format!("/org/{}/provider", org.id), body).await;
    let url = format!(
        "{}/org/{}/provider/{}/catalog",
        system.command_url(),
        org.id,
        connection.body["id"].as_str().unwrap()
    );
    let prices = json!({ "models": { "m": { "cost": { "input": 3.0, "output": 15.0, "cache_read": 0.3 } } } });
    assert_eq!(
        system.http.put(url).bearer_auth(&alice).json(&prices).send().await.unwrap().status(),
        200
    );

    // Thirty replies from two people in three sessions, some at the same time.
    let second = system.create_session(&alice, &ws.id).await;
    let bobs = system.create_session(&bob, &ws.id).await;
    join_all([
        prompts(&system, &alice, &first, 10),
        prompts(&system, &alice, &second, 10),
        prompts(&system, &bob, &bobs, 10),
    ])
    .await;

    // Every reply's cost is its tokens at the prices, rounded up to a micro-dollar: input $3,
    // output (reasoning included) $15, cache reads $0.30 per million tokens.
    let db = system.db().await;
    let completed: Vec<Value> = db
        .query("SELECT payload::jsonb -> 'properties' -> 'message' FROM events WHERE event_type = 'message.completed'", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(completed.len(), 30);
    let mut total = 0;
    for m in &completed {
        let t = &m["tokens"];
        let n = |v: &Value| v.as_u64().unwrap();
        let expected = (n(&t["input"]) * 3_000_000
            + n(&t["output"]) * 15_000_000
            + n(&t["cache"]["read"]) * 300_000)
            .div_ceil(1_000_000);
        assert_eq!(m["cost"]["microDollars"].as_u64(), Some(expected), "{m}");
        assert!(n(&t["reasoning"]) == 2 && n(&t["cache"]["read"]) == 4, "{t}");
        total += expected;
    }

    // The organization's report, by person, adds up to the events.
    let usage = format!("/org/{}/usage?groupBy=user", org.id);
    let report = eventually("usage of every reply", WAIT, || async {
        let a = system.get(&alice, &usage, None).await;
        (a.body["total"]["requests"] == 30).then_some(a.body)
    })
    .await;
    assert_eq!(report["total"]["costMicroDollars"].as_u64(), Some(total));
    let requests: Vec<u64> = report["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["requests"].as_u64().unwrap())
        .collect();
    let mut sorted = requests.clone();
    sorted.sort();
    assert_eq!(sorted, [10, 20], "{report}");
    // As CSV too.
    let csv = system
        .http
        .get(format!("{}{usage}", system.query_url()))
        .bearer_auth(&alice)
        .header("accept", "text/csv")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(csv.starts_with("user_id,requests,"), "{csv}");
    assert_eq!(csv.lines().count(), 3);

    // Bob sees his own spend, not the organization's.
    let mine = system.get(&bob, "/me/usage", None).await;
    assert_eq!(mine.body["total"]["requests"], 10, "{mine:?}");
    assert!(system.get(&bob, &usage, None).await.is_problem(403));
    let by_workspace =
        system.get(&alice, &format!("/workspace/{}/usage?groupBy=model,day", ws.id), None).await;
    assert_eq!(by_workspace.body["total"]["costMicroDollars"].as_u64(), Some(total));
    assert!(
        system
            .get(&alice, &format!("/org/{}/usage?from=2026-02-30", org.id), None)
            .await
            .is_problem(400)
    );

    // A rebuild from the events gives the same usage.
    let snapshot = || async {
        let text: String = system
            .db()
            .await
            .query_one(
                "SELECT coalesce(json_agg(u ORDER BY u::text), '[]')::text FROM rm_usage u",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        text
    };
    let before = snapshot().await;
    system.rebuild().await;
    assert_eq!(snapshot().await, before);
}
