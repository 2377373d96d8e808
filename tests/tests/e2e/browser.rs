//! Browser sign-in through the real OpenID provider (its development login form filled in by
//! script), the login-session cookie, CSRF protection, and sign-out.

use e2e_tests::System;
use e2e_tests::browser::Browser;
use serde_json::json;

#[tokio::test]
async fn a_browser_signs_in_acts_with_csrf_protection_and_signs_out_for_good() {
    let system = System::start().await;
    let mut browser = Browser::new();
    let landed = browser.sign_in(&system, "alice", "/welcome").await;
    assert_eq!(landed, "/welcome");
    assert!(browser.jar.contains_key("oc_session") && browser.jar.contains_key("oc_csrf"));
    assert!(!browser.jar.contains_key("oc_login"), "the attempt cookie is cleared");

    // The session is the same person as alice's bearer tokens.
    let req = browser.http.get(format!("{}/me", system.query_url()));
    let me: serde_json::Value = browser.send(req).await.json().await.unwrap();
    let bearer = system.token("alice").await;
    assert_eq!(me["userID"], system.get(&bearer, "/me", None).await.body["userID"]);

    // Writes by cookie need the CSRF token; reads do not.
    let create = |b: &Browser| {
        b.http.post(format!("{}/org", system.command_url())).json(&json!({ "name": "Acme" }))
    };
    let refused = browser.send(create(&browser)).await;
    assert_eq!(refused.status(), 403);
    let wrong = create(&browser).header("x-csrf-token", "guess");
    assert_eq!(browser.send(wrong).await.status(), 403);
    let csrf = browser.jar["oc_csrf"].clone();
    let ok = create(&browser).header("x-csrf-token", &csrf);
    assert_eq!(browser.send(ok).await.status(), 201);

    // Sign out; a copy of the cookie taken before is worthless afterwards.
    let stolen = browser.jar["oc_session"].clone();
    let req = browser
        .http
        .post(format!("{}/auth/logout", system.query_url()))
        .header("x-csrf-token", &csrf);
    assert_eq!(browser.send(req).await.status(), 204);
    assert!(!browser.jar.contains_key("oc_session"));
    let replay = reqwest::Client::new()
        .get(format!("{}/me", system.query_url()))
        .header("cookie", format!("oc_session={stolen}"))
        .send()
        .await
        .unwrap();
    assert_eq!(replay.status(), 401);
}

#[tokio::test]
async fn sign_in_refuses_foreign_redirects_and_callbacks_it_did_not_start() {
    let system = System::start().await;
    let mut browser = Browser::new();
    let db = system.db().await;
    let tables = "SELECT (SELECT count(*) FROM users) + (SELECT count(*) FROM login_sessions)";
    let rows_before: i64 = db.query_one(tables, &[]).await.unwrap().get(0);
    // As they arrive in the query string: tabs, newlines and backslashes, raw or encoded, that a
    // browser drops or turns into `//evil.example`.
    for target in [
        "https://evil.example/",
        "//evil.example/",
        "/%09/evil.example",
        "/%0A/evil.example",
        "/%5Cevil.example",
        "/%5C%5Cevil.example",
        "%2F%2Fevil.example",
        "/%2509/evil.example",
        "/%252F/evil.example",
        "javascript:alert(1)",
    ] {
        let res =
            browser.get(&format!("{}/auth/login?returnTo={target}", system.query_url())).await;
        assert_eq!(res.status(), 400, "{target}");
    }
    // Starting sign-ins writes nothing (the attempt lives in a sealed cookie).
    for _ in 0..20 {
        let res = browser.get(&format!("{}/auth/login?returnTo=/ok", system.query_url())).await;
        assert_eq!(res.status(), 303);
    }
    let rows_after: i64 = db.query_one(tables, &[]).await.unwrap().get(0);
    assert_eq!(rows_before, rows_after);
    // A sealed attempt cannot be forged or altered.
    let forged = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(format!("{}/auth/callback?code=x&state=y", system.query_url()))
        .header("cookie", "oc_login=y")
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 400);
    // A callback this browser did not start (login CSRF) is refused.
    let res = browser.get(&format!("{}/auth/callback?code=x&state=y", system.query_url())).await;
    assert_eq!(res.status(), 400);
    // The provider's refusal is reported, not followed.
    let res =
        browser.get(&format!("{}/auth/callback?error=access_denied", system.query_url())).await;
    assert_eq!(res.status(), 400);
}

#[tokio::test]
async fn a_command_line_signs_in_with_the_device_flow() {
    let system = System::start().await;
    let cli = reqwest::Client::new();
    let started: serde_json::Value = cli
        .post(format!("{}/auth/device", system.query_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let device_code = started["deviceCode"].as_str().unwrap().to_owned();
    let user_code = started["userCode"].as_str().unwrap().to_owned();
    let poll = || {
        cli.post(format!("{}/auth/device/token", system.query_url()))
            .json(&json!({ "deviceCode": device_code }))
            .send()
    };
    let pending = poll().await.unwrap();
    assert_eq!(pending.status(), 202, "pending until the user approves");
    let early = poll().await.unwrap();
    assert_eq!(early.status(), 202, "polling faster than the interval");
    let early: serde_json::Value = early.json().await.unwrap();
    assert_eq!(early["status"], "slow_down");

    // In a browser, the user enters the code, confirms it, signs in and consents.
    let mut browser = Browser::new();
    let link = started["verificationURI"].as_str().unwrap();
    let page = browser.get(link).await.text().await.unwrap();
    let confirm = browser.submit_form(link, &page, &[("user_code", &user_code)]).await;
    assert_eq!(confirm.status(), 200);
    let page = confirm.text().await.unwrap();
    assert!(page.contains(&user_code), "the confirmation shows the code");
    let confirmed = browser.submit_form(link, &page, &[]).await;
    let done = browser.drive(&system, confirmed, "alice").await;
    assert_eq!(done.status(), 200, "{}", done.text().await.unwrap());

    let body: serde_json::Value = e2e_tests::eventually("the token", crate::WAIT, || async {
        let granted = poll().await.unwrap();
        (granted.status() == 200).then_some(())?;
        granted.json().await.ok()
    })
    .await;
    let token = body["accessToken"].as_str().unwrap();
    let me = system.get(token, "/me", None).await;
    let alice = system.token("alice").await;
    assert_eq!(me.body["userID"], system.get(&alice, "/me", None).await.body["userID"]);
    let reused = e2e_tests::eventually("the reuse refused", crate::WAIT, || async {
        let res = poll().await.unwrap();
        (res.status() != 202).then_some(res.status())
    })
    .await;
    assert_eq!(reused, 400, "a device code is used once");
}

#[tokio::test]
async fn browser_sign_in_keeps_working_across_a_signing_key_rotation() {
    let mut system = System::start().await;
    let mut first = Browser::new();
    assert_eq!(first.sign_in(&system, "alice", "/").await, "/");
    system.rotate_oidc_key().await;
    let mut second = Browser::new();
    assert_eq!(
        second.sign_in(&system, "alice", "/").await,
        "/",
        "the ID token signed with the new key verifies"
    );
    // The session made before the rotation is ours, not the provider's: it still works.
    let req = first.http.get(format!("{}/me", system.query_url()));
    assert_eq!(first.send(req).await.status(), 200);
}
