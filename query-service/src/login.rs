//! Browser sign-in with the organization's OpenID provider: authorization code + PKCE, `state`
//! bound to the browser by a short-lived cookie, `nonce` checked in the ID token, then a
//! server-side login session (`platform::login`). Routes: `GET /auth/login`,
//! `GET /auth/callback`, `POST /auth/logout`.

use std::time::Duration;

use actix_web::cookie::{Cookie, SameSite};
use actix_web::{HttpRequest, HttpResponse, web};
use openidconnect::core::{CoreAuthenticationFlow, CoreClient, CoreProviderMetadata};
use openidconnect::{
    AuthorizationCode, ClientId, ClientSecret, CsrfToken, IssuerUrl, Nonce, PkceCodeChallenge,
    PkceCodeVerifier, RedirectUrl, Scope,
};
use platform::auth::AuthUser;
use platform::login::{self, CSRF_COOKIE, SESSION_COOKIE};
use platform::problem::Problem;
use platform::users::Profile;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use crate::startup::AppState;

/// The cookie that binds a sign-in in progress to the browser that started it.
const ATTEMPT_COOKIE: &str = "oc_login";
const ATTEMPT_TTL: Duration = Duration::from_secs(600);

/// Browser sign-in settings (`OC_*` environment variables).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct LoginConfig {
    /// `OC_OIDC_CLIENT_ID`: this service's client at the provider.
    pub oidc_client_id: String,
    /// `OC_OIDC_CLIENT_SECRET`: its secret. Never serialised.
    #[serde(skip_serializing)]
    pub oidc_client_secret: SecretString,
    /// `OC_OIDC_REDIRECT_URL`: where the provider sends the browser back (`…/auth/callback`).
    pub oidc_redirect_url: String,
    /// `OC_OIDC_DEVICE_CLIENT_ID`: the public client command-line sign-in uses.
    pub oidc_device_client_id: String,
}

impl Default for LoginConfig {
    fn default() -> Self {
        Self {
            oidc_client_id: "oc-web".into(),
            oidc_client_secret: SecretString::from("oc-web-secret"),
            oidc_redirect_url: "http://127.0.0.1:8082/auth/callback".into(),
            oidc_device_client_id: "oc-cli".into(),
        }
    }
}

/// What sign-in needs: settings, an HTTP client that never follows redirects (SSRF), and the
/// provider's metadata, discovered on first use.
pub struct Login {
    pub(crate) cfg: LoginConfig,
    pub(crate) issuer: String,
    pub(crate) http: openidconnect::reqwest::Client,
    /// Discovery document with the provider's keys; re-fetched when it ages out or when an ID
    /// token does not verify (the provider rotated its keys).
    metadata: moka::future::Cache<(), std::sync::Arc<CoreProviderMetadata>>,
}

impl Login {
    pub fn new(cfg: LoginConfig, issuer: String) -> anyhow::Result<Self> {
        let http = openidconnect::reqwest::ClientBuilder::new()
            .redirect(openidconnect::reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(10))
            .build()?;
        let metadata =
            moka::future::Cache::builder().time_to_live(Duration::from_secs(300)).build();
        Ok(Self { cfg, issuer, http, metadata })
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
        let metadata = self
            .metadata
            .try_get_with((), async {
                let issuer = IssuerUrl::new(self.issuer.clone()).map_err(|e| e.to_string())?;
                CoreProviderMetadata::discover_async(issuer, &self.http)
                    .await
                    .map(std::sync::Arc::new)
                    .map_err(|e| e.to_string())
            })
            .await
            .map_err(|e: std::sync::Arc<String>| {
                tracing::warn!(error = %e, "OpenID discovery failed");
                Problem::unavailable("the identity provider is unavailable")
            })?;
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
    state: web::Data<AppState>,
    login: web::Data<Login>,
    query: web::Query<LoginQuery>,
) -> Result<HttpResponse, Problem> {
    // Only paths on this site: an open redirect would hand the session to anyone's page.
    let return_to = query.return_to.clone().unwrap_or_else(|| "/".into());
    if !return_to.starts_with('/') || return_to.starts_with("//") || return_to.contains('\\') {
        return Err(Problem::bad_request("returnTo must be a path on this site"));
    }
    let client = login.client().await?;
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
    let db = state.identity.get().await?;
    db.execute(
        "INSERT INTO login_attempts (state, pkce_verifier, nonce, return_to, expires_at) \
         VALUES ($1, $2, $3, $4, now() + interval '10 minutes')",
        &[csrf.secret(), verifier.secret(), nonce.secret(), &return_to],
    )
    .await?;
    Ok(HttpResponse::SeeOther()
        .insert_header(("Location", url.to_string()))
        .cookie(cookie(ATTEMPT_COOKIE, csrf.secret().clone(), true, ATTEMPT_TTL))
        .finish())
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
    state: web::Data<AppState>,
    login: web::Data<Login>,
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
    // The attempt must have started in this browser (login CSRF), and is single-use.
    let bound = req.cookie(ATTEMPT_COOKIE).is_some_and(|c| c.value() == attempt);
    if !bound {
        return Err(Problem::bad_request(
            "this sign-in was not started in this browser; start again",
        ));
    }
    let db = state.identity.get().await?;
    let row = db
        .query_opt(
            "DELETE FROM login_attempts WHERE state = $1 AND expires_at > now() \
             RETURNING pkce_verifier, nonce, return_to",
            &[attempt],
        )
        .await?
        .ok_or_else(|| {
            Problem::bad_request("this sign-in expired or was already used; start again")
        })?;
    let (verifier, nonce, return_to): (String, String, String) =
        (row.get(0), row.get(1), row.get(2));

    let client = login.client().await?;
    let tokens = client
        .exchange_code(AuthorizationCode::new(code.clone()))
        .map_err(|e| Problem::internal(&e))?
        .set_pkce_verifier(PkceCodeVerifier::new(verifier))
        .request_async(&login.http)
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
            login.metadata.invalidate(&()).await;
            let fresh = login.client().await?;
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
    let user = platform::users::resolve(&db, &login.issuer, claims.subject().as_str(), &profile)
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
    state: web::Data<AppState>,
) -> Result<HttpResponse, Problem> {
    if let Some(session) = req.cookie(SESSION_COOKIE) {
        let db = state.identity.get().await?;
        login::revoke(&db, session.value()).await?;
    }
    Ok(HttpResponse::NoContent()
        .cookie(expired(SESSION_COOKIE))
        .cookie(expired(CSRF_COOKIE))
        .finish())
}
