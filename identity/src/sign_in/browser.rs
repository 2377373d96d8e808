//! Browser sign-in with the organization's OpenID provider: authorization code + PKCE, `state`
//! bound to the browser by a short-lived cookie, `nonce` checked in the ID token, then a
//! server-side login session (`login_sessions`). Routes: `GET /auth/login`,
//! `GET /auth/callback`, `POST /auth/logout`.
//!
//! A sign-in in progress (PKCE verifier, nonce, where to return) lives in that cookie, sealed
//! with AES-GCM under a key derived from the client secret (so every instance can open it):
//! an unauthenticated `GET /auth/login` writes nothing anywhere.

use std::time::Duration;

use actix_web::cookie::{Cookie, CookieJar, Key, SameSite};
use actix_web::{HttpRequest, HttpResponse, web};
use std::sync::Arc;

use openidconnect::core::{CoreAuthenticationFlow, CoreClient};
use openidconnect::{
    AuthorizationCode, ClientId, ClientSecret, CsrfToken, Nonce, PkceCodeChallenge,
    PkceCodeVerifier, RedirectUrl, Scope,
};
use platform::problem::Problem;
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha512};

use crate::authenticate::AuthUser;
use crate::config::LoginConfig;
use crate::discovery::Discovery;
use crate::login_sessions::{self as login, CSRF_COOKIE, SESSION_COOKIE};
use crate::users::Profile;

/// The cookie that binds a sign-in in progress to the browser that started it.
const ATTEMPT_COOKIE: &str = "oc_login";
const ATTEMPT_TTL: Duration = Duration::from_secs(600);

/// Longest `returnTo` accepted.
const MAX_RETURN_TO: usize = 512;

/// What sign-in needs: settings, the shared discovery client, the identity tables, and the key
/// that seals attempts.
pub struct SignIn {
    pub(crate) cfg: LoginConfig,
    pub(crate) discovery: Arc<Discovery>,
    /// Where users and login sessions are written.
    pub(crate) db: deadpool_postgres::Pool,
    /// Seals sign-ins in progress into their cookie.
    attempt_key: Key,
    /// When each device code was last polled (see `device.rs`).
    pub(crate) polls: super::device::Polls,
}

/// A sign-in in progress, sealed in the `oc_login` cookie.
#[derive(Serialize, Deserialize)]
struct Attempt {
    state: String,
    verifier: String,
    nonce: String,
    return_to: String,
    /// Milliseconds since the Unix epoch; the cookie's own expiry is the browser's to keep.
    expires_at: i64,
}

impl SignIn {
    pub fn new(cfg: LoginConfig, discovery: Arc<Discovery>, db: deadpool_postgres::Pool) -> Self {
        // 64 bytes of key material from the client secret, which every instance shares.
        let material = Sha512::new()
            .chain_update(b"oc sign-in attempt cookie\0")
            .chain_update(cfg.oidc_client_secret.expose_secret().as_bytes())
            .finalize();
        let attempt_key = Key::from(&material[..]);
        let polls = super::device::Polls::new(Duration::from_secs(cfg.oidc_device_poll_secs));
        Self { cfg, discovery, db, attempt_key, polls }
    }

    fn seal(&self, attempt: &Attempt) -> Result<Cookie<'static>, Problem> {
        let value = serde_json::to_string(attempt).map_err(|e| Problem::internal(&e))?;
        let mut jar = CookieJar::new();
        jar.private_mut(&self.attempt_key).add(cookie(ATTEMPT_COOKIE, value, true, ATTEMPT_TTL));
        jar.get(ATTEMPT_COOKIE).cloned().ok_or_else(|| Problem::internal(&"cookie not sealed"))
    }

    fn open(&self, sealed: Cookie<'static>) -> Option<Attempt> {
        let mut jar = CookieJar::new();
        jar.add_original(sealed);
        let opened = jar.private(&self.attempt_key).get(ATTEMPT_COOKIE)?;
        serde_json::from_str(opened.value()).ok()
    }

    async fn client(
        &self,
    ) -> Result<
        CoreClient<
            openidconnect::EndpointSet,
            openidconnect::EndpointNotSet,
            openidconnect::EndpointNotSet,
            openidconnect::EndpointNotSet,
            openidconnect::EndpointMaybeSet,
            openidconnect::EndpointMaybeSet,
        >,
        Problem,
    > {
        let metadata = self.discovery.metadata().await?;
        let redirect = RedirectUrl::new(self.cfg.oidc_redirect_url.clone())
            .map_err(|e| Problem::internal(&e))?;
        Ok(CoreClient::from_provider_metadata(
            (*metadata).clone(),
            ClientId::new(self.cfg.oidc_client_id.clone()),
            Some(ClientSecret::new(self.cfg.oidc_client_secret.expose_secret().to_owned())),
        )
        .set_redirect_uri(redirect))
    }
}

fn cookie(name: &str, value: String, http_only: bool, max_age: Duration) -> Cookie<'static> {
    Cookie::build(name.to_owned(), value)
        .path("/")
        .secure(true)
        .http_only(http_only)
        .same_site(SameSite::Lax)
        .max_age(actix_web::cookie::time::Duration::seconds(max_age.as_secs() as i64))
        .finish()
}

fn expired(name: &str) -> Cookie<'static> {
    let mut c = cookie(name, String::new(), true, Duration::ZERO);
    c.make_removal();
    c
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginQuery {
    #[serde(rename = "returnTo")]
    return_to: Option<String>,
}

/// Start signing in: remember the attempt, send the browser to the provider.
pub async fn start(
    sign_in: web::Data<SignIn>,
    query: web::Query<LoginQuery>,
) -> Result<HttpResponse, Problem> {
    // Only paths on this site: an open redirect would hand the session to anyone's page.
    let return_to = safe_return_to(query.return_to.as_deref().unwrap_or("/"))
        .ok_or_else(|| Problem::bad_request("returnTo must be a path on this site"))?;
    let client = sign_in.client().await?;
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let (url, csrf, nonce) = client
        .authorize_url(
            CoreAuthenticationFlow::AuthorizationCode,
            CsrfToken::new_random,
            Nonce::new_random,
        )
        .add_scope(Scope::new("email".into()))
        .add_scope(Scope::new("profile".into()))
        .set_pkce_challenge(challenge)
        .url();
    let attempt = Attempt {
        state: csrf.secret().clone(),
        verifier: verifier.secret().clone(),
        nonce: nonce.secret().clone(),
        return_to,
        expires_at: schemas::now_ms() + ATTEMPT_TTL.as_millis() as i64,
    };
    Ok(HttpResponse::SeeOther()
        .insert_header(("Location", url.to_string()))
        .cookie(sign_in.seal(&attempt)?)
        .finish())
}

/// `raw` as a path on this site, normalised, or None. It must be a relative reference with an
/// absolute path: no scheme, no authority (`//host`), no backslash, no control characters (a
/// browser drops a tab or newline and may then read `/\t/host` as `//host`), also once
/// percent-decoded; and it must resolve to this site.
pub fn safe_return_to(raw: &str) -> Option<String> {
    let dangerous = |s: &str| {
        s.chars().any(|c| c.is_control() || c == '\\' || c.is_whitespace())
            || !s.starts_with('/')
            || s.starts_with("//")
    };
    let decoded = percent_encoding::percent_decode_str(raw).decode_utf8_lossy();
    if raw.len() > MAX_RETURN_TO || dangerous(raw) || dangerous(&decoded) {
        return None;
    }
    let base = url::Url::parse("https://this.site.invalid/").ok()?;
    let resolved = base.join(raw).ok()?;
    if resolved.origin() != base.origin() {
        return None;
    }
    let mut normal = resolved.path().to_owned();
    if let Some(q) = resolved.query() {
        normal = format!("{normal}?{q}");
    }
    if let Some(f) = resolved.fragment() {
        normal = format!("{normal}#{f}");
    }
    (!dangerous(&normal)).then_some(normal)
}

#[derive(Deserialize)]
pub struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
}

/// The provider sent the browser back: check everything, then open a login session.
pub async fn callback(
    req: HttpRequest,
    sign_in: web::Data<SignIn>,
    query: web::Query<CallbackQuery>,
) -> Result<HttpResponse, Problem> {
    if let Some(error) = &query.error {
        return Err(Problem::bad_request(format!(
            "the identity provider refused the sign-in: {error}"
        )));
    }
    let (Some(code), Some(attempt)) = (&query.code, &query.state) else {
        return Err(Problem::bad_request("code and state are required"));
    };
    // The attempt must have started in this browser (login CSRF), unexpired, unaltered.
    let attempt = req
        .cookie(ATTEMPT_COOKIE)
        .and_then(|c| sign_in.open(c))
        .filter(|a| &a.state == attempt && a.expires_at > schemas::now_ms())
        .ok_or_else(|| {
            Problem::bad_request(
                "this sign-in was not started in this browser or expired; start again",
            )
        })?;
    let Attempt { verifier, nonce, return_to, .. } = attempt;
    let db = sign_in.db.get().await?;

    let client = sign_in.client().await?;
    let tokens = client
        .exchange_code(AuthorizationCode::new(code.clone()))
        .map_err(|e| Problem::internal(&e))?
        .set_pkce_verifier(PkceCodeVerifier::new(verifier))
        .request_async(sign_in.discovery.http())
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "code exchange failed");
            Problem::bad_request("the identity provider did not accept the sign-in; start again")
        })?;
    let id_token = openidconnect::TokenResponse::id_token(&tokens)
        .ok_or_else(|| Problem::bad_request("the identity provider sent no ID token"))?;
    let nonce = Nonce::new(nonce);
    let claims = match id_token.claims(&client.id_token_verifier(), &nonce) {
        Ok(claims) => claims.clone(),
        Err(first) => {
            // Perhaps signed with a key published after our copy of the provider's keys: fetch
            // them again, once, before refusing.
            sign_in.discovery.refresh().await;
            let fresh = sign_in.client().await?;
            id_token.claims(&fresh.id_token_verifier(), &nonce).cloned().map_err(|e| {
                tracing::warn!(error = %e, first = %first, "ID token rejected");
                Problem::bad_request("the identity provider's ID token was not valid")
            })?
        }
    };
    let profile = Profile {
        email: claims.email().map(|e| e.as_str().to_owned()),
        email_verified: claims.email_verified().unwrap_or(false),
        name: claims.name().and_then(|n| n.get(None)).map(|n| n.as_str().to_owned()),
    };
    let issuer = sign_in.discovery.issuer();
    let user = crate::users::resolve(&db, issuer, claims.subject().as_str(), &profile)
        .await?
        .ok_or_else(|| Problem::unauthorized("this account was erased"))?;
    let session = login::create(&db, &user).await?;
    tracing::info!(%user, "signed in");
    Ok(HttpResponse::SeeOther()
        .insert_header(("Location", return_to))
        .cookie(cookie(SESSION_COOKIE, session.token, true, login::SESSION_TTL))
        .cookie(cookie(CSRF_COOKIE, session.csrf, false, login::SESSION_TTL))
        .cookie(expired(ATTEMPT_COOKIE))
        .finish())
}

/// Sign out: the session ends on the server, so a copied cookie stops working too.
pub async fn logout(
    req: HttpRequest,
    _user: AuthUser,
    sign_in: web::Data<SignIn>,
) -> Result<HttpResponse, Problem> {
    if let Some(session) = req.cookie(SESSION_COOKIE) {
        let db = sign_in.db.get().await?;
        login::revoke(&db, session.value()).await?;
    }
    Ok(HttpResponse::NoContent()
        .cookie(expired(SESSION_COOKIE))
        .cookie(expired(CSRF_COOKIE))
        .finish())
}

#[cfg(test)]
mod tests {
    use super::safe_return_to;

    #[test]
    fn only_paths_on_this_site_are_returned_to() {
        assert_eq!(safe_return_to("/").as_deref(), Some("/"));
        assert_eq!(safe_return_to("/a/b?c=d#e").as_deref(), Some("/a/b?c=d#e"));
        assert_eq!(safe_return_to("/a/../b").as_deref(), Some("/b"));
        for bad in [
            "https://evil.example/",
            "//evil.example/",
            "/\tevil.example",
            "/\t/evil.example",
            "/%09/evil.example",
            "/\n/evil.example",
            "/%0a/evil.example",
            "/\\evil.example",
            "/%5cevil.example",
            "/%2f/evil.example",
            "%2f%2fevil.example",
            "evil.example",
            "javascript:alert(1)",
            "/ /evil.example",
        ] {
            assert_eq!(safe_return_to(bad), None, "{bad:?}");
        }
        assert_eq!(safe_return_to(&format!("/{}", "a".repeat(600))), None);
    }
}
