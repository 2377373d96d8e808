//! Read-your-writes waits cannot be turned against other tenants: a wait holds no pooled
//! connection, a token no write reached is refused at once, and a token is read like the
//! aggregate it names. And the prompt path waits for no projection at all.

use e2e_tests::sse::{SseClient, is_idle, reply_text};
use e2e_tests::{System, SystemOptions, fake_text};
use futures::future::join_all;

use crate::WAIT;

#[tokio::test]
async fn a_new_session_streams_its_first_reply_with_the_projector_stopped() {
    let mut system = System::start().await;
    let alice = system.token("alice").await;
    let bob = system.token("bob").await;
    let carol = system.token("carol").await;
    let bobs = system.create_org(&bob, "Bob's").await;
    assert_eq!(system.get(&bob, "/org", Some(&bobs.token)).await.status, 200);

    // Nothing new reaches the read models from here on: alice's organization, her membership in
    // it, its workspace and session exist only in the event store.
    system.projector = None;
    let (org, ws, session) = system.session_for("alice").await;
    let url = system.stream_url(0, &session);

    // The stream opens at once and carries the whole reply, without the session in any read model.
    let mut stream = SseClient::connect(&url, &alice, None).await.expect("the stream opens");
    let accepted = system.prompt(&alice, &session.id, "hello [[fake tokens=6]]").await;
    let events = stream.until(WAIT, is_idle).await;
    let assistant = accepted["assistantMessageID"].as_str().unwrap();
    assert_eq!(reply_text(&events, assistant), fake_text(6));

    // Another organization's user holding the session's id finds nothing; so does someone
    // who was made a member and removed again before any of it was projected.
    system.add_member(&alice, &org.id, &carol, "member", Some(&ws.id)).await;
    let carols = SseClient::connect(&url, &carol, None).await;
    assert!(carols.is_ok(), "a member added a moment ago opens the stream");
    let carol_id = system.user_id(&carol).await;
    let removal = format!("{}/org/{}/member/{carol_id}", system.command_url(), org.id);
    let removed = system.http.delete(removal).bearer_auth(&alice).send().await.unwrap();
    assert_eq!(removed.status(), 200, "removing carol");
    for (who, bearer) in [("bob", &bob), ("carol, removed", &carol)] {
        match SseClient::connect(&url, bearer, None).await {
            Err((status, _)) => assert_eq!(status, 404, "{who}"),
            Ok(_) => panic!("{who} opened the session's stream"),
        }
    }
}

#[tokio::test]
async fn far_future_and_foreign_tokens_are_refused_at_once() {
    let system = System::start().await;
    let alice = system.token("alice").await;
    let bob = system.token("bob").await;
    let (_, _, session) = system.session_for("alice").await;
    let bobs = system.create_org(&bob, "Bob's").await;
    assert_eq!(system.get(&bob, "/org", Some(&bobs.token)).await.status, 200);

    let path = format!("/session/{}", session.id);
    let future = format!("{}.999999", session.id);
    let waits = (0..40).map(|_| system.get(&alice, &path, Some(&future)));
    for a in join_all(waits).await {
        assert!(a.is_problem(404), "a write that never happened cannot be waited for: {a:?}");
    }
    // Bob's token names his organization: for alice it is as missing as his organization.
    let a = system.get(&alice, &path, Some(&bobs.token)).await;
    assert!(a.is_problem(404), "{a:?}");
    assert_eq!(system.get(&bob, "/org", None).await.status, 200);
}

#[tokio::test]
async fn forty_waiting_reads_hold_no_connection_another_tenant_needs() {
    let opts = SystemOptions {
        service_env: vec![("OC_CONSISTENCY_WAIT_MS", "60000".into())],
        ..Default::default()
    };
    let mut system = System::start_with(opts).await;
    let alice = system.token("alice").await;
    let bob = system.token("bob").await;
    let (org, _, _) = system.session_for("alice").await;
    let bobs = system.create_org(&bob, "Bob's").await;
    assert_eq!(system.get(&bob, "/org", Some(&bobs.token)).await.status, 200);

    // A write the read models will not reflect until the projector is back.
    system.projector = None;
    let ws = system.create_workspace(&alice, &org.id, "pending").await;
    let path = format!("/workspace/{}", ws.id);
    let waits: Vec<_> = (0..40)
        .map(|_| {
            let (http, url, alice, token) = (
                system.http.clone(),
                format!("{}{path}", system.query_url()),
                alice.clone(),
                ws.token.clone(),
            );
            tokio::spawn(async move {
                let res = http
                    .get(url)
                    .bearer_auth(alice)
                    .header("X-Consistency-Token", token)
                    .send()
                    .await
                    .unwrap();
                res.status().as_u16()
            })
        })
        .collect();

    // The query service's pool has 4 connections; another tenant still reads at once.
    for _ in 0..5 {
        let a = system.get(&bob, "/org", None).await;
        assert_eq!(a.status, 200, "{a:?}");
    }
    assert!(waits.iter().all(|w| !w.is_finished()), "the waits are still waiting");

    system.projector = Some(system.start_service("projector", "OC_PROJECTOR_ADDR", &[]).await);
    for w in join_all(waits).await {
        assert_eq!(w.unwrap(), 200, "each wait ends when the projector catches up");
    }
}
