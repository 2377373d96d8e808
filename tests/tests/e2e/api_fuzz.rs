//! Both services fuzzed from their published OpenAPI documents (schemathesis, property-based)
//! as an ordinary user of one organization: no server error, every answer as documented, and
//! nothing of another organization in any answer.

use std::path::Path;
use std::process::Command;

use e2e_tests::System;
use e2e_tests::sse::is_idle;
use serde_json::json;

use crate::WAIT;

fn schemathesis() -> String {
    std::env::var("OC_TEST_SCHEMATHESIS").unwrap_or_else(|_| "st".into())
}

/// Run schemathesis against `base` as `bearer`, with `config` (real ids to reach past 404);
/// the HTTP exchanges are written under `report`.
fn fuzz(base: &str, bearer: &str, config: &Path, report: &Path) -> std::process::Output {
    Command::new(schemathesis())
        .arg("--config-file")
        .arg(config)
        .args(["run", &format!("{base}/openapi.json"), "--url", base])
        .args(["--header", &format!("Authorization: Bearer {bearer}")])
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
        ])
        // Erasing the fuzzing user's own account would end the run early.
        .args(["--exclude-operation-id", "delete /me"])
        // One worker: hypothesis (under schemathesis) describes strategies with a cache that is
        // not safe across threads, and failed a CI run with its own "AST constructor recursion
        // depth mismatch" error under two workers.
        .args(["--max-examples", "25", "--workers", "1", "--request-timeout", "10"])
        .args(["--report", "har", "--report-dir"])
        .arg(report)
        .env("NO_COLOR", "1")
        .output()
        .unwrap_or_else(|e| panic!("schemathesis ({}) must be installed: {e}", schemathesis()))
}

#[tokio::test]
async fn every_endpoint_holds_up_to_fuzzing_and_never_shows_another_organization() {
    let system = System::start().await;
    // Another organization with data worth stealing.
    let bob = system.token("bob").await;
    let (bob_org, bob_ws, bob_session) = system.session_for("bob").await;
    let mut stream = system.watch(&bob, &bob_session).await;
    let secret_prompt = "bob-confidential-roadmap [[fake tokens=2]]";
    let accepted = system.prompt(&bob, &bob_session.id, secret_prompt).await;
    stream.until(WAIT, is_idle).await;
    let bob_id = system.get(&bob, "/me", None).await.body["userID"].as_str().unwrap().to_owned();
    let key =
        system.post(&bob, &format!("/org/{}/api-key", bob_org.id), json!({ "name": "b" })).await;
    // Alice, the fuzzing user, has an organization of her own; the fuzzer gets its ids (and so
    // also reaches what lies behind the 404 of a made-up id).
    let alice = system.token("alice").await;
    let (org, ws, session) = system.session_for("alice").await;
    let alice_id =
        system.get(&alice, "/me", None).await.body["userID"].as_str().unwrap().to_owned();
    let report = std::env::temp_dir().join(format!("oc-fuzz-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&report);
    std::fs::create_dir_all(&report).unwrap();
    let config = report.join("schemathesis.toml");
    std::fs::write(
        &config,
        format!(
            "[parameters]\n\"path.org\" = \"{}\"\n\"path.ws\" = \"{}\"\n\"path.id\" = \"{}\"\n\"path.user\" = \"{alice_id}\"\n",
            org.id, ws.id, session.id
        ),
    )
    .unwrap();
    let har = report.join("har");
    for base in [system.command_url(), system.query_url()] {
        let out = fuzz(base, &alice, &config, &har);
        assert!(
            out.status.success(),
            "schemathesis found problems with {base}:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // Every exchange either service had with the fuzzer (HAR files).
    let mut exchanges = String::new();
    let mut succeeded = 0;
    for entry in std::fs::read_dir(&har).expect("a report was written") {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        let har: serde_json::Value = serde_json::from_str(&text).expect("a HAR file");
        let entries = har["log"]["entries"].as_array().cloned().unwrap_or_default();
        succeeded += entries
            .iter()
            .filter(|e| (200..300).contains(&e["response"]["status"].as_u64().unwrap_or(0)))
            .count();
        exchanges.push_str(&text);
    }
    // The fuzzer got past validation and "not found" into the services' logic.
    assert!(succeeded > 50, "only {succeeded} successful calls");
    // Nothing of bob's in any of them.
    let bobs = [
        bob_org.id.as_str(),
        bob_ws.id.as_str(),
        bob_session.id.as_str(),
        bob_id.as_str(),
        key.body["id"].as_str().unwrap(),
        accepted["userMessageID"].as_str().unwrap(),
        "bob-confidential-roadmap",
        "bob@example.test",
    ];
    for needle in bobs {
        assert!(!exchanges.contains(needle), "an answer to alice contained bob's {needle}");
    }
    let _ = std::fs::remove_dir_all(&report);
}
