//! Tenant isolation: another organization's resources are indistinguishable from missing ones,
//! and nothing is reachable without a valid token.

use e2e_tests::System;
use e2e_tests::sse::SseClient;
use schemas::ids::{SessionId, WorkspaceId};
use serde_json::json;

#[tokio::test]
async fn a_user_of_another_organization_gets_404_for_everything_and_changes_nothing() {
    let system = System::start().await;
    let (alice_org, alice_ws, alice_session) = system.session_for("alice").await;
    let bob = system.token("bob").await;
    let (bob_org, _, _) = system.session_for("bob").await;
    let before = system.event_count().await;
    // Wait until alice's resources are visible to alice, so a 404 for bob is not just lag.
    let alice = system.token("alice").await;
    assert_eq!(
        system
            .get(&alice, &format!("/session/{}", alice_session.id), Some(&alice_session.token))
            .await
            .status,
        200
    );

    let missing_ws = WorkspaceId::new();
    let missing_session = SessionId::new();
    let reads = [
        (
            format!("/org/{}/workspace", alice_org.id),
            format!("/org/{}/workspace", "org_01JZZZZZZZZZZZZZZZZZZZZZZZ"),
        ),
        (format!("/workspace/{}/session", alice_ws.id), format!("/workspace/{missing_ws}/session")),
        (format!("/session/{}", alice_session.id), format!("/session/{missing_session}")),
        (
            format!("/session/{}/message", alice_session.id),
            format!("/session/{missing_session}/message"),
        ),
    ];
    for (theirs, missing) in &reads {
        let a = system.get(&bob, theirs, None).await;
        let b = system.get(&bob, missing, None).await;
        assert!(a.is_problem(404), "{theirs}: {a:?}");
        assert_eq!(
            (a.status, &a.body),
            (b.status, &b.body),
            "another tenant's {theirs} looks missing"
        );
    }
    let stream = format!("{}/session/{}/event", system.query_url(), alice_session.id);
    let Err((status, _)) = SseClient::connect(&stream, &bob, None).await else {
        panic!("bob streamed alice's session")
    };
    assert_eq!(status, 404);

    let writes = [
        (format!("/org/{}/workspace", alice_org.id), json!({ "name": "intruder" })),
        (
            format!("/org/{}/member", alice_org.id),
            json!({ "userID": "usr_01JZZZZZZZZZZZZZZZZZZZZZZZ", "role": "owner" }),
        ),
        (format!("/workspace/{}/session", alice_ws.id), json!({})),
        (
            format!("/session/{}/prompt_async", alice_session.id),
            json!({ "parts": [{ "type": "text", "text": "hi" }] }),
        ),
        (format!("/session/{}/abort", alice_session.id), json!({})),
    ];
    for (path, body) in writes {
        let a = system.post(&bob, &path, body).await;
        assert!(a.is_problem(404), "{path}: {a:?}");
    }
    assert_eq!(system.event_count().await, before, "no write happened");

    // Bob's listing shows only his own organization.
    let orgs = system.get(&bob, "/org", Some(&bob_org.token)).await;
    let ids: Vec<&str> =
        orgs.body["items"].as_array().unwrap().iter().map(|o| o["id"].as_str().unwrap()).collect();
    assert_eq!(ids, [bob_org.id.as_str()]);
}

#[tokio::test]
async fn a_member_added_by_the_owner_can_work_in_the_organization() {
    let system = System::start().await;
    let (org, ws, _) = system.session_for("alice").await;
    let alice = system.token("alice").await;
    let bob = system.token("bob").await;
    let me = system.get(&bob, "/me", None).await;
    let bob_id = me.body["userID"].as_str().unwrap();
    let added = system
        .post(
            &alice,
            &format!("/org/{}/member", org.id),
            json!({ "userID": bob_id, "role": "member" }),
        )
        .await;
    assert_eq!(added.status, 201, "{added:?}");
    let token = added.body["consistencyToken"].as_str().unwrap();
    let list = system.get(&bob, &format!("/org/{}/workspace", org.id), Some(token)).await;
    assert_eq!(list.body["items"][0]["id"], ws.id);
    // An organization member works in the workspaces they belong to.
    let refused = system.post(&bob, &format!("/workspace/{}/session", ws.id), json!({})).await;
    assert!(refused.is_problem(403), "{refused:?}");
    let joined = system
        .http
        .put(format!("{}/workspace/{}/member/{bob_id}", system.command_url(), ws.id))
        .bearer_auth(&alice)
        .json(&json!({ "role": "member" }))
        .send()
        .await
        .unwrap();
    assert_eq!(joined.status(), 200);
    system.create_session(&bob, &ws.id).await;
}

#[tokio::test]
async fn requests_without_a_valid_token_are_401() {
    let system = System::start().await;
    let alice = system.token("alice").await;
    let (_, _, session) = system.session_for("alice").await;
    // Change a character inside the signature (the last one may only carry padding bits).
    let at = alice.len() - 10;
    let swapped = if &alice[at..=at] == "A" { "B" } else { "A" };
    let forged = format!("{}{swapped}{}", &alice[..at], &alice[at + 1..]);
    for bad in ["", "not-a-jwt", forged.as_str()] {
        let r = system
            .http
            .get(format!("{}/session/{}", system.query_url(), session.id))
            .bearer_auth(bad)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "token {bad:?}");
        let w = system.post(bad, "/org", json!({ "name": "x" })).await;
        assert!(w.is_problem(401), "{w:?}");
    }
    let r = system.http.get(format!("{}/org", system.query_url())).send().await.unwrap();
    assert_eq!(r.status(), 401);
    // Operational endpoints stay open for probes (on their own listener).
    let r = system.http.get(format!("{}/healthz", system.query[0].ops_url)).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn row_level_security_holds_when_a_query_forgets_the_organization() {
    let system = System::start().await;
    let (_, _, alice_session) = system.session_for("alice").await;
    let (_, _, bob_session) = system.session_for("bob").await;
    let alice = system.token("alice").await;
    let bob = system.token("bob").await;
    // Both sessions are in the read models.
    assert_eq!(
        system
            .get(&alice, &format!("/session/{}", alice_session.id), Some(&alice_session.token))
            .await
            .status,
        200
    );
    assert_eq!(
        system
            .get(&bob, &format!("/session/{}", bob_session.id), Some(&bob_session.token))
            .await
            .status,
        200
    );
    let bob_id = system.get(&bob, "/me", None).await.body["userID"].as_str().unwrap().to_owned();

    // Read as the query service does, on bob's behalf, with queries that forget the scope.
    let db = system.db().await;
    db.execute(
        "SELECT set_config('role', 'oc_reader', false), set_config('oc.user_id', $1, false)",
        &[&bob_id],
    )
    .await
    .unwrap();
    let sessions: Vec<String> = db
        .query("SELECT session_id FROM rm_sessions", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(sessions, vec![bob_session.id.clone()], "only bob's organization is visible");
    for table in ["rm_organizations", "rm_members", "rm_workspaces", "rm_messages"] {
        let foreign: i64 = db
            .query_one(&format!("SELECT count(*) FROM {table} WHERE organization_id <> ALL (oc_caller_organizations())"), &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(foreign, 0, "{table}");
    }
    // And the restricted role cannot write.
    let write = db.execute("DELETE FROM rm_sessions", &[]).await;
    assert!(write.is_err(), "oc_reader cannot modify read models");

    // The role the query service itself logs in as, with raw SQL: no superuser, no way out of
    // row-level security, nothing at all before a caller is bound.
    let url = system.db_url.replacen("postgres://postgres@", "postgres://oc_query_reader@", 1);
    let (reader, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    let row = reader
        .query_one("SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = current_user", &[])
        .await
        .unwrap();
    assert_eq!((row.get::<_, bool>(0), row.get::<_, bool>(1)), (false, false));
    let unbound: i64 =
        reader.query_one("SELECT count(*) FROM rm_sessions", &[]).await.unwrap().get(0);
    assert_eq!(unbound, 0, "an unbound connection sees no tenant");
    for escape in
        ["SET ROLE postgres", "SELECT count(*) FROM events", "SELECT count(*) FROM api_keys"]
    {
        assert!(reader.simple_query(escape).await.is_err(), "{escape}");
    }
    reader.execute("SELECT set_config('oc.user_id', $1, false)", &[&bob_id]).await.unwrap();
    let seen: Vec<String> = reader
        .query("SELECT session_id FROM rm_sessions", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(seen, vec![bob_session.id.clone()]);
}

#[tokio::test]
async fn no_state_check_or_key_scope_answers_before_not_found() {
    let system = System::start().await;
    let alice = system.token("alice").await;
    let bob = system.token("bob").await;
    let (alice_org, alice_ws, _) = system.session_for("alice").await;
    let archived =
        system.post(&alice, &format!("/workspace/{}/archive", alice_ws.id), json!({})).await;
    assert_eq!(archived.status, 200, "{archived:?}");
    let token = archived.body["consistencyToken"].as_str().unwrap().to_owned();
    assert_eq!(
        system.get(&alice, &format!("/workspace/{}", alice_ws.id), Some(&token)).await.status,
        200
    );

    // A stranger: an archived workspace is as missing as any other.
    let again = system.post(&bob, &format!("/workspace/{}/archive", alice_ws.id), json!({})).await;
    assert!(again.is_problem(404), "{again:?}");

    // Bob's API key for his own organization, used in alice's, where bob is a mere viewer:
    // whatever the request, alice's organization does not exist for the key.
    let bob_id = system.get(&bob, "/me", None).await.body["userID"].as_str().unwrap().to_owned();
    let added = system
        .post(
            &alice,
            &format!("/org/{}/member", alice_org.id),
            json!({ "userID": bob_id, "role": "viewer" }),
        )
        .await;
    assert_eq!(added.status, 201, "{added:?}");
    let bob_org = system.create_org(&bob, "Bob's").await;
    let key =
        system.post(&bob, &format!("/org/{}/api-key", bob_org.id), json!({ "name": "ci" })).await;
    let key = key.body["key"].as_str().unwrap().to_owned();
    let members = system
        .get(
            &alice,
            &format!("/org/{}/member", alice_org.id),
            added.body["consistencyToken"].as_str(),
        )
        .await;
    assert_eq!(members.status, 200);
    let attempts = [
        (format!("/org/{}/workspace", alice_org.id), json!({ "name": "x" })), // viewer: 403
        (format!("/org/{}/workspace", alice_org.id), json!({ "name": "" })),  // invalid: 400
        (format!("/workspace/{}/archive", alice_ws.id), json!({})),           // archived: 409
        (format!("/workspace/{}/session", alice_ws.id), json!({})),           // archived: 409
        (format!("/org/{}", alice_org.id), json!({ "name": "renamed" })),     // viewer: 403
    ];
    for (path, body) in attempts {
        let a = if path.ends_with(&alice_org.id) {
            let res = system
                .http
                .patch(format!("{}{path}", system.command_url()))
                .bearer_auth(&key)
                .json(&body)
                .send()
                .await
                .unwrap();
            res.status().as_u16()
        } else {
            system.post(&key, &path, body).await.status
        };
        assert_eq!(a, 404, "{path}");
    }
    for path in [format!("/org/{}/member", alice_org.id), format!("/org/{}/audit", alice_org.id)] {
        assert!(system.get(&key, &path, None).await.is_problem(404), "{path}");
    }
}

/// A reader connection goes back to the pool only once its caller's binding is undone (after the
/// request, off its path): the next read on that connection, bound or not, is not the last
/// caller's.
#[tokio::test]
async fn a_pooled_reader_connection_forgets_its_last_caller() {
    let system = System::start().await;
    let pool = reader_pool_of_one(&system);
    let bound = platform::db::bind(&pool, "usr_bob", "org_bobs").await.unwrap();
    let row = bound.query_one(CALLER, &[]).await.unwrap();
    let (pid, user, scope): (i32, String, String) = (row.get(0), row.get(1), row.get(2));
    assert_eq!((user.as_str(), scope.as_str()), ("usr_bob", "org_bobs"));
    drop(bound);
    // The pool's one connection, once it is back (the pool waits for it).
    let next = pool.get().await.unwrap();
    let row = next.query_one(CALLER, &[]).await.unwrap();
    let seen: (i32, String, String) = (row.get(0), row.get(1), row.get(2));
    assert_eq!(seen, (pid, String::new(), String::new()), "the same connection, unbound");
}

/// A reader connection's first read goes out with its binding, in the same round trip: it still
/// reads as the caller just bound (statements on one connection run in the order sent), and the
/// next caller's first read on the same connection reads as them, not as the last.
#[tokio::test]
async fn a_first_read_sent_with_its_binding_reads_as_the_caller_bound() {
    let system = System::start().await;
    let pool = reader_pool_of_one(&system);
    // Prepared before, as the service's reads are: each first read goes out at once.
    pool.get().await.unwrap().prepare_cached(CALLER).await.unwrap();
    let mut seen = Vec::new();
    for (user, scope) in [("usr_ann", "org_anns"), ("usr_bob", "")] {
        let (bound, row) = platform::db::bind_then(&pool, user, scope, |db| {
            Box::pin(async move {
                let stmt = db.prepare_cached(CALLER).await?;
                Ok(db.query_one(&stmt, &[]).await?)
            })
        })
        .await
        .unwrap();
        drop(bound);
        let (pid, user, scope): (i32, String, String) = (row.get(0), row.get(1), row.get(2));
        seen.push((pid, user, scope));
    }
    let pid = seen[0].0;
    assert_eq!(
        seen,
        [(pid, "usr_ann".into(), "org_anns".into()), (pid, "usr_bob".into(), String::new())],
        "each first read, on the pool's one connection, as its own caller"
    );
}

/// Who a reader connection reads as: its backend, `oc.user_id` and `oc.org_scope`.
const CALLER: &str = "SELECT pg_backend_pid(), coalesce(current_setting('oc.user_id', true), ''), \
                      coalesce(current_setting('oc.org_scope', true), '')";

/// The query service's reader pool on `system`'s database, with one connection.
fn reader_pool_of_one(system: &System) -> deadpool_postgres::Pool {
    let cfg = platform::config::CommonConfig {
        database_url: system.db_url.clone(),
        database_pool_size: 1,
        ..Default::default()
    };
    platform::db::reader_pool(&cfg, "oc_query_reader", None).unwrap()
}
