//! An open event stream ends, with a final event saying why, soon after its reader loses the
//! right to read it — on whichever query-service instance it is open.

use e2e_tests::browser::Browser;
use e2e_tests::sse::SseClient;
use e2e_tests::{System, SystemOptions};
use serde_json::json;

use crate::WAIT;

/// Read past `server.connected`, then wait for the end of access and the end of the stream.
async fn expect_access_ended(mut stream: SseClient, reason: &str) {
    let hello = stream.next(WAIT).await;
    assert_eq!(hello.event, "server.connected");
    let last = stream.until(WAIT, |e| e.event == "server.access_ended").await.pop().unwrap();
    assert_eq!(last.data["properties"]["reason"], reason, "{last:?}");
    assert!(stream.ends_within(WAIT).await, "the stream is closed after it");
}

#[tokio::test]
async fn streams_end_when_membership_key_sign_in_or_account_is_gone() {
    let system =
        System::start_with(SystemOptions { query_instances: 2, ..Default::default() }).await;
    let alice = system.token("alice").await;
    let (org, _, session) = system.session_for("alice").await;
    let (bob, carol) = (system.token("bob").await, system.token("carol").await);
    for who in [&bob, &carol] {
        system.add_member(&alice, &org.id, who, "member", None).await;
    }
    let bob_id = system.user_id(&bob).await;
    let watch = |instance: usize, bearer: &str| {
        let url = system.stream_url(instance, &session);
        let bearer = bearer.to_owned();
        async move {
            // Membership is projected a moment after the command; retry until it is visible.
            e2e_tests::eventually("the stream opens", WAIT, || async {
                SseClient::connect(&url, &bearer, None).await.ok()
            })
            .await
        }
    };

    // 1. A member removed, watching on the second instance.
    let stream = watch(1, &bob).await;
    let url = format!("{}/org/{}/member/{bob_id}", system.command_url(), org.id);
    let removed = system.http.delete(&url).bearer_auth(&alice).send().await.unwrap();
    assert!(removed.status().is_success(), "{removed:?}");
    expect_access_ended(stream, "access").await;

    // 2. An API key revoked.
    let created =
        system.post(&alice, &format!("/org/{}/api-key", org.id), json!({ "name": "ci" })).await;
    let key = created.body["key"].as_str().unwrap().to_owned();
    let stream = watch(0, &key).await;
    let url = format!("{}/api-key/{}", system.command_url(), created.body["id"].as_str().unwrap());
    assert!(
        system.http.delete(&url).bearer_auth(&alice).send().await.unwrap().status().is_success()
    );
    expect_access_ended(stream, "credential").await;

    // 3. A browser signed out.
    let mut browser = Browser::new();
    browser.sign_in(&system, "alice", "/").await;
    let req = browser.http.get(system.stream_url(1, &session)).header("cookie", browser.cookies());
    let stream = SseClient::open(req).await.expect("the cookie opens the stream");
    let req = browser
        .http
        .post(format!("{}/auth/logout", system.query_url()))
        .header("x-csrf-token", browser.jar["oc_csrf"].clone());
    assert_eq!(browser.send(req).await.status(), 204);
    expect_access_ended(stream, "credential").await;

    // 4. An account erased.
    let stream = watch(0, &carol).await;
    let erased = system
        .http
        .delete(format!("{}/me", system.command_url()))
        .bearer_auth(&carol)
        .send()
        .await
        .unwrap();
    assert!(erased.status().is_success(), "{erased:?}");
    expect_access_ended(stream, "credential").await;
}
