//! What budgets and prompt rates add to accepting a prompt: two organizations in one run, the
//! same priced connection and model, one with no limits and one with a budget on every scope
//! (organization, workspace, member, API key) and request and token rates per member and for
//! the organization, all high enough never to refuse. Rounds alternate between the two, at 1
//! session and at `OC_BENCH_SESSIONS` (default 50) sessions prompting at once; prints the
//! acceptance latency (POST → 202) of each. Run with `make bench` (release binaries).

use std::time::{Duration, Instant};

use e2e_tests::System;
use e2e_tests::api::Created;
use e2e_tests::bench::{ms, percentiles, quantile};
use futures::future::join_all;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(60);

#[tokio::main]
async fn main() {
    let sessions = e2e_tests::bench::sessions();
    let system = e2e_tests::bench::system(sessions).await;
    let alice = system.token("alice").await;
    let open = organization(&system, &alice, "no limits", false).await;
    let limited = organization(&system, &alice, "limited", true).await;

    for (label, concurrency, rounds) in [("1 session", 1, 200), ("sessions at once", sessions, 6)] {
        let (mut off, mut on) = (Vec::new(), Vec::new());
        let mut off_sessions = open_sessions(&system, &open, concurrency).await;
        let mut on_sessions = open_sessions(&system, &limited, concurrency).await;
        for round in 0..rounds {
            // Alternating, so drift (caches warming, the database's state) hits both alike.
            let warm = round < rounds / 10;
            let a = burst(&system, &open, &mut off_sessions).await;
            let b = burst(&system, &limited, &mut on_sessions).await;
            if !warm {
                off.extend(a);
                on.extend(b);
            }
        }
        let label =
            if concurrency == 1 { label.to_owned() } else { format!("{concurrency} {label}") };
        println!("{label}, limits off ({} prompts): accepted {}", off.len(), percentiles(&off));
        println!("{label}, limits on  ({} prompts): accepted {}", on.len(), percentiles(&on));
        println!(
            "{label}: limits add {:.2} ms at p50, {:.2} ms at p99",
            quantile(&on, 0.5) - quantile(&off, 0.5),
            quantile(&on, 0.99) - quantile(&off, 0.99)
        );
    }
}

/// An organization of alice's with a priced connection as its default model; `limited` adds a
/// budget on each scope and every prompt rate. Prompts are sent with an API key.
struct Org {
    ws: Created,
    key: String,
}

async fn organization(system: &System, alice: &str, name: &str, limited: bool) -> Org {
    let org = system.create_org(alice, name).await;
    let ws = system.create_workspace(alice, &org.id, "w").await;
    let body = json!({ "kind": "openai-compatible", "providerID": "oa", "name": "OA",
        "baseURL": format!("{}/v1", system.provider_url), "apiKey": "k", "models": ["m"] });
    let connection = system.post(alice, &format!("/org/{}/provider", org.id), body).await;
    let connection = connection.body["id"].as_str().unwrap().to_owned();
    let put = |path: String, body: serde_json::Value| {
        let req = system.http.put(format!("{}{path}", system.command_url())).bearer_auth(alice);
        async move { assert!(req.json(&body).send().await.unwrap().status().is_success()) }
    };
    let catalog = json!({ "models": { "m": { "cost": { "input": 3.0, "output": 15.0 },
        "limit": { "context": 200000, "output": 8192 } } } });
    put(format!("/org/{}/provider/{connection}/catalog", org.id), catalog).await;
    let model = json!({ "model": { "providerID": "oa", "modelID": "m" } });
    put(format!("/org/{}/default-model", org.id), model).await;
    let key = system.post(alice, &format!("/org/{}/api-key", org.id), json!({ "name": "b" })).await;
    let (key_id, key) =
        (key.body["id"].as_str().unwrap().to_owned(), key.body["key"].as_str().unwrap().to_owned());
    if limited {
        let me = system.user_id(alice).await;
        for scope in [
            json!({ "type": "organization" }),
            json!({ "type": "workspace", "id": ws.id }),
            json!({ "type": "member", "id": me }),
            json!({ "type": "apiKey", "id": key_id }),
        ] {
            let budget = json!({ "scope": scope, "amountUsd": 1_000_000, "period": { "type": "month" },
                "thresholds": [80] });
            assert_eq!(
                system.post(alice, &format!("/org/{}/budget", org.id), budget).await.status,
                201
            );
        }
        let rate = json!({ "requestsPerMinute": 1_000_000, "tokensPerMinute": 1_000_000_000 });
        put(format!("/org/{}/limits", org.id), json!({ "member": rate, "organization": rate }))
            .await;
    }
    Org { ws, key }
}

async fn open_sessions(
    system: &System,
    org: &Org,
    count: usize,
) -> Vec<(Created, e2e_tests::sse::SseClient)> {
    let mut sessions = Vec::new();
    for _ in 0..count {
        let session = system.create_session(&org.key, &org.ws.id).await;
        let stream = system.watch(&org.key, &session).await;
        sessions.push((session, stream));
    }
    sessions
}

/// One prompt in each session at once: each prompt's acceptance time, once every reply is done
/// (so the next burst finds the sessions idle).
async fn burst(
    system: &System,
    org: &Org,
    sessions: &mut [(Created, e2e_tests::sse::SseClient)],
) -> Vec<f64> {
    let ids: Vec<String> = sessions.iter().map(|(s, _)| s.id.clone()).collect();
    let timed = ids.iter().map(|id| async move {
        let start = Instant::now();
        system.prompt(&org.key, id, "bench [[fake tokens=2]]").await;
        ms(start.elapsed())
    });
    let times = join_all(timed).await;
    for (_, stream) in sessions.iter_mut() {
        stream.until(WAIT, e2e_tests::sse::is_idle).await;
    }
    times
}
