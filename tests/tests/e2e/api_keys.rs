//! Personal API keys: shown once, stored hashed, limited to one organization, revocable, and
//! usable wherever a bearer token is.

use e2e_tests::System;
use e2e_tests::sse::SseClient;
use serde_json::{Value, json};

#[tokio::test]
async fn an_api_key_works_like_a_token_in_its_organization_only_until_revoked() {
    let system = System::start().await;
    let alice = system.token("alice").await;
    let (org, ws, session) = system.session_for("alice").await;
    let other = system.create_org(&alice, "Elsewhere").await;

    let created = system
        .post(
            &alice,
            &format!("/org/{}/api-key", org.id),
            json!({ "name": "ci", "expiresInDays": 7 }),
        )
        .await;
    assert_eq!(created.status, 201, "{created:?}");
    let key = created.body["key"].as_str().unwrap().to_owned();
    let key_id = created.body["id"].as_str().unwrap().to_owned();
    assert!(key.starts_with("ock_"));
    let token = created.body["consistencyToken"].as_str().unwrap();

    // Only a hash is stored; the secret appears nowhere in the database.
    let db = system.db().await;
    // The secret is everything after `ock_<key id>_` (it may itself contain `_`).
    let secret = key.strip_prefix(&format!("ock_{key_id}_")).expect("ock_<id>_<secret>");
    let stored: i64 = db
        .query_one(
            "SELECT count(*) FROM api_keys k, events e WHERE k.key_id = $1 \
             AND position($2 IN encode(k.secret_sha256, 'escape') || e.payload::text || e.metadata::text) > 0",
            &[&key_id, &secret],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored, 0);

    // It reads and writes in its organization, streams included.
    let listed = system.get(&key, "/me/api-key", Some(token)).await;
    assert_eq!(listed.body["items"][0]["id"], key_id.as_str());
    assert_eq!(listed.body["items"][0]["active"], true);
    assert!(listed.body["items"][0].get("key").is_none(), "never shown again");
    assert_eq!(system.get(&key, &format!("/session/{}", session.id), None).await.status, 200);
    assert!(SseClient::connect(&system.stream_url(0, &session), &key, None).await.is_ok());
    let s = system.post(&key, &format!("/workspace/{}/session", ws.id), json!({})).await;
    assert_eq!(s.status, 201, "{s:?}");
    let orgs = system.get(&key, "/org", None).await;
    let ids: Vec<&str> =
        orgs.body["items"].as_array().unwrap().iter().map(|o| o["id"].as_str().unwrap()).collect();
    assert_eq!(ids, vec![org.id.as_str()], "the key sees one organization");

    // Outside it, nothing exists; and keys cannot manage keys or create organizations.
    let elsewhere =
        system.post(&key, &format!("/org/{}/workspace", other.id), json!({ "name": "x" })).await;
    assert!(elsewhere.is_problem(404), "{elsewhere:?}");
    assert!(system.get(&key, &format!("/org/{}/workspace", other.id), None).await.is_problem(404));
    assert!(system.post(&key, "/org", json!({ "name": "x" })).await.is_problem(404));
    let mint =
        system.post(&key, &format!("/org/{}/api-key", org.id), json!({ "name": "more" })).await;
    assert!(mint.is_problem(403), "{mint:?}");

    // Revoked by its owner, it stops at once.
    let bob = system.token("bob").await;
    let url = format!("{}/api-key/{key_id}", system.command_url());
    let r = system.http.delete(&url).bearer_auth(&bob).send().await.unwrap();
    assert_eq!(r.status(), 404, "someone else's key is invisible");
    let r = system.http.delete(&url).bearer_auth(&alice).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert!(system.get(&key, &format!("/session/{}", session.id), None).await.is_problem(401));
    assert!(
        system
            .post(&key, &format!("/workspace/{}/session", ws.id), json!({}))
            .await
            .is_problem(401)
    );
    let listed = system.get(&alice, "/me/api-key", body["consistencyToken"].as_str()).await;
    assert_eq!(listed.body["items"][0]["active"], false);
    // The audit trail shows both, without the secret.
    let audit = system.get(&alice, &format!("/org/{}/audit", org.id), None).await;
    let types: Vec<&str> = audit.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["type"].as_str().unwrap())
        .collect();
    assert!(types.contains(&"api_key.created") && types.contains(&"api_key.revoked"), "{types:?}");
}

#[tokio::test]
async fn malformed_expired_and_made_up_keys_are_refused() {
    let system = System::start().await;
    let alice = system.token("alice").await;
    let (org, _, _) = system.session_for("alice").await;
    for days in [0, 366] {
        let a = system
            .post(
                &alice,
                &format!("/org/{}/api-key", org.id),
                json!({ "name": "x", "expiresInDays": days }),
            )
            .await;
        assert!(a.is_problem(400), "{days}: {a:?}");
    }
    let created =
        system.post(&alice, &format!("/org/{}/api-key", org.id), json!({ "name": "soon" })).await;
    let key = created.body["key"].as_str().unwrap().to_owned();
    let key_id = created.body["id"].as_str().unwrap().to_owned();
    let mut wrong_secret = key.clone();
    wrong_secret.pop();
    wrong_secret.push(if key.ends_with('A') { 'B' } else { 'A' });
    let made_up = format!("ock_{}_{}", schemas::ids::ApiKeyId::new(), "x".repeat(43));
    for bad in [wrong_secret.as_str(), made_up.as_str(), "ock_", "ock_key_garbage"] {
        assert!(system.get(bad, "/org", None).await.is_problem(401), "{bad}");
    }
    // Expiry is enforced (made to pass by moving the clock of the key, not of the test).
    system
        .db()
        .await
        .execute(
            "UPDATE api_keys SET expires_at = now() - interval '1 second' WHERE key_id = $1",
            &[&key_id],
        )
        .await
        .unwrap();
    assert!(system.get(&key, "/org", None).await.is_problem(401));
}

/// OpenCode's own clients (`opencode attach -p <key>`, its SDK) only send HTTP Basic: an API key
/// as the password, with any user name, is accepted wherever a bearer token is; a Basic password
/// that is not an API key (a JWT, a made-up password) is refused, and so is a revoked key.
#[tokio::test]
async fn basic_authentication_takes_an_api_key_as_the_password() {
    let system = System::start().await;
    let alice = system.token("alice").await;
    let (org, ws, session) = system.session_for("alice").await;
    let created =
        system.post(&alice, &format!("/org/{}/api-key", org.id), json!({ "name": "cli" })).await;
    let key = created.body["key"].as_str().unwrap().to_owned();
    let key_id = created.body["id"].as_str().unwrap().to_owned();
    let session_url = format!("{}/session/{}", system.query_url(), session.id);
    let basic = |user: &str, password: &str| {
        use base64::Engine;
        let pair = format!("{user}:{password}");
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(pair))
    };
    // With the session's creation token: the read waits for the session to be projected (it
    // once ran before the projector had it, and answered 404 in CI).
    let read = |authorization: String| {
        let req = system
            .http
            .get(&session_url)
            .header("authorization", authorization)
            .header("X-Consistency-Token", &session.token);
        async move { req.send().await.unwrap().status().as_u16() }
    };

    for user in ["opencode", "alice", ""] {
        assert_eq!(read(basic(user, &key)).await, 200, "user name {user:?}");
    }
    let write = system
        .http
        .post(format!("{}/workspace/{}/session", system.command_url(), ws.id))
        .header("authorization", basic("opencode", &key))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(write.status(), 201);

    // Only API keys: not a JWT, not a made-up password, not a malformed header.
    assert_eq!(read(basic("opencode", &alice)).await, 401);
    assert_eq!(read(basic("opencode", "hunter2")).await, 401);
    assert_eq!(read("Basic %%%".into()).await, 401);
    assert_eq!(read(format!("Digest {key}")).await, 401);

    let url = format!("{}/api-key/{key_id}", system.command_url());
    assert_eq!(system.http.delete(&url).bearer_auth(&alice).send().await.unwrap().status(), 200);
    assert_eq!(read(basic("opencode", &key)).await, 401, "revoked");
}
