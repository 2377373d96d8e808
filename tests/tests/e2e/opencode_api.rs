//! OpenCode's own clients send a directory (a local path, meaningless here) instead of naming a
//! workspace: `/<workspace id>[/…]` names one, anything else means the API key's default
//! workspace, and a workspace the caller may not read does not exist for them
//! (docs/opencode-clients.md).

use e2e_tests::api::Answer;
use e2e_tests::{System, SystemOptions, eventually};
use serde_json::json;

use crate::WAIT;

/// The ids of the sessions an OpenCode session list answered.
fn ids(answer: &Answer) -> Vec<String> {
    let items = answer.body.as_array().unwrap_or_else(|| panic!("a list: {answer:?}"));
    items.iter().map(|s| s["id"].as_str().unwrap().to_owned()).collect()
}

async fn key(system: &System, bearer: &str, org: &str, body: serde_json::Value) -> Answer {
    system.post(bearer, &format!("/org/{org}/api-key"), body).await
}

#[tokio::test]
async fn opencode_clients_see_the_sessions_of_the_workspace_their_directory_or_key_names() {
    let system = System::start().await;
    let alice = system.token("alice").await;
    let org = system.create_org(&alice, "Acme").await;
    let (one, two) = (
        system.create_workspace(&alice, &org.id, "one").await,
        system.create_workspace(&alice, &org.id, "two").await,
    );
    let (s1, s2) = (
        system.create_session(&alice, &one.id).await,
        system.create_session(&alice, &two.id).await,
    );
    let with_default =
        key(&system, &alice, &org.id, json!({ "name": "cli", "workspaceID": one.id })).await;
    assert_eq!(with_default.status, 201, "{with_default:?}");
    let keyed = with_default.body["key"].as_str().unwrap().to_owned();
    let plain = key(&system, &alice, &org.id, json!({ "name": "plain" })).await;
    let plain = plain.body["key"].as_str().unwrap().to_owned();

    // No directory, `/`, or a local path: the key's default workspace.
    for directory in [None, Some("/"), Some("/home/alice/src/acme")] {
        let listed = eventually("the first workspace's sessions", WAIT, || async {
            let a = system.get_as_opencode(&keyed, "/session", directory).await;
            (a.status == 200 && !ids(&a).is_empty()).then_some(a)
        })
        .await;
        assert_eq!(ids(&listed), vec![s1.id.clone()], "directory {directory:?}");
        assert_eq!(listed.body[0]["directory"], format!("/{}", one.id));
    }
    // A directory naming a workspace: that one, from the header or the query.
    let two_dir = format!("/{}/services/api", two.id);
    let listed = eventually("the second workspace's sessions", WAIT, || async {
        let a = system.get_as_opencode(&keyed, "/session", Some(&two_dir)).await;
        (a.status == 200 && !ids(&a).is_empty()).then_some(a)
    })
    .await;
    assert_eq!(ids(&listed), vec![s2.id.clone()]);
    let query = format!("/session?directory=/{}", two.id);
    assert_eq!(ids(&system.get_as_opencode(&keyed, &query, None).await), vec![s2.id.clone()]);
    let session = system.get_as_opencode(&keyed, &format!("/session/{}", s2.id), None).await;
    assert_eq!(session.body["directory"], format!("/{}", two.id));
    assert_eq!(session.body["slug"], s2.id.as_str());
    let path = system.get_as_opencode(&keyed, "/path", None).await;
    assert_eq!(path.body["directory"], format!("/{}", one.id), "{path:?}");
    let config = system.get_as_opencode(&keyed, "/config", Some(&two_dir)).await;
    assert_eq!(config.body["share"], "disabled", "{config:?}");

    // A key without a default workspace must name one.
    let unnamed = system.get_as_opencode(&plain, "/session", Some("/home/alice")).await;
    assert!(unnamed.is_problem(400), "{unnamed:?}");
    assert_eq!(
        ids(&system.get_as_opencode(&plain, "/session", Some(&two_dir)).await),
        vec![s2.id.clone()]
    );

    // Another organization's key reaches none of it, whatever directory it sends; nor can a key
    // default to another organization's workspace.
    let bob = system.token("bob").await;
    let bobs = system.create_org(&bob, "Bobco").await;
    let bobs_ws = system.create_workspace(&bob, &bobs.id, "b").await;
    let stolen_default =
        key(&system, &bob, &bobs.id, json!({ "name": "x", "workspaceID": one.id })).await;
    assert!(stolen_default.is_problem(404), "{stolen_default:?}");
    let bobs_key =
        key(&system, &bob, &bobs.id, json!({ "name": "b", "workspaceID": bobs_ws.id })).await;
    let bobs_key = bobs_key.body["key"].as_str().unwrap().to_owned();
    for directory in [format!("/{}", one.id), two_dir.clone()] {
        let a = system.get_as_opencode(&bobs_key, "/session", Some(&directory)).await;
        assert!(a.is_problem(404), "{directory}: {a:?}");
        let p = system.get_as_opencode(&bobs_key, "/path", Some(&directory)).await;
        assert!(p.is_problem(404), "{directory}: {p:?}");
    }
    let own = system.get_as_opencode(&bobs_key, "/session", None).await;
    assert_eq!(own.status, 200, "{own:?}");
    assert!(ids(&own).is_empty(), "bob's own workspace has no session: {own:?}");

    // Sessions created as `opencode run --attach` does (permission rules, no directory) land in
    // the key's default workspace; with a directory, in the one it names; never in another
    // organization's.
    let rules =
        json!({ "permission": [{ "permission": "question", "action": "deny", "pattern": "*" }] });
    let created = system.post_as_opencode(&keyed, "/session", None, rules.clone()).await;
    assert_eq!(created.status, 200, "{created:?}");
    assert_eq!(created.body["directory"], format!("/{}", one.id));
    assert!(created.body["title"].as_str().unwrap().starts_with("New session - "));
    let new_id = created.body["id"].as_str().unwrap().to_owned();
    eventually("the new session listed in its workspace", WAIT, || async {
        let a = system.get_as_opencode(&keyed, "/session", None).await;
        ids(&a).contains(&new_id).then_some(())
    })
    .await;
    let titled = json!({ "title": "Explain the repository", "permission": [] });
    let in_two = system.post_as_opencode(&keyed, "/session", Some(&two_dir), titled).await;
    assert_eq!(in_two.body["directory"], format!("/{}", two.id), "{in_two:?}");
    assert_eq!(in_two.body["title"], "Explain the repository");
    let foreign =
        system.post_as_opencode(&bobs_key, "/session", Some(&two_dir), rules.clone()).await;
    assert!(foreign.is_problem(404), "{foreign:?}");
    let child =
        system.post_as_opencode(&keyed, "/session", None, json!({ "parentID": s1.id })).await;
    assert!(child.is_problem(400), "{child:?}");
    let unnamed = system.post_as_opencode(&plain, "/session", None, rules).await;
    assert!(unnamed.is_problem(400), "{unnamed:?}");

    // The key's listing shows its default workspace.
    let listed = eventually("the key listed", WAIT, || async {
        let a = system.get(&alice, "/me/api-key", None).await;
        let items = a.body["items"].as_array()?.clone();
        items.into_iter().find(|k| k["name"] == "cli")
    })
    .await;
    assert_eq!(listed["workspaceID"], one.id.as_str());
}

/// A user of one organization with an API key whose default workspace is `ws`: (bearer, key, ws).
async fn keyed_user(system: &System, user: &str) -> (String, String, String) {
    let bearer = system.token(user).await;
    let org = system.create_org(&bearer, &format!("{user}'s")).await;
    let ws = system.create_workspace(&bearer, &org.id, "main").await;
    let created =
        key(system, &bearer, &org.id, json!({ "name": "cli", "workspaceID": ws.id })).await;
    (bearer, created.body["key"].as_str().unwrap().to_owned(), ws.id)
}

async fn opencode_session(system: &System, key: &str) -> String {
    let created = system.post_as_opencode(key, "/session", None, json!({ "permission": [] })).await;
    assert_eq!(created.status, 200, "{created:?}");
    created.body["id"].as_str().unwrap().to_owned()
}

/// Alice's key, a session of hers, and her workspace's `/event` (its URL, and the stream read
/// past `server.connected`).
async fn following(system: &System) -> (String, String, String, e2e_tests::sse::SseClient) {
    let (_, key, ws) = keyed_user(system, "alice").await;
    let session = opencode_session(system, &key).await;
    let url = format!("{}/event?directory=/{ws}", system.query_url());
    let mut events = e2e_tests::sse::SseClient::connect(&url, &key, None).await.expect("/event");
    assert_eq!(events.next(WAIT).await.data["type"], "server.connected");
    (key, session, url, events)
}

fn text_prompt(text: &str) -> serde_json::Value {
    json!({ "parts": [{ "type": "text", "text": text }] })
}

/// OpenCode's `POST /session/{id}/message` answers once the reply is complete, with the reply;
/// a user may keep only a few such requests waiting (the rest 429, not queued); another
/// organization's key gets 404 and prompts nothing.
#[tokio::test]
async fn a_synchronous_prompt_answers_with_the_completed_reply() {
    let system = System::start().await;
    let (_, key, _) = keyed_user(&system, "alice").await;
    let session = opencode_session(&system, &key).await;
    let path = format!("/session/{session}/message");
    let answer =
        system.post_as_opencode(&key, &path, None, text_prompt("q [[fake tokens=6]]")).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    let info = &answer.body["info"];
    assert_eq!(info["role"], "assistant");
    assert_eq!(info["sessionID"], session.as_str());
    assert_eq!(info["finish"], "stop");
    assert!(info["parentID"].is_string() && info["time"]["completed"].is_i64(), "{info}");
    let text = answer.body["parts"].as_array().unwrap().iter().find(|p| p["type"] == "text");
    assert_eq!(text.unwrap()["text"], e2e_tests::fake_text(6));
    // Read your writes: the session's messages, read at once, have the reply.
    let listed = system.get_as_opencode(&key, &format!("/session/{session}/message"), None).await;
    let items = listed.body.as_array().unwrap();
    assert!(
        items.iter().any(|m| m["info"]["id"] == info["id"] && m["info"]["finish"] == "stop"),
        "{listed:?}"
    );

    let (_, bobs_key, _) = keyed_user(&system, "bob").await;
    let foreign = system.post_as_opencode(&bobs_key, &path, None, text_prompt("x")).await;
    assert!(foreign.is_problem(404), "{foreign:?}");

    // Nine slow replies at once, each in its own session: eight wait, the ninth is refused.
    let mut sessions = Vec::new();
    for _ in 0..9 {
        sessions.push(opencode_session(&system, &key).await);
    }
    let slow = text_prompt("slow [[fake tokens=10 delay_ms=300]]");
    let waits =
        sessions.iter().map(|s| {
            let (system, key, body) = (&system, &key, slow.clone());
            async move {
                system.post_as_opencode(key, &format!("/session/{s}/message"), None, body).await
            }
        });
    let answers = futures::future::join_all(waits).await;
    let statuses: Vec<u16> = answers.iter().map(|a| a.status).collect();
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 8, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 1, "{statuses:?}");
}

/// A reply longer than a synchronous prompt may wait: 504, and the reply goes on to completion.
#[tokio::test]
async fn a_synchronous_prompt_that_waits_too_long_gets_504_and_the_reply_goes_on() {
    let system = System::start_with(SystemOptions {
        service_env: vec![("OC_SYNC_PROMPT_WAIT_SECS", "1".into())],
        ..Default::default()
    })
    .await;
    let (bearer, key, _) = keyed_user(&system, "alice").await;
    let session = opencode_session(&system, &key).await;
    let path = format!("/session/{session}/message");
    let slow = text_prompt("slow [[fake tokens=10 delay_ms=300]]");
    let answer = system.post_as_opencode(&key, &path, None, slow).await;
    assert!(answer.is_problem(504), "{answer:?}");
    eventually("the reply completed and stored", WAIT, || async {
        let page = system.get(&bearer, &format!("/session/{session}/message"), None).await;
        let items = page.body.as_array()?.clone();
        items
            .iter()
            .any(|m| m["info"]["role"] == "assistant" && m["info"]["finish"] == "stop")
            .then_some(())
    })
    .await;
}

/// OpenCode's `/event` of a workspace carries its sessions' replies in OpenCode's shapes: the
/// reply announced (`message.updated`), its deltas, its text part ended (`message.part.updated`
/// with `time.end`, what `opencode run` prints), then `session.status` idle and `session.idle`.
/// Another organization's key cannot follow the workspace.
#[tokio::test]
async fn the_workspace_event_stream_speaks_opencodes_events() {
    let system = System::start().await;
    let (key, session, url, mut events) = following(&system).await;

    let path = format!("/session/{session}/message");
    let answer =
        system.post_as_opencode(&key, &path, None, text_prompt("q [[fake tokens=4]]")).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    let reply = answer.body["info"]["id"].as_str().unwrap().to_owned();
    let seen = events
        .until(WAIT, |e| {
            e.data["type"] == "session.idle"
                && e.data["properties"]["sessionID"] == session.as_str()
        })
        .await;
    fn of<'a>(
        seen: &'a [e2e_tests::sse::Event],
        kind: &'a str,
    ) -> impl Iterator<Item = &'a serde_json::Value> {
        seen.iter().filter(move |e| e.data["type"] == kind).map(|e| &e.data["properties"])
    }
    assert!(
        of(&seen, "message.updated")
            .any(|p| p["info"]["id"] == reply.as_str() && p["info"]["role"] == "assistant")
    );
    assert!(of(&seen, "message.part.delta").any(|p| p["messageID"] == reply.as_str()), "{seen:?}");
    let ended = of(&seen, "message.part.updated")
        .map(|p| &p["part"])
        .find(|p| {
            p["messageID"] == reply.as_str() && p["type"] == "text" && p["time"]["end"].is_i64()
        })
        .unwrap_or_else(|| panic!("no ended text part: {seen:?}"));
    assert_eq!(ended["sessionID"], session.as_str());
    assert_eq!(ended["text"], e2e_tests::fake_text(4));
    assert!(of(&seen, "session.status").any(|p| p["status"]["type"] == "idle"));

    let (_, bobs_key, _) = keyed_user(&system, "bob").await;
    let refused = e2e_tests::sse::SseClient::connect(&url, &bobs_key, None).await;
    assert!(matches!(refused, Err((404, _))), "another organization's key followed the workspace");
}

/// `opencode run` exits on its synchronous prompt's answer, printing only what its `/event`
/// stream brought by then: the answer waits until the asker's stream has been sent the reply,
/// even when the read models show it first (here the query service is paused meanwhile). With
/// the deployment's NATS users and permissions, which must let the receipts through. This
/// stream was open before the prompt: it answered the prompt's roll call.
#[tokio::test]
async fn a_synchronous_answer_comes_after_the_askers_event_stream_was_sent_the_reply() {
    let system = System::start_with(SystemOptions { nats_auth: true, ..Default::default() }).await;
    let (key, session, _, mut events) = following(&system).await;

    // The stream has been sent the prompt, then its service pauses.
    let path = format!("/session/{session}/message");
    let prompt = text_prompt("q [[fake tokens=3 hold=paused]]");
    let answer = system.post_as_opencode(&key, &path, None, prompt);
    tokio::pin!(answer);
    let prompted = events.until(WAIT, |e| {
        e.data["type"] == "message.updated" && e.data["properties"]["info"]["role"] == "user"
    });
    tokio::select! {
        early = &mut answer => panic!("answered before the reply was released: {early:?}"),
        _ = prompted => {}
    }
    answered_after_the_paused_stream(&system, &session, "paused", answer, &mut events).await;
}

/// `opencode run` opens its stream as it prompts; on a busy machine the stream may open after
/// the prompt was accepted, and may not yet have been sent any event of the session when the
/// reply completes. It said it was open as it opened, and the answer waits for it all the same.
#[tokio::test]
async fn a_synchronous_answer_waits_for_a_stream_that_opened_after_the_prompt() {
    let system = System::start_with(SystemOptions { nats_auth: true, ..Default::default() }).await;
    let (_, key, ws) = keyed_user(&system, "alice").await;
    let session = opencode_session(&system, &key).await;
    let path = format!("/session/{session}/message");
    let prompt = text_prompt("q [[fake tokens=3 hold=late]]");
    let answer = system.post_as_opencode(&key, &path, None, prompt);
    tokio::pin!(answer);
    // (the read models have the prompt: it went past the query service before the stream began)
    let db = system.db().await;
    let accepted = || async {
        let sql = "SELECT count(*) FROM rm_messages WHERE session_id = $1 AND role = 'user'";
        (db.query_one(sql, &[&session]).await.unwrap().get::<_, i64>(0) == 1).then_some(())
    };
    tokio::select! {
        early = &mut answer => panic!("answered before the reply was released: {early:?}"),
        () = eventually("the prompt accepted", WAIT, accepted) => {}
    }
    let url = format!("{}/event?directory=/{ws}", system.query_url());
    let mut events = e2e_tests::sse::SseClient::connect(&url, &key, None).await.expect("/event");
    assert_eq!(events.next(WAIT).await.data["type"], "server.connected");
    answered_after_the_paused_stream(&system, &session, "late", answer, &mut events).await;
}

/// Pause the query service and release the reply held as `hold`: the read models show it, yet
/// `answer` waits; once the service goes on, the answer is the reply and `events` has its text.
async fn answered_after_the_paused_stream(
    system: &System,
    session: &str,
    hold: &str,
    mut answer: std::pin::Pin<&mut impl std::future::Future<Output = Answer>>,
    events: &mut e2e_tests::sse::SseClient,
) {
    let query = &system.query[0].proc;
    query.signal(nix::sys::signal::Signal::SIGSTOP);
    let release = format!("{}/release/{hold}", system.provider_url);
    assert!(system.http.post(release).send().await.unwrap().status().is_success());

    // The read models show the reply; the answer still waits for the stream.
    let db = system.db().await;
    let shown = || async {
        let sql = "SELECT count(*) FROM rm_messages WHERE session_id = $1 AND role = 'assistant' \
                   AND info->>'finish' = 'stop'";
        (db.query_one(sql, &[&session]).await.unwrap().get::<_, i64>(0) == 1).then_some(())
    };
    tokio::select! {
        early = &mut answer => {
            query.signal(nix::sys::signal::Signal::SIGCONT);
            panic!("answered before the stream was sent the reply: {early:?}");
        }
        () = eventually("the read models show the reply", WAIT, shown) => {}
    }
    query.signal(nix::sys::signal::Signal::SIGCONT);
    let answer = answer.await;
    assert_eq!(answer.status, 200, "{answer:?}");
    let reply = answer.body["info"]["id"].as_str().unwrap().to_owned();
    let ended = events.until(WAIT, |e| {
        e.data["type"] == "message.part.updated"
            && e.data["properties"]["part"]["messageID"] == reply.as_str()
            && e.data["properties"]["part"]["time"]["end"].is_i64()
    });
    assert_eq!(
        ended.await.last().unwrap().data["properties"]["part"]["text"],
        e2e_tests::fake_text(3)
    );
}

#[tokio::test]
async fn a_sessions_messages_come_newest_page_first_each_page_oldest_first() {
    let system = System::start().await;
    let alice = system.token("alice").await;
    let (_, _, session) = system.session_for("alice").await;
    let mut stream = system.watch(&alice, &session).await;
    for n in 1..=3 {
        system.prompt(&alice, &session.id, &format!("prompt {n} [[fake tokens=1]]")).await;
        stream.until(WAIT, e2e_tests::sse::is_idle).await;
    }
    let all = eventually("six messages", WAIT, || async {
        let all = system.messages(&alice, &session.id).await?;
        (all.len() == 6 && !all[5]["info"]["finish"].is_null()).then_some(all)
    })
    .await;
    let prompts: Vec<&str> =
        all.iter().step_by(2).map(|m| m["parts"][0]["text"].as_str().unwrap()).collect();
    assert!(prompts[0].starts_with("prompt 1") && prompts[2].starts_with("prompt 3"));

    // OpenCode asks for the newest `limit`; older pages are linked.
    let url = format!("{}/session/{}/message?limit=4", system.query_url(), session.id);
    let newest = system.http.get(url).bearer_auth(&alice).send().await.unwrap();
    let link = newest.headers()["link"].to_str().unwrap().to_owned();
    let newest: Vec<serde_json::Value> = newest.json().await.unwrap();
    assert_eq!(newest, all[2..], "the newest four, oldest first");
    let older = link.split(';').next().unwrap().trim_matches(['<', '>']);
    let older = system.http.get(format!("{}{older}", system.query_url())).bearer_auth(&alice);
    let older = older.send().await.unwrap();
    assert!(older.headers().get("link").is_none(), "the first page links no further");
    let older: Vec<serde_json::Value> = older.json().await.unwrap();
    assert_eq!(older, all[..2]);
}

/// Every read OpenCode's clients make, asked with another organization's key: naming the first
/// organization's workspace (by directory or by OpenCode's `?workspace=`) is 404, and with the
/// key's own workspace nothing of the first organization appears.
#[tokio::test]
async fn another_organizations_key_sees_nothing_of_it_through_any_opencode_read() {
    let system = System::start().await;
    let (_, alices_key, alices_ws) = keyed_user(&system, "alice").await;
    let session = opencode_session(&system, &alices_key).await;
    let busy = text_prompt("busy for a while [[fake tokens=200 delay_ms=50]]");
    let accepted = system
        .post_as_opencode(&alices_key, &format!("/session/{session}/prompt_async"), None, busy)
        .await;
    assert_eq!(accepted.status, 202, "{accepted:?}");
    let (_, bobs_key, _) = keyed_user(&system, "bob").await;
    let reads = [
        "/session",
        "/path",
        "/config",
        "/config/providers",
        "/provider",
        "/agent",
        "/session/status",
        "/project/current",
        "/command",
        "/lsp",
        "/formatter",
        "/mcp",
        "/experimental/resource",
        "/provider/auth",
        "/vcs",
        "/experimental/workspace",
        "/experimental/workspace/status",
    ];
    let alices_dir = format!("/{alices_ws}");
    for path in reads {
        // Alice's own key reads them all.
        let own = system.get_as_opencode(&alices_key, path, None).await;
        assert_eq!(own.status, 200, "{path}: {own:?}");
        let named = system.get_as_opencode(&bobs_key, path, Some(&alices_dir)).await;
        assert!(named.is_problem(404), "{path} with alice's directory: {named:?}");
        let by_workspace = format!("{path}?workspace={alices_ws}");
        let named = system.get_as_opencode(&bobs_key, &by_workspace, None).await;
        assert!(named.is_problem(404), "{path}?workspace=: {named:?}");
        let own = system.get_as_opencode(&bobs_key, path, None).await;
        assert_eq!(own.status, 200, "{path}: {own:?}");
        let body = own.body.to_string();
        assert!(!body.contains(&session) && !body.contains(&alices_ws), "{path}: {body}");
    }
    // (alice's session was busy all along: her status read shows it)
    eventually("alice's session busy", WAIT, || async {
        let status = system.get_as_opencode(&alices_key, "/session/status", None).await;
        (status.body[&session]["type"] == "busy").then_some(())
    })
    .await;
    for path in [format!("/session/{session}"), format!("/session/{session}/message")] {
        let foreign = system.get_as_opencode(&bobs_key, &path, None).await;
        assert!(foreign.is_problem(404), "{path}: {foreign:?}");
    }
}
