//! Who callers are, in one place: the issuer's discovery document (fetched by one client for
//! everyone), bearer-token and API-key authentication, browser and command-line sign-in, login
//! sessions, users and their profiles, API-key credentials, and the admission of authenticated
//! requests (rate limits), and provider keys at rest (`credentials`). It owns the tables `users`,
//! `user_profiles`, `api_keys`, `login_sessions` and `provider_secrets`; no other crate writes them.
#![forbid(unsafe_code)]

pub mod admission;
pub mod api_keys;
pub mod authenticate;
pub mod config;
pub mod credentials;
pub mod directory;
pub mod discovery;
pub mod login_sessions;
pub mod sign_in;
pub mod users;

pub use authenticate::{AuthUser, Authenticator, Credential};
pub use config::{AuthConfig, LoginConfig, ProviderKeysConfig};
pub use discovery::Discovery;
