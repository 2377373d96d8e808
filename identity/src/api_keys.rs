//! Personal API keys: `ock_<key id>_<secret>`. The id finds the key; the 256-bit secret is
//! checked against its SHA-256 in constant time. A high-entropy random secret needs no slow
//! password hash: there is nothing to guess.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use schemas::ids::{ApiKeyId, OrganizationId, UserId, WorkspaceId};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// What every key starts with, so scanners and log filters can spot leaked keys.
pub const PREFIX: &str = "ock_";

/// A new key: the full text to show once, and the hash to store.
pub struct NewKey {
    pub text: String,
    pub secret_sha256: Vec<u8>,
}

pub fn generate(id: &ApiKeyId) -> NewKey {
    let mut secret = [0u8; 32];
    rand::rng().fill_bytes(&mut secret);
    let secret = URL_SAFE_NO_PAD.encode(secret);
    NewKey {
        text: format!("{PREFIX}{id}_{secret}"),
        secret_sha256: Sha256::digest(secret.as_bytes()).to_vec(),
    }
}

/// Split a presented key into its id and secret (None if it is not shaped like one).
pub fn parse(text: &str) -> Option<(ApiKeyId, &str)> {
    let rest = text.strip_prefix(PREFIX)?;
    // The id is `key_<ULID>` (one underscore), then `_`, then the secret.
    let split = rest.match_indices('_').nth(1)?.0;
    let id = rest[..split].parse().ok()?;
    Some((id, &rest[split + 1..]))
}

/// Who a valid key acts as.
#[derive(Debug, Clone)]
pub struct KeyIdentity {
    pub key_id: ApiKeyId,
    pub user_id: UserId,
    pub organization_id: OrganizationId,
    /// The key's default workspace, if it has one.
    pub workspace_id: Option<WorkspaceId>,
    /// When the key stops working, in milliseconds since the Unix epoch.
    pub expires_at_ms: i64,
}

/// Check a presented key. `Ok(None)` for any invalid key (unknown, wrong secret, expired,
/// revoked, owner erased): the caller says only "unauthorized".
pub async fn verify(
    db: &deadpool_postgres::Client,
    text: &str,
) -> Result<Option<KeyIdentity>, tokio_postgres::Error> {
    let Some((id, secret)) = parse(text) else { return Ok(None) };
    let stmt = db
        .prepare_cached(
            "SELECT k.user_id, k.organization_id, k.secret_sha256, \
                    (extract(epoch FROM k.expires_at) * 1000)::bigint, k.workspace_id FROM api_keys k \
             JOIN users u USING (user_id) \
             WHERE k.key_id = $1 AND k.revoked_at IS NULL AND k.expires_at > now() AND u.erased_at IS NULL",
        )
        .await?;
    let Some(row) = db.query_opt(&stmt, &[&id.as_str()]).await? else { return Ok(None) };
    let stored: Vec<u8> = row.get(2);
    let presented = Sha256::digest(secret.as_bytes());
    if !bool::from(presented[..].ct_eq(&stored[..])) {
        return Ok(None);
    }
    let (user, org, expires_at_ms): (String, String, i64) = (row.get(0), row.get(1), row.get(3));
    let workspace_id = row.get::<_, Option<String>>(4).and_then(|w| w.parse().ok());
    Ok(user.parse().ok().zip(org.parse().ok()).map(|(user_id, organization_id)| KeyIdentity {
        key_id: id,
        user_id,
        organization_id,
        workspace_id,
        expires_at_ms,
    }))
}

/// Record a new key's credential (before its event, so it works as soon as it is shown).
pub async fn store(
    db: &deadpool_postgres::Client,
    id: &ApiKeyId,
    user: &UserId,
    organization: &OrganizationId,
    workspace: Option<&WorkspaceId>,
    key: &NewKey,
    expires_at_ms: i64,
) -> Result<(), tokio_postgres::Error> {
    let workspace = workspace.map(WorkspaceId::as_str);
    db.execute(
        "INSERT INTO api_keys (key_id, user_id, organization_id, workspace_id, secret_sha256, expires_at) \
         VALUES ($1, $2, $3, $4, $5, to_timestamp($6::bigint / 1000.0))",
        &[&id.as_str(), &user.as_str(), &organization.as_str(), &workspace, &key.secret_sha256, &expires_at_ms],
    )
    .await?;
    Ok(())
}

/// Remove a credential whose key was never handed out (its event could not be recorded).
pub async fn discard(
    db: &deadpool_postgres::Client,
    id: &ApiKeyId,
) -> Result<(), tokio_postgres::Error> {
    db.execute("DELETE FROM api_keys WHERE key_id = $1", &[&id.as_str()]).await?;
    Ok(())
}

/// Revoke `user`'s key at once (idempotent). False if they have no such key.
pub async fn revoke(
    db: &deadpool_postgres::Client,
    id: &ApiKeyId,
    user: &UserId,
) -> Result<bool, tokio_postgres::Error> {
    let revoked = db
        .execute(
            "UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()) WHERE key_id = $1 AND user_id = $2",
            &[&id.as_str(), &user.as_str()],
        )
        .await?;
    Ok(revoked > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_parse_back_to_their_id_and_hash_to_what_is_stored() {
        let id = ApiKeyId::new();
        let key = generate(&id);
        let (parsed, secret) = parse(&key.text).unwrap();
        assert_eq!(parsed, id);
        assert_eq!(Sha256::digest(secret.as_bytes()).to_vec(), key.secret_sha256);
        assert!(parse("ock_nonsense").is_none());
        assert!(parse("eyJhbGciOi").is_none());
    }
}
