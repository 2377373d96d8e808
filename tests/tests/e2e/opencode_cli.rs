//! The stock OpenCode CLI (npm `opencode-ai`, pinned in tests/opencode), unmodified, against the
//! whole system through the deployment's front (nginx): `opencode run --attach <front> -p <key>`
//! prints the streamed reply and exits 0; `--format json` prints OpenCode's event JSON; `-s`
//! continues a session; a model the organization cannot use, or a revoked key, exits non-zero.
//!
//! `opencode run` sends its prompt without waiting for its `/event` stream to connect, and prints
//! only what that stream brings: a reply that ends before the stream begins is not printed (with
//! OpenCode's own server too). Real models take longer to answer than a stream takes to open; on a
//! loaded machine the fake provider need not, so it holds each reply (`hold=`) until the query
//! service has opened the CLI's stream.

use std::process::Output;
use std::time::Duration;

use e2e_tests::front::Front;
use e2e_tests::opencode::{MODEL, OpenCodeUser, PROVIDER, opencode_bin, plain};
use e2e_tests::{System, fake_text};
use serde_json::{Value, json};

/// Longest one CLI run may take.
const RUN: Duration = Duration::from_secs(60);

/// Run `opencode run --attach <front> -p <key> <args…>` with a home of its own.
async fn opencode(front: &Front, key: &str, home: &std::path::Path, args: &[&str]) -> Output {
    let mut cmd = tokio::process::Command::new(opencode_bin());
    cmd.args(["run", "--attach", &front.url, "-p", key])
        .args(args)
        .env("HOME", home)
        .env("OPENCODE_DISABLE_AUTOUPDATE", "true")
        .env("OPENCODE_DISABLE_MODELS_FETCH", "true")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(RUN, cmd.output()).await;
    out.expect("opencode run finished in time").expect("opencode runs")
}

/// `opencode`, with the reply to a prompt carrying `hold=<hold>` released once the CLI's event
/// stream is open (if the CLI ends first, its output is returned as it is).
async fn opencode_streamed(
    system: &System,
    front: &Front,
    key: &str,
    home: &std::path::Path,
    args: &[&str],
    hold: &str,
) -> Output {
    let streams = || async {
        let query = &system.query[0].ops_url;
        system.metric(query, "opencode_event_streams_total").await.unwrap_or(0.0)
    };
    let before = streams().await;
    let release = async {
        e2e_tests::eventually("the CLI's event stream open", RUN, || async {
            (streams().await > before).then_some(())
        })
        .await;
        let url = format!("{}/release/{hold}", system.provider_url);
        let released = system.http.post(url).send().await.expect("the fake provider answers");
        assert!(released.status().is_success(), "{released:?}");
    };
    let run = opencode(front, key, home, args);
    tokio::pin!(run);
    tokio::select! {
        out = &mut run => return out,
        () = release => {}
    }
    run.await
}

fn printed(out: &Output) -> String {
    // Without a terminal it prints plain text, but strip colours all the same.
    plain(&String::from_utf8_lossy(&out.stdout))
}

#[tokio::test]
async fn opencode_run_attaches_prints_the_reply_continues_and_fails_clearly() {
    let system = System::start().await;
    let front = Front::start(&system).await;
    let alice = system.token("alice").await;
    let org = system.create_org(&alice, "Acme").await;
    let ws = system.create_workspace(&alice, &org.id, "main").await;
    let created = system
        .post(
            &alice,
            &format!("/org/{}/api-key", org.id),
            json!({ "name": "cli", "workspaceID": ws.id }),
        )
        .await;
    let key = created.body["key"].as_str().unwrap().to_owned();
    let key_id = created.body["id"].as_str().unwrap().to_owned();
    // (the read models know the new workspace before the CLI looks for it)
    e2e_tests::eventually("the workspace readable", crate::WAIT, || async {
        let a = system.get_as_opencode(&key, "/path", None).await;
        (a.status == 200).then_some(())
    })
    .await;
    let home = std::env::temp_dir().join(format!("oc-e2e-opencode-home-{}", org.id));
    std::fs::create_dir_all(&home).unwrap();

    // A new session: the streamed reply is printed.
    let first = "explain this repository [[fake tokens=5 hold=first]]";
    let out = opencode_streamed(&system, &front, &key, &home, &[first], "first").await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}: {}{stderr}", out.status, printed(&out));
    assert!(printed(&out).contains(fake_text(5).trim()), "{}{stderr}", printed(&out));

    // OpenCode's event JSON; then that session continued with -s.
    let args = ["--format", "json", "again [[fake tokens=3 hold=json]]"];
    let out = opencode_streamed(&system, &front, &key, &home, &args, "json").await;
    assert!(out.status.success(), "{}", printed(&out));
    let events: Vec<Value> =
        printed(&out).lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let text = events.iter().find(|e| e["type"] == "text" && e["part"]["text"] == fake_text(3));
    let session = text.unwrap_or_else(|| panic!("no text event: {events:?}"))["sessionID"]
        .as_str()
        .unwrap()
        .to_owned();
    let args = ["-s", &session, "more [[fake tokens=2 hold=continued]]"];
    let out = opencode_streamed(&system, &front, &key, &home, &args, "continued").await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}: {}{stderr}", out.status, printed(&out));
    assert!(printed(&out).contains(fake_text(2).trim()), "{}{stderr}", printed(&out));
    let messages = system.get(&alice, &format!("/session/{session}/message"), None).await;
    assert_eq!(messages.body.as_array().unwrap().len(), 4, "two prompts, two replies");

    // A model the organization has no connection for, and a revoked key: a clear failure.
    let out = opencode(&front, &key, &home, &["--model", "nope/never", "x"]).await;
    assert!(!out.status.success(), "{}", printed(&out));
    let url = format!("{}/api-key/{key_id}", system.command_url());
    assert_eq!(system.http.delete(&url).bearer_auth(&alice).send().await.unwrap().status(), 200);
    let out = opencode(&front, &key, &home, &["after revocation"]).await;
    assert!(!out.status.success(), "{}", printed(&out));
    let _ = std::fs::remove_dir_all(&home);
}

/// With the organization's own connection: `--model provider/model` answers on that model, and
/// once a budget has no room for a reply, the CLI says so and exits non-zero.
#[tokio::test]
async fn opencode_run_answers_on_the_organizations_model_and_stops_at_its_budget() {
    let system = System::start().await;
    let front = Front::start(&system).await;
    let user = OpenCodeUser::start(&system, "alice", true).await;
    let model = format!("{PROVIDER}/{MODEL}");
    let args = ["--model", &model, "hello [[fake tokens=4 hold=hello]]"];
    let out = opencode_streamed(&system, &front, &user.key, &user.home, &args, "hello").await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}: {}{stderr}", out.status, printed(&out));
    assert!(printed(&out).contains(fake_text(4).trim()), "{}", printed(&out));
    let sessions = system.get_as_opencode(&user.key, "/session", None).await;
    let session = sessions.body[0]["id"].as_str().unwrap().to_owned();
    let messages = system.messages(&user.bearer, &session).await.unwrap();
    assert_eq!(messages[1]["info"]["modelID"], MODEL, "{messages:?}");
    assert_eq!(messages[1]["info"]["providerID"], PROVIDER);
    // -c continues the newest session.
    let args = ["-c", "more [[fake tokens=2 hold=more]]"];
    let out = opencode_streamed(&system, &front, &user.key, &user.home, &args, "more").await;
    assert!(
        out.status.success() && printed(&out).contains(fake_text(2).trim()),
        "{}",
        printed(&out)
    );
    let messages = system.messages(&user.bearer, &session).await.unwrap();
    assert_eq!(messages.len(), 4, "the same session, two prompts and two replies");

    // Priced at $100 per million output tokens, up to 1,000: a reply may cost $0.10, more than
    // a $0.05 budget leaves room for.
    let connection = user.connection.as_deref().unwrap();
    let url = format!("{}/org/{}/provider/{connection}/catalog", system.command_url(), user.org.id);
    let catalog = json!({ "models": { MODEL: {
        "cost": { "input": 0.0, "output": 100.0 }, "limit": { "context": 100000, "output": 1000 } } } });
    let priced = system.http.put(url).bearer_auth(&user.bearer).json(&catalog).send().await;
    assert_eq!(priced.unwrap().status(), 200);
    let budget = json!({ "scope": { "type": "organization" }, "amountUsd": 0.05,
                         "period": { "type": "day" } });
    let set = system.post(&user.bearer, &format!("/org/{}/budget", user.org.id), budget).await;
    assert_eq!(set.status, 201, "{set:?}");
    let out = opencode(&front, &user.key, &user.home, &["over budget [[fake tokens=2]]"]).await;
    let said = format!("{}{}", printed(&out), plain(&String::from_utf8_lossy(&out.stderr)));
    assert!(!out.status.success(), "{said}");
    assert!(said.contains("budget"), "the CLI says why: {said}");
}
