//! Login sessions for browsers: a random token in an HttpOnly, Secure, SameSite cookie, looked
//! up (by its hash) on every request, with a CSRF token the page must echo in `X-CSRF-Token` on
//! every state-changing request. Signing out revokes the session server-side.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use schemas::ids::UserId;
use sha2::{Digest, Sha256};

/// The login session cookie (HttpOnly: scripts cannot read it).
pub const SESSION_COOKIE: &str = "oc_session";
/// The CSRF token cookie (readable by the page, which copies it into `X-CSRF-Token`).
pub const CSRF_COOKIE: &str = "oc_csrf";
/// The header state-changing requests authenticated by cookie must carry.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// How long a login session lasts.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);

/// A fresh random token (256 bits, URL-safe).
pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

pub fn sha256(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

/// A new session: the cookie value and the CSRF token.
pub struct NewSession {
    pub token: String,
    pub csrf: String,
}

pub async fn create(
    db: &deadpool_postgres::Client,
    user: &UserId,
) -> Result<NewSession, tokio_postgres::Error> {
    let session = NewSession { token: random_token(), csrf: random_token() };
    let ttl = SESSION_TTL.as_secs() as f64;
    db.execute(
        "INSERT INTO login_sessions (token_sha256, user_id, csrf_token, expires_at) \
         VALUES ($1, $2, $3, now() + make_interval(secs => $4))",
        &[&sha256(&session.token), &user.as_str(), &session.csrf, &ttl],
    )
    .await?;
    Ok(session)
}

/// A live login session.
pub struct LiveSession {
    pub user_id: UserId,
    pub csrf: String,
    /// When it ends, in milliseconds since the Unix epoch.
    pub expires_at_ms: i64,
}

/// The live session a cookie names.
pub async fn lookup(
    db: &deadpool_postgres::Client,
    token: &str,
) -> Result<Option<LiveSession>, tokio_postgres::Error> {
    let stmt = db
        .prepare_cached(
            "SELECT s.user_id, s.csrf_token, (extract(epoch FROM s.expires_at) * 1000)::bigint \
             FROM login_sessions s JOIN users u USING (user_id) \
             WHERE s.token_sha256 = $1 AND s.revoked_at IS NULL AND s.expires_at > now() AND u.erased_at IS NULL",
        )
        .await?;
    let row = db.query_opt(&stmt, &[&sha256(token)]).await?;
    Ok(row.and_then(|r| {
        Some(LiveSession {
            user_id: r.get::<_, String>(0).parse().ok()?,
            csrf: r.get(1),
            expires_at_ms: r.get(2),
        })
    }))
}

/// Sign out: the cookie stops working everywhere at once.
pub async fn revoke(
    db: &deadpool_postgres::Client,
    token: &str,
) -> Result<(), tokio_postgres::Error> {
    db.execute(
        "UPDATE login_sessions SET revoked_at = now() WHERE token_sha256 = $1 AND revoked_at IS NULL",
        &[&sha256(token)],
    )
    .await?;
    Ok(())
}

/// Whether a request method changes state (and so needs the CSRF token with a cookie).
pub fn is_state_changing(method: &actix_web::http::Method) -> bool {
    !matches!(
        *method,
        actix_web::http::Method::GET
            | actix_web::http::Method::HEAD
            | actix_web::http::Method::OPTIONS
    )
}
