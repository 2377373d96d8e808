//! OpenCode's JavaScript SDK (npm `@opencode-ai/sdk`, the version of the pinned `opencode-ai`)
//! pointed at the service through the deployment's front: tests/opencode/sdk-check.mjs lists
//! sessions, creates one, prompts it synchronously and asynchronously, follows `/event` and
//! `/global/event`, reads its messages and aborts a reply, as a user's script would.

use std::time::Duration;

use e2e_tests::System;
use e2e_tests::fake_text;
use e2e_tests::front::Front;
use e2e_tests::opencode::{OpenCodeUser, clients_dir};
use serde_json::Value;

#[tokio::test]
async fn the_opencode_sdk_lists_creates_prompts_follows_reads_and_aborts() {
    let system = System::start().await;
    let front = Front::start(&system).await;
    let user = OpenCodeUser::start(&system, "alice", true).await;

    let mut cmd = tokio::process::Command::new("node");
    cmd.arg("sdk-check.mjs")
        .current_dir(clients_dir())
        .env("OC_URL", &front.url)
        .env("OC_KEY", &user.key)
        .env("OC_PROMPT_SHORT", "hello [[fake tokens=5]]")
        .env("OC_PROMPT_LONG", "a long one [[fake tokens=400 delay_ms=50]]")
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(90), cmd.output()).await;
    let out = out.expect("the SDK script finished in time").expect("node runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}: {stderr}", out.status);
    let summary: Value = serde_json::from_slice(&out.stdout).expect("one JSON summary");

    assert_eq!(summary["sessionsBefore"], 0, "a new workspace has no sessions");
    assert_eq!(summary["directory"], format!("/{}", user.workspace.id));
    assert_eq!(summary["promptText"], fake_text(5), "prompt answers with the reply");
    let messages = summary["messages"].as_array().unwrap();
    let roles: Vec<&str> = messages.iter().map(|m| m["role"].as_str().unwrap()).collect();
    assert_eq!(roles, ["user", "assistant", "user", "assistant"]);
    assert_eq!(messages[1]["text"], fake_text(5));
    assert_eq!(messages[3]["error"], "MessageAbortedError", "the second reply was aborted");
    let streamed = messages[3]["text"].as_str().unwrap();
    assert!(fake_text(400).starts_with(streamed) && streamed.len() < fake_text(400).len());
    let types: Vec<&str> =
        summary["eventTypes"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
    for wanted in ["message.updated", "message.part.updated", "message.part.delta", "session.idle"]
    {
        assert!(types.contains(&wanted), "{wanted} missing from /event: {types:?}");
    }
    assert_eq!(
        summary["globalDirectories"],
        serde_json::json!([format!("/{}", user.workspace.id)])
    );

    // What the SDK did is what our own API shows.
    let session = summary["session"].as_str().unwrap();
    let listed = system.get(&user.bearer, &format!("/session/{session}/message"), None).await;
    assert_eq!(listed.body.as_array().unwrap().len(), 4);
}
