//! Command-line sign-in with the OAuth device authorization grant (RFC 8628), when the issuer
//! offers it: `POST /auth/device` starts it (show the user the code and URL), then
//! `POST /auth/device/token` is polled until the user approved in a browser, and answers with
//! an access token the API accepts as a bearer token. 501 if the issuer has no device endpoint.
//! The endpoints come from the shared discovery document; a device code polled faster
//! than the interval is answered `slow_down` here, without asking the provider.

use std::time::{Duration, Instant};

use actix_web::{HttpResponse, web};
use platform::problem::Problem;
use serde::Deserialize;
use serde_json::{Value, json};

use super::browser::SignIn;

const DEVICE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";

async fn send(req: openidconnect::reqwest::RequestBuilder) -> Result<Value, Problem> {
    let unavailable = |e: &dyn std::fmt::Display| {
        tracing::warn!(error = %e, "identity provider unreachable");
        Problem::unavailable("the identity provider is unavailable")
    };
    let res = req.send().await.map_err(|e| unavailable(&e))?;
    let bytes = res.bytes().await.map_err(|e| unavailable(&e))?;
    serde_json::from_slice(&bytes).map_err(|e| unavailable(&e))
}

/// The issuer's device and token endpoints, from its (cached) discovery document.
async fn endpoints(sign_in: &SignIn) -> Result<(String, String), Problem> {
    let doc = sign_in.discovery.document().await?;
    let device = doc["device_authorization_endpoint"].as_str().ok_or_else(|| {
        Problem::not_implemented("the identity provider does not offer device sign-in")
    })?;
    let token = doc["token_endpoint"]
        .as_str()
        .ok_or_else(|| Problem::unavailable("the identity provider has no token endpoint"))?;
    Ok((device.to_owned(), token.to_owned()))
}

/// Start: the user opens `verificationURIComplete` (or enters `userCode`) in any browser.
pub async fn start(sign_in: web::Data<SignIn>) -> Result<HttpResponse, Problem> {
    let polls = &sign_in.polls;
    let (device, _) = endpoints(&sign_in).await?;
    let form = [
        ("client_id", sign_in.cfg.oidc_device_client_id.as_str()),
        ("scope", "openid email profile"),
    ];
    let answer = send(sign_in.discovery.http().post(device).form(&form)).await?;
    let (Some(device_code), Some(user_code)) =
        (answer["device_code"].as_str(), answer["user_code"].as_str())
    else {
        tracing::warn!(%answer, "device authorization refused");
        return Err(Problem::unavailable(
            "the identity provider refused to start a device sign-in",
        ));
    };
    Ok(HttpResponse::Ok().json(json!({
        "deviceCode": device_code,
        "userCode": user_code,
        "verificationURI": answer["verification_uri"],
        "verificationURIComplete": answer["verification_uri_complete"],
        "expiresIn": answer["expires_in"],
        "interval": answer["interval"].as_u64().unwrap_or(5).max(polls.interval.as_secs()),
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Poll {
    #[serde(rename = "deviceCode")]
    device_code: String,
}

/// When each device code was last polled, to hold clients to the interval (RFC 8628 §3.5):
/// a client polling faster is told `slow_down` without the provider being asked.
pub struct Polls {
    last: moka::future::Cache<String, Instant>,
    /// The least time between two polls of one device code that reach the provider.
    interval: Duration,
}

impl Polls {
    pub fn new(interval: Duration) -> Self {
        // Device codes live minutes; a bounded cache forgets abandoned ones.
        let last = moka::future::Cache::builder()
            .max_capacity(100_000)
            .time_to_live(Duration::from_secs(900))
            .build();
        Self { last, interval }
    }
}

/// Poll: 202 while the user has not approved yet, 200 with a token once they have.
pub async fn token(
    sign_in: web::Data<SignIn>,
    body: web::Json<Poll>,
) -> Result<HttpResponse, Problem> {
    let polls = &sign_in.polls;
    let now = Instant::now();
    let too_soon = polls
        .last
        .get(&body.device_code)
        .await
        .is_some_and(|previous| now.duration_since(previous) < polls.interval);
    if too_soon {
        return Ok(HttpResponse::Accepted()
            .insert_header(("Retry-After", polls.interval.as_secs().max(1).to_string()))
            .json(json!({ "status": "slow_down" })));
    }
    polls.last.insert(body.device_code.clone(), now).await;
    let (_, token) = endpoints(&sign_in).await?;
    let form = [
        ("grant_type", DEVICE_GRANT),
        ("device_code", body.device_code.as_str()),
        ("client_id", sign_in.cfg.oidc_device_client_id.as_str()),
    ];
    let answer = send(sign_in.discovery.http().post(token).form(&form)).await?;
    if let Some(access) = answer["access_token"].as_str() {
        return Ok(HttpResponse::Ok().json(json!({
            "accessToken": access,
            "tokenType": "Bearer",
            "expiresIn": answer["expires_in"],
        })));
    }
    match answer["error"].as_str() {
        Some(status @ ("authorization_pending" | "slow_down")) => {
            Ok(HttpResponse::Accepted().json(json!({ "status": status })))
        }
        Some(error) => Err(Problem::bad_request(format!("device sign-in failed: {error}"))),
        None => Err(Problem::unavailable("the identity provider answered nonsense")),
    }
}
