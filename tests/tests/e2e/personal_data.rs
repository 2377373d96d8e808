//! Personal data lives outside the event log: members are found by email, and erasing an
//! account removes the person's data and access without rewriting a single event.

use e2e_tests::{System, SystemOptions, eventually};
use serde_json::json;

use crate::WAIT;

#[tokio::test]
async fn members_are_added_by_email_and_an_erased_account_leaves_no_personal_data() {
    let system = System::start_with(SystemOptions { worker: false, ..Default::default() }).await;
    let alice = system.token("alice").await;
    let bob = system.token("bob").await;
    let org = system.create_org(&alice, "Acme").await;

    // Bob has not signed in yet: his email is unknown.
    let early = system
        .post(
            &alice,
            &format!("/org/{}/member", org.id),
            json!({ "email": "carol@example.test", "role": "member" }),
        )
        .await;
    assert!(early.is_problem(422), "{early:?}");
    let me = system.get(&bob, "/me", None).await;
    assert_eq!(me.body["email"], "bob@example.test");
    assert_eq!(me.body["displayName"], "Bob");
    let bob_id = me.body["userID"].as_str().unwrap().to_owned();

    let added = system
        .post(
            &alice,
            &format!("/org/{}/member", org.id),
            json!({ "email": "BOB@example.test", "role": "member" }),
        )
        .await;
    assert_eq!(added.status, 201, "{added:?}");
    assert_eq!(added.body["id"], bob_id.as_str());
    let token = added.body["consistencyToken"].as_str().unwrap();
    let members = system.get(&alice, &format!("/org/{}/member", org.id), Some(token)).await;
    let bob_row = members.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["userID"] == bob_id.as_str())
        .unwrap()
        .clone();
    assert_eq!(bob_row["email"], "bob@example.test");
    let both =
        system.post(&alice, &format!("/org/{}/member", org.id), json!({ "role": "member" })).await;
    assert!(both.is_problem(400), "{both:?}");

    // Bob erases his account.
    let erased = system
        .http
        .delete(format!("{}/me", system.command_url()))
        .bearer_auth(&bob)
        .send()
        .await
        .unwrap();
    assert_eq!(erased.status(), 204);
    let path = format!("/org/{}/member", org.id);
    let after = eventually("bob's profile gone from the member list", WAIT, || async {
        let m = system.get(&alice, &path, None).await;
        let row =
            m.body["items"].as_array()?.iter().find(|m| m["userID"] == bob_id.as_str())?.clone();
        row["email"].is_null().then_some(row)
    })
    .await;
    assert!(after["displayName"].is_null());
    // His tokens no longer work (the query service may cache identities for up to a minute).
    let w = system.post(&bob, "/org", json!({ "name": "x" })).await;
    assert!(w.is_problem(401), "{w:?}");
    // The event log never held his email or name.
    let leaks: i64 = system
        .db()
        .await
        .query_one("SELECT count(*) FROM events WHERE payload::text ILIKE '%example.test%' OR metadata::text ILIKE '%example.test%'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(leaks, 0);
    let profile: i64 = system
        .db()
        .await
        .query_one("SELECT count(*) FROM user_profiles WHERE user_id = $1", &[&bob_id])
        .await
        .unwrap()
        .get(0);
    assert_eq!(profile, 0);
}

#[tokio::test]
async fn adding_by_email_reveals_nothing_to_strangers_and_matches_only_one_verified_owner() {
    let system = System::start_with(SystemOptions { worker: false, ..Default::default() }).await;
    let alice = system.token("alice").await;
    let org = system.create_org(&alice, "Acme").await;
    let path = format!("/org/{}/member", org.id);
    let add = |email: &str| json!({ "email": email, "role": "member" });
    // Everyone below has signed in once, so their emails are known.
    let mut ids = std::collections::HashMap::new();
    for who in ["bob", "carol", "dave", "mallory"] {
        let token = system.token(who).await;
        let me = system.get(&token, "/me", None).await;
        ids.insert(who, me.body["userID"].as_str().unwrap().to_owned());
    }

    // A stranger gets the same 404 for a known and an unknown email, and learns nothing.
    let mallory = system.token("mallory").await;
    let known = system.post(&mallory, &path, add("bob@example.test")).await;
    let unknown = system.post(&mallory, &path, add("nobody@example.test")).await;
    assert!(known.is_problem(404), "{known:?}");
    assert_eq!((known.status, &known.body), (unknown.status, &unknown.body));

    // A member who may not add members is refused before any lookup, whatever the email.
    let bob = system.token("bob").await;
    let a = system.post(&alice, &path, json!({ "userID": ids["bob"], "role": "member" })).await;
    let token = a.body["consistencyToken"].as_str().unwrap().to_owned();
    assert_eq!(system.get(&alice, &path, Some(&token)).await.status, 200);
    let known = system.post(&bob, &path, add("carol@example.test")).await;
    let unknown = system.post(&bob, &path, add("nobody@example.test")).await;
    assert!(known.is_problem(403), "{known:?}");
    assert_eq!((known.status, &known.body), (unknown.status, &unknown.body));

    // Only verified emails match, and an email two accounts claim matches neither.
    let db = system.db().await;
    db.execute(
        "UPDATE user_profiles SET email_verified = false WHERE user_id = $1",
        &[&ids["carol"]],
    )
    .await
    .unwrap();
    let unverified = system.post(&alice, &path, add("carol@example.test")).await;
    assert!(unverified.is_problem(422), "{unverified:?}");
    db.execute(
        "UPDATE user_profiles SET email = 'dave@example.test' WHERE user_id = $1",
        &[&ids["mallory"]],
    )
    .await
    .unwrap();
    let ambiguous = system.post(&alice, &path, add("dave@example.test")).await;
    assert!(ambiguous.is_problem(409), "{ambiguous:?}");
    assert!(ambiguous.body["detail"].as_str().unwrap().contains("userID"));
}
