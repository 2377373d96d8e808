//! Provider API keys at rest, by envelope encryption (AES-256-GCM, RustCrypto `aes-gcm`):
//!
//! - each key is encrypted under a random data key (DEK) of its own;
//! - the DEK is encrypted ("wrapped") under a key-encryption key (KEK) from configuration,
//!   named by an id, so KEKs rotate by re-wrapping DEKs without touching ciphertexts
//!   (`rewrap`);
//! - the associated data binds both to the organization and connection: a row copied to another
//!   connection or tenant does not decrypt;
//! - deleting the row destroys the DEK (crypto-shredding): nothing anywhere can recover the key.
//!
//! Events and read models hold a fingerprint and the last four characters only. Plaintext lives
//! in `SecretString`s; DEKs are zeroized when dropped. Only the worker that calls the provider
//! opens a key, per call.

use std::collections::HashMap;

use aes_gcm::aead::{Aead, KeyInit, OsRng, Payload};
use aes_gcm::{AeadCore, Aes256Gcm, Nonce};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use schemas::ids::{ConnectionId, OrganizationId};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// Key-encryption keys by id, and the one new secrets are wrapped with.
#[derive(Clone)]
pub struct Keks {
    keys: HashMap<String, Zeroizing<[u8; 32]>>,
    active: String,
}

impl std::fmt::Debug for Keks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<&String> = self.keys.keys().collect();
        write!(f, "Keks {{ active: {}, ids: {ids:?} }}", self.active)
    }
}

/// Why a secret could not be opened or sealed.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error("no key-encryption key is configured (OC_PROVIDER_KEKS)")]
    NoKek,
    #[error("key-encryption key `{0}` is not configured")]
    UnknownKek(String),
    #[error("the secret does not decrypt for this connection")]
    Undecryptable,
    #[error("malformed key-encryption keys: {0}")]
    BadConfig(String),
}

impl Keks {
    /// From configuration: `kid:base64(32 bytes),kid2:…` and the active id (the last listed if
    /// empty). Empty configuration gives no keys: sealing then fails loudly.
    pub fn parse(list: &SecretString, active: &str) -> Result<Self, CredentialError> {
        let mut keys = HashMap::new();
        let mut last = String::new();
        for entry in list.expose_secret().split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let (id, b64) = entry
                .split_once(':')
                .ok_or_else(|| CredentialError::BadConfig("expected kid:base64key".into()))?;
            let bytes = Zeroizing::new(
                STANDARD
                    .decode(b64)
                    .map_err(|_| CredentialError::BadConfig(format!("{id}: not base64")))?,
            );
            let key: [u8; 32] = bytes
                .as_slice()
                .try_into()
                .map_err(|_| CredentialError::BadConfig(format!("{id}: not 32 bytes")))?;
            keys.insert(id.to_owned(), Zeroizing::new(key));
            last = id.to_owned();
        }
        let active = if active.is_empty() { last } else { active.to_owned() };
        if !keys.is_empty() && !keys.contains_key(&active) {
            return Err(CredentialError::UnknownKek(active));
        }
        Ok(Self { keys, active })
    }

    fn cipher(&self, id: &str) -> Result<Aes256Gcm, CredentialError> {
        let key = self.keys.get(id).ok_or_else(|| CredentialError::UnknownKek(id.to_owned()))?;
        Aes256Gcm::new_from_slice(&key[..]).map_err(|_| CredentialError::UnknownKek(id.to_owned()))
    }
}

/// A sealed secret as stored (`provider_secrets`).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sealed {
    pub kek_id: String,
    /// The DEK, encrypted under the KEK.
    pub wrapped_dek: Vec<u8>,
    pub dek_nonce: Vec<u8>,
    /// The secret, encrypted under the DEK.
    pub ciphertext: Vec<u8>,
    pub nonce: Vec<u8>,
}

impl std::fmt::Debug for Sealed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Sealed {{ kek_id: {}, .. }}", self.kek_id)
    }
}

fn secret_aad(org: &OrganizationId, connection: &ConnectionId) -> Vec<u8> {
    format!("oc provider key v1|{org}|{connection}").into_bytes()
}

fn dek_aad(org: &OrganizationId, connection: &ConnectionId, kek_id: &str) -> Vec<u8> {
    format!("oc provider dek v1|{org}|{connection}|{kek_id}").into_bytes()
}

/// What may be shown of a key: a fingerprint (first 16 hex digits of its SHA-256) and its last
/// four characters.
pub fn fingerprint(secret: &SecretString) -> (String, String) {
    let text = secret.expose_secret();
    let digest = Sha256::digest(text.as_bytes());
    let hex: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
    let last4: String = text.chars().rev().take(4).collect::<Vec<_>>().into_iter().rev().collect();
    (format!("sha256:{hex}"), last4)
}

/// Seal `secret` for `connection` of `org` under a fresh DEK and the active KEK.
pub fn seal(
    keks: &Keks,
    org: &OrganizationId,
    connection: &ConnectionId,
    secret: &SecretString,
) -> Result<Sealed, CredentialError> {
    if keks.keys.is_empty() {
        return Err(CredentialError::NoKek);
    }
    let dek = Zeroizing::new(Aes256Gcm::generate_key(OsRng));
    let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
    let aad = secret_aad(org, connection);
    let ciphertext = Aes256Gcm::new(&dek)
        .encrypt(&nonce, Payload { msg: secret.expose_secret().as_bytes(), aad: &aad })
        .map_err(|_| CredentialError::Undecryptable)?;
    let (wrapped_dek, dek_nonce) = wrap(keks, &keks.active, org, connection, &dek[..])?;
    Ok(Sealed {
        kek_id: keks.active.clone(),
        wrapped_dek,
        dek_nonce,
        ciphertext,
        nonce: nonce.to_vec(),
    })
}

fn wrap(
    keks: &Keks,
    kek_id: &str,
    org: &OrganizationId,
    connection: &ConnectionId,
    dek: &[u8],
) -> Result<(Vec<u8>, Vec<u8>), CredentialError> {
    let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
    let aad = dek_aad(org, connection, kek_id);
    let wrapped = keks
        .cipher(kek_id)?
        .encrypt(&nonce, Payload { msg: dek, aad: &aad })
        .map_err(|_| CredentialError::Undecryptable)?;
    Ok((wrapped, nonce.to_vec()))
}

fn unwrap(
    keks: &Keks,
    sealed: &Sealed,
    org: &OrganizationId,
    connection: &ConnectionId,
) -> Result<Zeroizing<Vec<u8>>, CredentialError> {
    let aad = dek_aad(org, connection, &sealed.kek_id);
    keks.cipher(&sealed.kek_id)?
        .decrypt(&nonce(&sealed.dek_nonce)?, Payload { msg: &sealed.wrapped_dek, aad: &aad })
        .map(Zeroizing::new)
        .map_err(|_| CredentialError::Undecryptable)
}

/// A stored 96-bit nonce.
fn nonce(bytes: &[u8]) -> Result<Nonce<aes_gcm::aead::consts::U12>, CredentialError> {
    let array: [u8; 12] = bytes.try_into().map_err(|_| CredentialError::Undecryptable)?;
    Ok(Nonce::from(array))
}

/// Open a sealed secret of `connection` of `org`.
pub fn open(
    keks: &Keks,
    sealed: &Sealed,
    org: &OrganizationId,
    connection: &ConnectionId,
) -> Result<SecretString, CredentialError> {
    let dek = unwrap(keks, sealed, org, connection)?;
    let aad = secret_aad(org, connection);
    let cipher = Aes256Gcm::new_from_slice(&dek).map_err(|_| CredentialError::Undecryptable)?;
    let plain = Zeroizing::new(
        cipher
            .decrypt(&nonce(&sealed.nonce)?, Payload { msg: &sealed.ciphertext, aad: &aad })
            .map_err(|_| CredentialError::Undecryptable)?,
    );
    let text = std::str::from_utf8(&plain).map_err(|_| CredentialError::Undecryptable)?;
    Ok(SecretString::from(text.to_owned()))
}

/// The same secret with its DEK wrapped under the active KEK (for KEK rotation); the
/// ciphertext is untouched.
pub fn rewrap(
    keks: &Keks,
    sealed: &Sealed,
    org: &OrganizationId,
    connection: &ConnectionId,
) -> Result<Sealed, CredentialError> {
    let dek = unwrap(keks, sealed, org, connection)?;
    let (wrapped_dek, dek_nonce) = wrap(keks, &keks.active, org, connection, &dek)?;
    Ok(Sealed { kek_id: keks.active.clone(), wrapped_dek, dek_nonce, ..sealed.clone() })
}

/// The table: one row per connection with a key; deleting it shreds the key.
pub mod store {
    use super::*;

    pub async fn put(
        db: &deadpool_postgres::Client,
        org: &OrganizationId,
        connection: &ConnectionId,
        sealed: &Sealed,
    ) -> Result<(), tokio_postgres::Error> {
        db.execute(
            "INSERT INTO provider_secrets (connection_id, organization_id, kek_id, wrapped_dek, dek_nonce, ciphertext, nonce) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) \
             ON CONFLICT (connection_id) DO UPDATE SET kek_id = EXCLUDED.kek_id, wrapped_dek = EXCLUDED.wrapped_dek, \
                 dek_nonce = EXCLUDED.dek_nonce, ciphertext = EXCLUDED.ciphertext, nonce = EXCLUDED.nonce, \
                 updated_at = now() \
             WHERE provider_secrets.organization_id = EXCLUDED.organization_id",
            &[
                &connection.as_str(),
                &org.as_str(),
                &sealed.kek_id,
                &sealed.wrapped_dek,
                &sealed.dek_nonce,
                &sealed.ciphertext,
                &sealed.nonce,
            ],
        )
        .await?;
        Ok(())
    }

    pub async fn get(
        db: &deadpool_postgres::Client,
        connection: &ConnectionId,
    ) -> Result<Option<Sealed>, tokio_postgres::Error> {
        // Read for every prompt on a connection: prepared once per pooled connection.
        let read = db
            .prepare_cached(
                "SELECT kek_id, wrapped_dek, dek_nonce, ciphertext, nonce FROM provider_secrets WHERE connection_id = $1",
            )
            .await?;
        let row = db.query_opt(&read, &[&connection.as_str()]).await?;
        Ok(row.map(|r| Sealed {
            kek_id: r.get(0),
            wrapped_dek: r.get(1),
            dek_nonce: r.get(2),
            ciphertext: r.get(3),
            nonce: r.get(4),
        }))
    }

    /// Re-wrap every data key not under the active KEK (after a new KEK was configured), in
    /// batches; ciphertexts are untouched. Returns how many were re-wrapped.
    pub async fn rewrap_all(db: &deadpool_postgres::Client, keks: &Keks) -> anyhow::Result<u64> {
        let mut done = 0;
        loop {
            let rows = db
                .query(
                    "SELECT connection_id, organization_id, kek_id, wrapped_dek, dek_nonce, ciphertext, nonce \
                     FROM provider_secrets WHERE kek_id <> $1 LIMIT 100",
                    &[&keks.active],
                )
                .await?;
            if rows.is_empty() {
                return Ok(done);
            }
            for r in rows {
                let (connection, org): (String, String) = (r.get(0), r.get(1));
                let (connection, org): (ConnectionId, OrganizationId) =
                    (connection.parse()?, org.parse()?);
                let sealed = Sealed {
                    kek_id: r.get(2),
                    wrapped_dek: r.get(3),
                    dek_nonce: r.get(4),
                    ciphertext: r.get(5),
                    nonce: r.get(6),
                };
                let rewrapped = rewrap(keks, &sealed, &org, &connection)?;
                db.execute(
                    "UPDATE provider_secrets SET kek_id = $2, wrapped_dek = $3, dek_nonce = $4, updated_at = now() \
                     WHERE connection_id = $1 AND kek_id = $5",
                    &[&connection.as_str(), &rewrapped.kek_id, &rewrapped.wrapped_dek, &rewrapped.dek_nonce, &sealed.kek_id],
                )
                .await?;
                done += 1;
            }
        }
    }

    /// Crypto-shred: the DEK goes with the row.
    pub async fn shred(
        db: &deadpool_postgres::Client,
        connection: &ConnectionId,
    ) -> Result<(), tokio_postgres::Error> {
        db.execute(
            "DELETE FROM provider_secrets WHERE connection_id = $1",
            &[&connection.as_str()],
        )
        .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keks(list: &str, active: &str) -> Keks {
        Keks::parse(&SecretString::from(list.to_owned()), active).unwrap()
    }

    fn kek() -> String {
        STANDARD.encode(Aes256Gcm::generate_key(OsRng))
    }

    #[test]
    fn a_sealed_key_opens_only_for_its_connection_and_organization() {
        let keks = keks(&format!("k1:{}", kek()), "");
        let (org, conn) = (OrganizationId::new(), ConnectionId::new());
        let secret = SecretString::from("sk-test-1234567890".to_owned());
        let sealed = seal(&keks, &org, &conn, &secret).unwrap();
        assert!(!sealed.ciphertext.windows(4).any(|w| w == b"sk-t"), "encrypted");
        assert_eq!(
            open(&keks, &sealed, &org, &conn).unwrap().expose_secret(),
            "sk-test-1234567890"
        );
        assert!(
            open(&keks, &sealed, &org, &ConnectionId::new()).is_err(),
            "copied to another connection"
        );
        assert!(
            open(&keks, &sealed, &OrganizationId::new(), &conn).is_err(),
            "copied to another tenant"
        );
        let mut tampered = sealed.clone();
        tampered.ciphertext[0] ^= 1;
        assert!(open(&keks, &tampered, &org, &conn).is_err());
    }

    #[test]
    fn a_kek_rotates_by_rewrapping_without_touching_the_ciphertext() {
        let (old, new) = (kek(), kek());
        let before = keks(&format!("old:{old}"), "old");
        let (org, conn) = (OrganizationId::new(), ConnectionId::new());
        let secret = SecretString::from("key-abc".to_owned());
        let sealed = seal(&before, &org, &conn, &secret).unwrap();
        let both = keks(&format!("old:{old},new:{new}"), "new");
        let rewrapped = rewrap(&both, &sealed, &org, &conn).unwrap();
        assert_eq!(rewrapped.kek_id, "new");
        assert_eq!(rewrapped.ciphertext, sealed.ciphertext);
        let only_new = keks(&format!("new:{new}"), "new");
        assert_eq!(open(&only_new, &rewrapped, &org, &conn).unwrap().expose_secret(), "key-abc");
        assert!(open(&only_new, &sealed, &org, &conn).is_err(), "the old KEK is gone");
    }

    #[test]
    fn fingerprints_show_no_more_than_the_last_four() {
        let (fp, last4) = fingerprint(&SecretString::from("sk-abcdef123456".to_owned()));
        assert_eq!(last4, "3456");
        assert!(fp.starts_with("sha256:") && !fp.contains("abcdef"));
    }
}
