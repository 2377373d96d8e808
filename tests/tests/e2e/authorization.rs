//! Every endpoint and stream against a user of every role, and a stranger from another
//! organization: allowed, 403 for a member whose role does not allow it, 404 for the stranger.

use e2e_tests::System;
use e2e_tests::api::Created;
use e2e_tests::sse::SseClient;
use reqwest::Method;
use serde_json::{Value, json};

use crate::WAIT;

/// The people: an owner, admin, member and viewer of one organization, and a stranger who owns
/// another.
struct Cast {
    owner: String,
    admin: String,
    member: String,
    viewer: String,
    stranger: String,
    ids: Vec<String>, // user ids of owner, admin, member, viewer
}

async fn user_id(system: &System, token: &str) -> String {
    system.get(token, "/me", None).await.body["userID"].as_str().unwrap().to_owned()
}

async fn cast(system: &System, org: &Created) -> (Cast, String) {
    let owner = system.token("alice").await;
    let mut tokens = Vec::new();
    let mut ids = vec![user_id(system, &owner).await];
    let mut last = org.token.clone();
    for (name, role) in [("adam", "admin"), ("mia", "member"), ("vic", "viewer")] {
        let token = system.token(name).await;
        let id = user_id(system, &token).await;
        let added = system
            .post(&owner, &format!("/org/{}/member", org.id), json!({ "userID": id, "role": role }))
            .await;
        assert_eq!(added.status, 201, "{added:?}");
        last = added.body["consistencyToken"].as_str().unwrap().to_owned();
        tokens.push(token);
        ids.push(id);
    }
    let stranger = system.token("bob").await;
    system.create_org(&stranger, "Bob's").await;
    let [admin, member, viewer]: [String; 3] = tokens.try_into().unwrap();
    (Cast { owner, admin, member, viewer, stranger, ids }, last)
}

async fn call(
    system: &System,
    method: Method,
    base: &str,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> u16 {
    let mut req = system.http.request(method, format!("{base}{path}")).bearer_auth(token);
    if let Some(body) = body {
        req = req.json(&body);
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    if status >= 400 {
        let ct = res.headers()["content-type"].to_str().unwrap().to_owned();
        assert_eq!(ct, "application/problem+json", "{path}");
    }
    status
}

#[tokio::test]
async fn every_endpoint_answers_each_role_as_the_policy_says() {
    let system = System::start().await;
    let alice = system.token("alice").await;
    let org = system.create_org(&alice, "Acme").await;
    let (c, consistency) = cast(&system, &org).await;
    let ws = system.create_workspace(&alice, &org.id, "main").await;
    let session = system.create_session(&alice, &ws.id).await;
    // Everyone's membership is visible to the read side before reading.
    assert_eq!(
        system.get(&c.viewer, &format!("/org/{}/member", org.id), Some(&consistency)).await.status,
        200
    );
    assert_eq!(
        system
            .get(&c.viewer, &format!("/session/{}", session.id), Some(&session.token))
            .await
            .status,
        200
    );

    let q = system.query_url().to_owned();
    let w = system.command_url().to_owned();
    let everyone = [&c.owner, &c.admin, &c.member, &c.viewer];

    // Reads: every role reads; the stranger finds nothing.
    for path in [
        format!("/workspace/{}", ws.id),
        format!("/org/{}/workspace", org.id),
        format!("/org/{}/member", org.id),
        format!("/workspace/{}/session", ws.id),
        format!("/session/{}", session.id),
        format!("/session/{}/message", session.id),
    ] {
        for token in everyone {
            assert_eq!(call(&system, Method::GET, &q, &path, token, None).await, 200, "{path}");
        }
        assert_eq!(call(&system, Method::GET, &q, &path, &c.stranger, None).await, 404, "{path}");
    }
    let stream = system.stream_url(0, &session);
    for token in everyone {
        assert!(SseClient::connect(&stream, token, None).await.is_ok());
    }
    assert_eq!(SseClient::connect(&stream, &c.stranger, None).await.err().unwrap().0, 404);

    // Writes, with the expected status for owner, admin, member, viewer, stranger.
    let newcomer = user_id(&system, &system.token("nina").await).await;
    let cases: Vec<(Method, String, Value, [u16; 5])> = vec![
        (
            Method::PATCH,
            format!("/org/{}", org.id),
            json!({ "name": "Acme 2" }),
            [200, 200, 403, 403, 404],
        ),
        (
            Method::POST,
            format!("/org/{}/workspace", org.id),
            json!({ "name": "w" }),
            [201, 201, 201, 403, 404],
        ),
        // Mia is an organization member but not in this workspace: she may not start sessions.
        (
            Method::POST,
            format!("/workspace/{}/session", ws.id),
            json!({}),
            [201, 201, 403, 403, 404],
        ),
        (
            Method::PATCH,
            format!("/workspace/{}", ws.id),
            json!({ "name": "renamed" }),
            [200, 200, 403, 403, 404],
        ),
        (
            Method::POST,
            format!("/workspace/{}/project", ws.id),
            json!({ "repositoryURL": "https://github.com/anomalyco/opencode.git" }),
            [201, 201, 403, 403, 404],
        ),
        (
            Method::PUT,
            format!("/workspace/{}/member/{}", ws.id, c.ids[3]),
            json!({ "role": "member" }),
            [200, 200, 403, 403, 404],
        ),
        // Admins manage members but not owners; members and viewers manage nobody.
        (
            Method::PUT,
            format!("/org/{}/member/{}", org.id, c.ids[3]),
            json!({ "role": "viewer" }),
            [200, 200, 403, 403, 404],
        ),
        (
            Method::POST,
            format!("/org/{}/member", org.id),
            json!({ "userID": newcomer, "role": "owner" }),
            [201, 403, 403, 403, 404],
        ),
        (
            Method::POST,
            format!("/org/{}/transfer", org.id),
            json!({ "userID": c.ids[1] }),
            [200, 403, 403, 403, 404],
        ),
        // Last, as it ends the workspace's working life: archived, it takes no new sessions.
        (
            Method::POST,
            format!("/workspace/{}/archive", ws.id),
            json!({}),
            [200, 200, 403, 403, 404],
        ),
        (
            Method::POST,
            format!("/workspace/{}/session", ws.id),
            json!({}),
            [409, 409, 403, 403, 404],
        ),
    ];
    // Run each case for every caller; the stranger and the forbidden go first, so the allowed
    // call (which changes state) comes after the refusals it should not depend on.
    for (method, path, body, expected) in cases {
        let callers = [&c.owner, &c.admin, &c.member, &c.viewer, &c.stranger];
        let mut order: Vec<usize> = (0..5).collect();
        order.sort_by_key(|i| expected[*i] < 300);
        for i in order {
            let got =
                call(&system, method.clone(), &w, &path, callers[i], Some(body.clone())).await;
            assert_eq!(got, expected[i], "{method} {path} {body} as caller #{i}");
            if got < 300 {
                break; // one success is enough; repeating it would test something else
            }
        }
    }
}

#[tokio::test]
async fn prompting_and_aborting_follow_the_policy() {
    let system = System::start().await;
    let alice = system.token("alice").await;
    let org = system.create_org(&alice, "Acme").await;
    let (c, _) = cast(&system, &org).await;
    let ws = system.create_workspace(&alice, &org.id, "main").await;
    let w = system.command_url().to_owned();
    let prompt =
        json!({ "parts": [{ "type": "text", "text": "[[fake tokens=100000 delay_ms=20]]" }] });
    // An organization member prompts only in workspaces they belong to.
    let session = system.create_session(&alice, &ws.id).await;
    let path = format!("/session/{}/prompt_async", session.id);
    assert_eq!(call(&system, Method::POST, &w, &path, &c.member, Some(prompt.clone())).await, 403);
    let join = format!("/workspace/{}/member/{}", ws.id, c.ids[2]);
    let joined =
        call(&system, Method::PUT, &w, &join, &alice, Some(json!({ "role": "member" }))).await;
    assert_eq!(joined, 200);
    for (token, expected) in [(&c.viewer, 403), (&c.stranger, 404), (&c.member, 202)] {
        let session = system.create_session(&alice, &ws.id).await;
        let path = format!("/session/{}/prompt_async", session.id);
        assert_eq!(
            call(&system, Method::POST, &w, &path, token, Some(prompt.clone())).await,
            expected
        );
    }
    // A running reply: viewers and strangers cannot stop it; a member can.
    let session = system.create_session(&alice, &ws.id).await;
    let mut stream = system.watch(&alice, &session).await;
    system.prompt(&alice, &session.id, "[[fake tokens=100000 delay_ms=20]]").await;
    stream.until(WAIT, |e| e.event == "message.started").await;
    let abort = format!("/session/{}/abort", session.id);
    assert_eq!(call(&system, Method::POST, &w, &abort, &c.viewer, Some(json!({}))).await, 403);
    assert_eq!(call(&system, Method::POST, &w, &abort, &c.stranger, Some(json!({}))).await, 404);
    assert_eq!(call(&system, Method::POST, &w, &abort, &c.member, Some(json!({}))).await, 202);
}

#[tokio::test]
async fn a_removed_member_loses_access_and_the_last_owner_cannot_leave() {
    let system = System::start().await;
    let alice = system.token("alice").await;
    let org = system.create_org(&alice, "Acme").await;
    let (c, consistency) = cast(&system, &org).await;
    let path = format!("/org/{}/workspace", org.id);
    assert_eq!(system.get(&c.member, &path, Some(&consistency)).await.status, 200);

    let removed = system
        .http
        .delete(format!("{}/org/{}/member/{}", system.command_url(), org.id, c.ids[2]))
        .bearer_auth(&c.admin)
        .send()
        .await
        .unwrap();
    assert_eq!(removed.status(), 200);
    let token: Value = removed.json().await.unwrap();
    let token = token["consistencyToken"].as_str().unwrap();
    assert_eq!(system.get(&c.member, &path, Some(token)).await.status, 404, "no longer a member");

    let leave = system
        .http
        .delete(format!("{}/org/{}/member/{}", system.command_url(), org.id, c.ids[0]))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    assert_eq!(leave.status(), 409, "the last owner stays");
    let demote = system
        .http
        .put(format!("{}/org/{}/member/{}", system.command_url(), org.id, c.ids[0]))
        .bearer_auth(&alice)
        .json(&json!({ "role": "admin" }))
        .send()
        .await
        .unwrap();
    assert_eq!(demote.status(), 409, "the last owner cannot demote themselves");
    let a =
        system.post(&c.member, &format!("/org/{}/workspace", org.id), json!({ "name": "x" })).await;
    assert!(a.is_problem(404), "{a:?}");
}

#[tokio::test]
async fn admins_read_an_audit_trail_of_who_changed_what() {
    let system = System::start().await;
    let alice = system.token("alice").await;
    let org = system.create_org(&alice, "Acme").await;
    let (c, _) = cast(&system, &org).await;
    system.create_workspace(&c.admin, &org.id, "main").await;
    let renamed = system
        .http
        .patch(format!("{}/org/{}", system.command_url(), org.id))
        .bearer_auth(&c.admin)
        .json(&json!({ "name": "Acme Corp" }))
        .send()
        .await
        .unwrap();
    let token: Value = renamed.json().await.unwrap();
    let token = token["consistencyToken"].as_str().unwrap();

    let path = format!("/org/{}/audit", org.id);
    let audit = system.get(&c.admin, &path, Some(token)).await;
    assert_eq!(audit.status, 200, "{audit:?}");
    let items = audit.body["items"].as_array().unwrap();
    // Newest first (entries in the same millisecond may come in either order).
    let newest = items.iter().find(|i| i["type"] == "organization.renamed").unwrap();
    assert!(items.iter().all(|i| i["time"].as_i64() <= newest["time"].as_i64()));
    assert_eq!(newest["actor"], c.ids[1].as_str());
    assert_eq!(newest["details"]["name"], "Acme Corp");
    let types: Vec<&str> = items.iter().map(|i| i["type"].as_str().unwrap()).collect();
    assert!(types.contains(&"workspace.created"), "{types:?}");
    assert_eq!(
        types.iter().filter(|t| **t == "organization.member_added").count(),
        4,
        "owner + three"
    );
    assert!(items.iter().all(|i| i["details"].get("email").is_none()), "no personal data");

    // Paging walks the same entries.
    let first = system.get(&c.admin, &format!("{path}?limit=2"), None).await;
    let next = first.body["cursor"]["next"].as_str().unwrap();
    let second = system.get(&c.admin, &format!("{path}?limit=2&cursor={next}"), None).await;
    assert_eq!(second.body["items"][0]["id"], items[2]["id"]);

    assert!(system.get(&c.member, &path, None).await.is_problem(403));
    assert!(system.get(&c.viewer, &path, None).await.is_problem(403));
    assert!(system.get(&c.stranger, &path, None).await.is_problem(404));
}

/// The command side keeps organizations and workspaces as last read (no full replay per
/// command): a membership change made through one command-service instance counts at once on
/// another that has the old membership in hand.
#[tokio::test]
async fn a_membership_change_counts_at_once_on_every_command_instance() {
    let t = crate::BobOnTwoInstances::start().await;
    // Bob works through the second instance, which now holds the membership.
    let create = |url: String| {
        let req = t.system.http.post(url).bearer_auth(&t.bob).json(&serde_json::json!({}));
        async move { req.send().await.unwrap().status().as_u16() }
    };
    let on_second = format!("{}/workspace/{}/session", t.second.url, t.ws.id);
    assert_eq!(create(on_second.clone()).await, 201);

    // Alice removes him through the first instance: the second refuses him at once.
    t.set_bob_in_workspace(false).await;
    assert_eq!(create(on_second.clone()).await, 403, "no longer a member of the workspace");
    // And added back: allowed again at once.
    t.set_bob_in_workspace(true).await;
    assert_eq!(create(on_second).await, 201);
}
