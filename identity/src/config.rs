//! Identity settings (`OC_*` environment variables): how bearer tokens are validated, and how
//! browsers and command lines sign in.

use secrecy::SecretString;
use serde::{Deserialize, Serialize};

/// How bearer tokens are validated (command and query services).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct AuthConfig {
    /// `OC_OIDC_ISSUER`: the OpenID provider; compared exactly with the token's `iss`.
    pub oidc_issuer: String,
    /// `OC_OIDC_AUDIENCE`: the `aud` access tokens must carry (the API's resource indicator).
    pub oidc_audience: String,
    /// `OC_OIDC_ALGORITHMS`: accepted signing algorithms, comma separated. Never `none` or HS*.
    pub oidc_algorithms: String,
    /// `OC_JWKS_MIN_REFRESH_SECS`: least time between two JWKS fetches caused by unknown key ids.
    pub jwks_min_refresh_secs: u64,
    /// `OC_JWKS_MAX_AGE_SECS`: how long a fetched key is trusted before the JWKS is fetched
    /// again; a key the issuer stopped publishing is refused after at most this long.
    pub jwks_max_age_secs: u64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            oidc_issuer: "http://127.0.0.1:3000".into(),
            oidc_audience: "urn:opencode:api".into(),
            oidc_algorithms: "RS256,ES256,PS256".into(),
            jwks_min_refresh_secs: 10,
            jwks_max_age_secs: 300,
        }
    }
}

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
    /// `OC_OIDC_DEVICE_POLL_SECS`: the least time between two polls of one device code that
    /// reach the provider; faster polls are answered `slow_down` here.
    pub oidc_device_poll_secs: u64,
}

impl Default for LoginConfig {
    fn default() -> Self {
        Self {
            oidc_client_id: "oc-web".into(),
            oidc_client_secret: SecretString::from("oc-web-secret"),
            oidc_redirect_url: "http://127.0.0.1:8082/auth/callback".into(),
            oidc_device_client_id: "oc-cli".into(),
            oidc_device_poll_secs: 5,
        }
    }
}

/// Where provider keys are sealed and opened (the command service seals, workers open).
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct ProviderKeysConfig {
    /// `OC_PROVIDER_KEKS`: key-encryption keys, `id:base64(32 bytes)` comma separated. Keep old
    /// ids listed until every key was re-wrapped under the new one. Never serialised.
    #[serde(skip_serializing)]
    pub provider_keks: SecretString,
    /// `OC_PROVIDER_KEK_ID`: the one new keys are wrapped with (default: the last listed).
    pub provider_kek_id: String,
}

impl ProviderKeysConfig {
    pub fn keks(&self) -> Result<crate::credentials::Keks, crate::credentials::CredentialError> {
        crate::credentials::Keks::parse(&self.provider_keks, &self.provider_kek_id)
    }
}
