//! Bearer-token authentication: every API request carries a JWT access token from the configured
//! OpenID provider, validated here against the provider's published keys.
//!
//! What is checked: the signature, with the key named by `kid` from the issuer's JWKS (found by
//! OpenID discovery); the algorithm, against a pinned list (so `none` and HS* are refused);
//! `iss` exactly; `aud`; `exp` and `nbf`. Keys are cached; an unknown `kid` refetches the JWKS,
//! at most once per `jwks_min_refresh_secs`, so signing-key rotation needs no restart.
//! The token's (issuer, subject) is then mapped to our own `usr_…` id.
//!
//! A verified token is remembered (by its SHA-256) until it expires, so a client's requests pay
//! for the signature check once rather than each time (an RSA verification costs more than the
//! rest of a request's authentication). A remembered token is trusted only while the key that
//! signed it is: once the issuer stops publishing that key, its tokens are checked afresh and fail.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::{FromRequest, HttpRequest, dev::Payload, web};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, jwk::Jwk};
use moka::future::Cache;
use schemas::ids::{ApiKeyId, OrganizationId, UserId, WorkspaceId};
use serde::Deserialize;
use subtle::ConstantTimeEq;
use tokio::sync::Mutex;

use platform::problem::Problem;

use crate::config::AuthConfig;
use crate::discovery::Discovery;
use crate::users::Profile;

/// The authenticated caller of a request.
#[derive(Debug, Clone)]
pub struct AuthUser {
    pub user_id: UserId,
    /// Set when the caller used a personal API key: the one organization it may act in.
    pub scope: Option<OrganizationId>,
    /// What the caller proved themselves with, to check again later (a long-lived stream).
    pub credential: Credential,
}

/// How a caller authenticated; never the secret itself.
#[derive(Debug, Clone)]
pub enum Credential {
    /// A JWT access token from the issuer.
    Bearer { expires_at_ms: i64 },
    /// A personal API key.
    ApiKey { key_id: ApiKeyId, workspace_id: Option<WorkspaceId>, expires_at_ms: i64 },
    /// A browser login session (the SHA-256 of its cookie).
    LoginSession { token_sha256: Vec<u8>, expires_at_ms: i64 },
}

impl Credential {
    /// When the credential stops working by itself, in milliseconds since the Unix epoch.
    pub fn expires_at_ms(&self) -> i64 {
        match self {
            Credential::Bearer { expires_at_ms }
            | Credential::ApiKey { expires_at_ms, .. }
            | Credential::LoginSession { expires_at_ms, .. } => *expires_at_ms,
        }
    }
}

impl AuthUser {
    /// Whether this caller may reach `org` at all (an API key reaches only its own).
    pub fn reaches(&self, org: &OrganizationId) -> bool {
        self.scope.as_ref().is_none_or(|s| s == org)
    }
}

/// Why a request is not authenticated.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("missing bearer token")]
    Missing,
    #[error("invalid token: {0}")]
    Invalid(String),
    #[error("identity provider unavailable: {0}")]
    ProviderUnavailable(String),
    #[error("database unavailable: {0}")]
    Database(String),
}

impl From<AuthError> for Problem {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::Missing | AuthError::Invalid(_) => {
                // Say why to the log, not to the caller.
                tracing::debug!(error = %e, "rejected token");
                Problem::unauthorized("a valid bearer token is required")
            }
            AuthError::ProviderUnavailable(_) | AuthError::Database(_) => {
                tracing::warn!(error = %e, "cannot authenticate");
                Problem::unavailable("authentication is temporarily unavailable")
            }
        }
    }
}

#[derive(Debug, Deserialize)]
struct Claims {
    sub: String,
    exp: i64,
    email: Option<String>,
    email_verified: Option<bool>,
    name: Option<String>,
}

/// A token whose signature and claims were verified.
struct Verified {
    /// The key that signed it (trusted only while the issuer publishes it).
    kid: String,
    /// When it stops being accepted: its `exp` plus the validation's leeway, in milliseconds.
    valid_until_ms: i64,
    claims: Claims,
}

/// Verified tokens remembered at most, and for at most this long (their `exp` is checked too).
const VERIFIED_TOKENS: u64 = 10_000;
const VERIFIED_FOR: Duration = Duration::from_secs(600);

/// A verification key with the algorithm its JWK declares, if any.
#[derive(Clone)]
struct Key {
    key: Arc<DecodingKey>,
    alg: Option<String>,
}

pub struct Authenticator {
    cfg: AuthConfig,
    algorithms: Vec<Algorithm>,
    /// The issuer's discovery document (for the JWKS location) and the HTTP client.
    discovery: Arc<Discovery>,
    keys: Cache<String, Key>,
    /// When the JWKS was last fetched; guards the refetch rate.
    last_fetch: Mutex<Option<Instant>>,
    users: Cache<String, Option<UserId>>,
    /// Tokens already verified, by the SHA-256 of the whole token.
    verified: Cache<[u8; 32], Arc<Verified>>,
    db: deadpool_postgres::Pool,
}

impl Authenticator {
    pub fn new(
        cfg: AuthConfig,
        discovery: Arc<Discovery>,
        db: deadpool_postgres::Pool,
    ) -> anyhow::Result<Self> {
        let algorithms = cfg
            .oidc_algorithms
            .split(',')
            .map(|a| a.trim().parse::<Algorithm>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| anyhow::anyhow!("OC_OIDC_ALGORITHMS: {e}"))?;
        anyhow::ensure!(
            algorithms
                .iter()
                .all(|a| !matches!(a, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512)),
            "OC_OIDC_ALGORITHMS must not allow HMAC algorithms"
        );
        let max_age = Duration::from_secs(cfg.jwks_max_age_secs);
        Ok(Self {
            cfg,
            algorithms,
            discovery,
            keys: Cache::builder().max_capacity(64).time_to_live(max_age).build(),
            last_fetch: Mutex::new(None),
            // Short-lived: an erasure or a changed email shows within a minute.
            users: Cache::builder()
                .max_capacity(100_000)
                .time_to_live(Duration::from_secs(60))
                .build(),
            verified: Cache::builder()
                .max_capacity(VERIFIED_TOKENS)
                .time_to_live(VERIFIED_FOR)
                .build(),
            db,
        })
    }

    /// Validate a bearer token (a JWT from the issuer, or a personal API key) and map it to a user.
    pub async fn authenticate(&self, token: &str) -> Result<AuthUser, AuthError> {
        if token.starts_with(crate::api_keys::PREFIX) {
            let db = self.db.get().await.map_err(|e| AuthError::Database(e.to_string()))?;
            let key = crate::api_keys::verify(&db, token)
                .await
                .map_err(|e| AuthError::Database(e.to_string()))?;
            let key = key
                .ok_or_else(|| AuthError::Invalid("unknown, expired or revoked API key".into()))?;
            return Ok(AuthUser {
                user_id: key.user_id,
                scope: Some(key.organization_id),
                credential: Credential::ApiKey {
                    key_id: key.key_id,
                    workspace_id: key.workspace_id,
                    expires_at_ms: key.expires_at_ms,
                },
            });
        }
        let verified = self.verified_token(token).await?;
        let user_id = self.user_id(&verified.claims).await?;
        let expires_at_ms = verified.claims.exp.saturating_mul(1000);
        Ok(AuthUser { user_id, scope: None, credential: Credential::Bearer { expires_at_ms } })
    }

    /// `token` verified: remembered from an earlier request if it is still within its validity
    /// and its signing key is still published, else checked now (and remembered).
    async fn verified_token(&self, token: &str) -> Result<Arc<Verified>, AuthError> {
        use sha2::Digest;
        let digest: [u8; 32] = sha2::Sha256::digest(token.as_bytes()).into();
        if let Some(known) = self.verified.get(&digest).await
            && schemas::now_ms() <= known.valid_until_ms
            && self.keys.contains_key(&known.kid)
        {
            return Ok(known);
        }
        let verified = Arc::new(self.verify(token).await?);
        self.verified.insert(digest, verified.clone()).await;
        Ok(verified)
    }

    /// Check a JWT's signature and claims.
    async fn verify(&self, token: &str) -> Result<Verified, AuthError> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| AuthError::Invalid(e.to_string()))?;
        if !self.algorithms.contains(&header.alg) {
            return Err(AuthError::Invalid(format!("algorithm {:?} not allowed", header.alg)));
        }
        let kid = header.kid.ok_or_else(|| AuthError::Invalid("no kid".into()))?;
        let key = self.key(&kid).await?;
        if key.alg.as_deref().is_some_and(|a| a != format!("{:?}", header.alg)) {
            return Err(AuthError::Invalid("algorithm does not match the key".into()));
        }
        let mut validation = Validation::new(header.alg);
        validation.algorithms = vec![header.alg];
        validation.set_issuer(&[&self.cfg.oidc_issuer]);
        validation.set_audience(&[&self.cfg.oidc_audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.validate_nbf = true;
        let leeway_ms = i64::try_from(validation.leeway).unwrap_or(0).saturating_mul(1000);
        let data = jsonwebtoken::decode::<Claims>(token, &key.key, &validation)
            .map_err(|e| AuthError::Invalid(e.to_string()))?;
        let valid_until_ms = data.claims.exp.saturating_mul(1000).saturating_add(leeway_ms);
        Ok(Verified { kid, valid_until_ms, claims: data.claims })
    }

    async fn key(&self, kid: &str) -> Result<Key, AuthError> {
        if let Some(k) = self.keys.get(kid).await {
            return Ok(k);
        }
        self.refresh_keys().await?;
        self.keys.get(kid).await.ok_or_else(|| AuthError::Invalid("unknown signing key".into()))
    }

    /// Fetch the JWKS unless it was fetched within the minimum refresh interval (a flood of
    /// tokens with made-up key ids must not become a flood of requests to the provider).
    async fn refresh_keys(&self) -> Result<(), AuthError> {
        let mut last = self.last_fetch.lock().await;
        let min = Duration::from_secs(self.cfg.jwks_min_refresh_secs);
        if last.is_some_and(|t| t.elapsed() < min) {
            return Ok(());
        }
        let uri = self.jwks_uri().await?;
        let body = self
            .discovery
            .http()
            .get(uri)
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(|e| AuthError::ProviderUnavailable(e.to_string()))?
            .bytes()
            .await
            .map_err(|e| AuthError::ProviderUnavailable(e.to_string()))?;
        #[derive(Deserialize)]
        struct Jwks {
            keys: Vec<serde_json::Value>,
        }
        let jwks: Jwks = serde_json::from_slice(&body)
            .map_err(|e| AuthError::ProviderUnavailable(format!("bad JWKS: {e}")))?;
        let mut published = std::collections::HashSet::new();
        for raw in jwks.keys {
            // Keys we cannot use (other types, encryption keys) are skipped, not fatal.
            let Ok(jwk) = serde_json::from_value::<Jwk>(raw) else {
                continue;
            };
            let Some(kid) = jwk.common.key_id.clone() else {
                continue;
            };
            let Ok(key) = DecodingKey::from_jwk(&jwk) else {
                continue;
            };
            let alg = jwk.common.key_algorithm.map(|a| format!("{a:?}"));
            published.insert(kid.clone());
            self.keys.insert(kid, Key { key: Arc::new(key), alg }).await;
        }
        // A key the issuer no longer publishes is revoked: stop trusting it now.
        for (kid, _) in self.keys.iter() {
            if !published.contains(kid.as_str()) {
                self.keys.invalidate(kid.as_str()).await;
            }
        }
        *last = Some(Instant::now());
        Ok(())
    }

    /// The JWKS location, from the issuer's (shared, cached) discovery document.
    async fn jwks_uri(&self) -> Result<String, AuthError> {
        let document = self.discovery.document().await.map_err(|p| {
            AuthError::ProviderUnavailable(p.detail.unwrap_or_else(|| "discovery failed".into()))
        })?;
        document["jwks_uri"].as_str().map(str::to_owned).ok_or_else(|| {
            AuthError::ProviderUnavailable("the discovery document has no jwks_uri".into())
        })
    }

    /// Our id for the token's subject, created on first sight; refused if the account was
    /// erased. Cached briefly, so an erasure takes effect everywhere within the cache's lifetime.
    async fn user_id(&self, claims: &Claims) -> Result<UserId, AuthError> {
        let (db, issuer) = (self.db.clone(), self.cfg.oidc_issuer.clone());
        let (subject, profile) = (
            claims.sub.clone(),
            Profile {
                email: claims.email.clone(),
                email_verified: claims.email_verified.unwrap_or(false),
                name: claims.name.clone(),
            },
        );
        let resolved = self
            .users
            .try_get_with(claims.sub.clone(), async move {
                let client = db.get().await.map_err(|e| e.to_string())?;
                crate::users::resolve(&client, &issuer, &subject, &profile)
                    .await
                    .map_err(|e| e.to_string())
            })
            .await
            .map_err(|e: Arc<String>| AuthError::Database(e.to_string()))?;
        resolved.ok_or_else(|| AuthError::Invalid("the account was erased".into()))
    }

    /// Whether `user`'s credential still works: not revoked, signed out or expired, and the
    /// account not erased. Asked again by long-lived streams when access may have changed.
    pub async fn still_valid(&self, user: &AuthUser) -> Result<bool, AuthError> {
        if user.credential.expires_at_ms() <= schemas::now_ms() {
            return Ok(false);
        }
        let db = self.db.get().await.map_err(|e| AuthError::Database(e.to_string()))?;
        let check = |sql: &'static str| async move {
            let stmt = db.prepare_cached(sql).await?;
            let row = match &user.credential {
                Credential::Bearer { .. } => db.query_opt(&stmt, &[&user.user_id.as_str()]).await?,
                Credential::ApiKey { key_id, .. } => {
                    db.query_opt(&stmt, &[&key_id.as_str()]).await?
                }
                Credential::LoginSession { token_sha256, .. } => {
                    db.query_opt(&stmt, &[token_sha256]).await?
                }
            };
            Ok::<_, tokio_postgres::Error>(row.is_some())
        };
        let live = match &user.credential {
            Credential::Bearer { .. } => {
                check("SELECT 1 FROM users WHERE user_id = $1 AND erased_at IS NULL").await
            }
            Credential::ApiKey { .. } => {
                check(
                    "SELECT 1 FROM api_keys k JOIN users u USING (user_id) WHERE k.key_id = $1 \
                     AND k.revoked_at IS NULL AND k.expires_at > now() AND u.erased_at IS NULL",
                )
                .await
            }
            Credential::LoginSession { .. } => {
                check(
                    "SELECT 1 FROM login_sessions s JOIN users u USING (user_id) WHERE s.token_sha256 = $1 \
                     AND s.revoked_at IS NULL AND s.expires_at > now() AND u.erased_at IS NULL",
                )
                .await
            }
        };
        live.map_err(|e| AuthError::Database(e.to_string()))
    }

    /// Forget a cached identity (after an erasure in this process).
    pub async fn forget(&self, subject_of: &UserId) {
        let stale: Vec<String> = self
            .users
            .iter()
            .filter(|(_, v)| v.as_ref() == Some(subject_of))
            .map(|(k, _)| (*k).clone())
            .collect();
        for key in stale {
            self.users.invalidate(&key).await;
        }
    }
}

impl FromRequest for AuthUser {
    type Error = Problem;
    type Future = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Self, Problem>>>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let auth = req.app_data::<web::Data<Authenticator>>().cloned();
        // A service that limits request rates registers them; they apply to every request once
        // its caller is known.
        let limits = req.app_data::<web::Data<crate::admission::RequestLimits>>().cloned();
        let authenticated = Self::authenticate(req, auth);
        Box::pin(async move {
            use platform::telemetry::trace_step;
            use tracing::Instrument;
            // Steps of their own in a request's trace: under a burst, requests wait here.
            let user = authenticated.instrument(trace_step("authenticate")).await?;
            if let Some(limits) = limits {
                limits.admit(&user).instrument(trace_step("request rate")).await?;
            }
            Ok(user)
        })
    }
}

/// The credential an `Authorization` header carries: a bearer token (a JWT or an API key), or
/// HTTP Basic with an API key as the password and any user name. Basic is what OpenCode's own
/// clients send (`opencode attach -p <key>`, the SDK); it carries API keys only, never a JWT, so
/// a browser that caches Basic credentials holds nothing but a revocable, organization-scoped key.
fn credential_of(header: &str) -> Result<String, Problem> {
    let (scheme, value) = header.trim().split_once(' ').unwrap_or((header, ""));
    if scheme.eq_ignore_ascii_case("bearer") {
        return Ok(value.trim().to_owned());
    }
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(Problem::unauthorized("use a bearer token, or Basic with an API key"));
    }
    use base64::Engine;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(value.trim())
        .ok()
        .and_then(|raw| String::from_utf8(raw).ok())
        .ok_or_else(|| Problem::unauthorized("malformed Basic credentials"))?;
    let (_user, password) = decoded
        .split_once(':')
        .ok_or_else(|| Problem::unauthorized("malformed Basic credentials"))?;
    if !password.starts_with(crate::api_keys::PREFIX) {
        return Err(Problem::unauthorized(
            "Basic authentication takes an API key as the password (any user name)",
        ));
    }
    Ok(password.to_owned())
}

impl AuthUser {
    /// Who sent `req`: a bearer token (JWT or API key) or Basic with an API key, else a login
    /// session cookie (with CSRF protection for state-changing requests).
    fn authenticate(
        req: &HttpRequest,
        auth: Option<web::Data<Authenticator>>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Self, Problem>>>> {
        let authorization =
            req.headers().get(actix_web::http::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        let token = match authorization.map(credential_of) {
            Some(Ok(token)) => Some(token),
            Some(Err(problem)) => return Box::pin(async move { Err(problem) }),
            None => None,
        };
        // Without a bearer token, a browser's login session cookie will do; a state-changing
        // request must then also echo the session's CSRF token (a bearer token needs none: a
        // browser never attaches it on its own).
        let cookie =
            req.cookie(crate::login_sessions::SESSION_COOKIE).map(|c| c.value().to_owned());
        let csrf = req
            .headers()
            .get(crate::login_sessions::CSRF_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let needs_csrf = crate::login_sessions::is_state_changing(req.method());
        Box::pin(async move {
            let auth = auth.ok_or_else(|| Problem::internal(&"authenticator not configured"))?;
            if let Some(token) = token {
                return Ok(auth.authenticate(&token).await?);
            }
            let cookie = cookie.ok_or(AuthError::Missing)?;
            let db = auth.db.get().await.map_err(|e| AuthError::Database(e.to_string()))?;
            let session = crate::login_sessions::lookup(&db, &cookie)
                .await
                .map_err(|e| AuthError::Database(e.to_string()))?
                .ok_or_else(|| AuthError::Invalid("no such login session".into()))?;
            let expected = session.csrf.as_bytes();
            let csrf_ok = csrf.is_some_and(|c| bool::from(c.as_bytes().ct_eq(expected)));
            if needs_csrf && !csrf_ok {
                return Err(Problem::forbidden(
                    "missing or wrong X-CSRF-Token for a cookie-authenticated request",
                ));
            }
            Ok(AuthUser {
                user_id: session.user_id,
                scope: None,
                credential: Credential::LoginSession {
                    token_sha256: crate::login_sessions::sha256(&cookie),
                    expires_at_ms: session.expires_at_ms,
                },
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::credential_of;

    fn basic(pair: &str) -> String {
        use base64::Engine;
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(pair))
    }

    #[test]
    fn bearer_tokens_and_basic_api_keys_are_credentials() {
        assert_eq!(credential_of("Bearer abc.def").unwrap(), "abc.def");
        assert_eq!(credential_of("bearer  abc ").unwrap(), "abc");
        assert_eq!(credential_of(&basic("opencode:ock_1_s")).unwrap(), "ock_1_s");
        assert_eq!(credential_of(&basic(":ock_1_s:with:colons")).unwrap(), "ock_1_s:with:colons");
    }

    #[test]
    fn basic_takes_nothing_but_an_api_key() {
        for header in [basic("opencode:eyJhbGciOi.x.y"), basic("opencode:"), basic("ock_1_s")] {
            assert_eq!(credential_of(&header).unwrap_err().status, 401, "{header}");
        }
        assert_eq!(credential_of("Basic %%%").unwrap_err().status, 401);
        assert_eq!(credential_of("Digest ock_1_s").unwrap_err().status, 401);
    }
}
