//! Bearer tokens are checked for what matters: signature by a key the issuer publishes, pinned
//! algorithms, issuer, audience and lifetime. Tokens are forged here with the development
//! provider's real signing key, so each one differs from a good token in one way only.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use e2e_tests::{System, SystemOptions, eventually};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use crate::WAIT;

struct Keys {
    kid: String,
    private_pem: String,
    public_pem: String,
    spare_kid: String,
    spare_pem: String,
}

async fn keys(system: &System) -> Keys {
    let raw = eventually("the provider's keys", WAIT, || async {
        std::fs::read_to_string(&system.oidc_keys).ok()
    })
    .await;
    let v: Value = serde_json::from_str(&raw).unwrap();
    let s = |p: &str| v.pointer(p).unwrap().as_str().unwrap().to_owned();
    Keys {
        kid: s("/kid"),
        private_pem: s("/privatePem"),
        public_pem: s("/publicPem"),
        spare_kid: s("/spare/kid"),
        spare_pem: s("/spare/privatePem"),
    }
}

fn now() -> i64 {
    schemas::now_ms() / 1000
}

fn good_claims(system: &System) -> Value {
    json!({ "sub": "mallory", "iss": system.issuer, "aud": "urn:opencode:api",
            "iat": now(), "exp": now() + 300, "scope": "openid" })
}

fn sign(claims: &Value, kid: &str, pem: &str) -> String {
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(kid.to_owned());
    header.typ = Some("at+jwt".into());
    let key = EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap();
    jsonwebtoken::encode(&header, claims, &key).unwrap()
}

async fn status_with(system: &System, token: &str) -> u16 {
    let r = system
        .http
        .get(format!("{}/org", system.query_url()))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    r.status().as_u16()
}

#[tokio::test]
async fn forged_expired_and_misdirected_tokens_are_refused() {
    let system = System::start_with(SystemOptions { worker: false, ..Default::default() }).await;
    let k = keys(&system).await;
    let good = good_claims(&system);
    assert_eq!(
        status_with(&system, &sign(&good, &k.kid, &k.private_pem)).await,
        200,
        "the baseline is accepted"
    );

    let with = |patch: Value| {
        let mut c = good.clone();
        c.as_object_mut().unwrap().extend(patch.as_object().unwrap().clone());
        sign(&c, &k.kid, &k.private_pem)
    };
    let hs256 = {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(k.kid.clone());
        jsonwebtoken::encode(&header, &good, &EncodingKey::from_secret(k.public_pem.as_bytes()))
            .unwrap()
    };
    let unsigned = {
        let header = URL_SAFE_NO_PAD
            .encode(json!({ "alg": "none", "typ": "JWT", "kid": k.kid }).to_string());
        let body = URL_SAFE_NO_PAD.encode(good.to_string());
        format!("{header}.{body}.")
    };
    let tampered = {
        let token = sign(&good, &k.kid, &k.private_pem);
        let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
        let mut claims = good.clone();
        claims["sub"] = json!("alice");
        parts[1] = URL_SAFE_NO_PAD.encode(claims.to_string());
        parts.join(".")
    };
    let cases = [
        ("expired", with(json!({ "exp": now() - 600 }))),
        ("not yet valid", with(json!({ "nbf": now() + 600 }))),
        ("wrong issuer", with(json!({ "iss": "http://127.0.0.1:1/evil" }))),
        ("wrong audience", with(json!({ "aud": "urn:someone-else" }))),
        ("no expiry", {
            let mut c = good.clone();
            c.as_object_mut().unwrap().remove("exp");
            sign(&c, &k.kid, &k.private_pem)
        }),
        ("unsigned (alg none)", unsigned),
        ("HS256 keyed with the public key", hs256),
        ("tampered claims", tampered),
        ("signed by a key the issuer never published", sign(&good, &k.spare_kid, &k.spare_pem)),
    ];
    for (what, token) in cases {
        let r = system
            .http
            .get(format!("{}/org", system.query_url()))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{what}");
        assert_eq!(r.headers()["content-type"], "application/problem+json", "{what}");
        let w = system.post(&token, "/org", json!({ "name": "x" })).await;
        assert!(w.is_problem(401), "{what} on the command side: {w:?}");
    }
}

#[tokio::test]
async fn a_signing_key_rotation_needs_no_restart_and_retires_the_old_key() {
    let mut system = System::start_with(SystemOptions {
        worker: false,
        service_env: vec![
            ("OC_JWKS_MIN_REFRESH_SECS", "1".into()),
            ("OC_JWKS_MAX_AGE_SECS", "2".into()),
        ],
        ..Default::default()
    })
    .await;
    let before = system.token("alice").await;
    assert_eq!(status_with(&system, &before).await, 200);

    system.rotate_oidc_key().await;
    let after = system.token("alice").await;
    // The new key is fetched on first sight of its key id (within the refetch rate limit).
    eventually("a token signed with the new key to be accepted", WAIT, || async {
        (status_with(&system, &after).await == 200).then_some(())
    })
    .await;
    // The retired key stops being trusted once its cached copy ages out.
    eventually("the old key to be refused", WAIT, || async {
        (status_with(&system, &before).await == 401).then_some(())
    })
    .await;
}
