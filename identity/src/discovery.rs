//! The issuer's OpenID discovery document, fetched by one HTTP client (which never follows
//! redirects: discovery and key URLs must not bounce us elsewhere) and cached for everyone who
//! needs it: bearer-token validation (the JWKS location), browser sign-in (typed metadata with
//! the keys) and device sign-in (its endpoints).

use std::sync::Arc;
use std::time::Duration;

use openidconnect::IssuerUrl;
use openidconnect::core::CoreProviderMetadata;
use platform::problem::Problem;

/// How long a discovery document is trusted before it is fetched again.
const TTL: Duration = Duration::from_secs(300);

pub struct Discovery {
    issuer: String,
    http: openidconnect::reqwest::Client,
    /// The raw document, for endpoints the typed metadata does not name (device sign-in).
    document: moka::future::Cache<(), Arc<serde_json::Value>>,
    /// The typed metadata with the provider's keys (browser sign-in).
    metadata: moka::future::Cache<(), Arc<CoreProviderMetadata>>,
}

impl Discovery {
    pub fn new(issuer: String) -> anyhow::Result<Arc<Self>> {
        let http = openidconnect::reqwest::ClientBuilder::new()
            .redirect(openidconnect::reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(10))
            .build()?;
        Ok(Arc::new(Self {
            issuer,
            http,
            document: moka::future::Cache::builder().time_to_live(TTL).build(),
            metadata: moka::future::Cache::builder().time_to_live(TTL).build(),
        }))
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The client every call to the identity provider goes through.
    pub fn http(&self) -> &openidconnect::reqwest::Client {
        &self.http
    }

    /// The raw discovery document.
    pub async fn document(&self) -> Result<Arc<serde_json::Value>, Problem> {
        self.document
            .try_get_with((), async {
                let url = format!(
                    "{}/.well-known/openid-configuration",
                    self.issuer.trim_end_matches('/')
                );
                let res = self.http.get(url).send().await.map_err(|e| e.to_string())?;
                let res = res.error_for_status().map_err(|e| e.to_string())?;
                let bytes = res.bytes().await.map_err(|e| e.to_string())?;
                serde_json::from_slice(&bytes).map(Arc::new).map_err(|e| e.to_string())
            })
            .await
            .map_err(unavailable)
    }

    /// The typed metadata, with the provider's signing keys.
    pub async fn metadata(&self) -> Result<Arc<CoreProviderMetadata>, Problem> {
        self.metadata
            .try_get_with((), async {
                let issuer = IssuerUrl::new(self.issuer.clone()).map_err(|e| e.to_string())?;
                CoreProviderMetadata::discover_async(issuer, &self.http)
                    .await
                    .map(Arc::new)
                    .map_err(|e| e.to_string())
            })
            .await
            .map_err(unavailable)
    }

    /// Forget what was fetched (the provider rotated its keys): the next call fetches again.
    pub async fn refresh(&self) {
        self.metadata.invalidate(&()).await;
        self.document.invalidate(&()).await;
    }
}

fn unavailable(e: Arc<String>) -> Problem {
    tracing::warn!(error = %e, "OpenID discovery failed");
    Problem::unavailable("the identity provider is unavailable")
}
