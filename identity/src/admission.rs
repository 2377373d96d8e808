//! Admission of authenticated requests: the request rates of a service, per user and per API
//! key, counted across every instance (`platform::limits`). Checked by the `AuthUser` extractor
//! right after authentication when the service registers `RequestLimits`.

use platform::limits::{Exceeded, Rate, RateTakes};
use platform::problem::Problem;

use crate::authenticate::{AuthUser, Credential};

/// The request rates of a service: per user, and per API key on top for key-authenticated
/// requests. Checked right after authentication (see `AuthUser`'s extractor).
pub struct RequestLimits {
    takes: RateTakes,
    pub per_user: Rate,
    pub per_key: Rate,
}

impl RequestLimits {
    pub fn new(db: deadpool_postgres::Pool, per_user: Rate, per_key: Rate) -> Self {
        Self { takes: RateTakes::start(db), per_user, per_key }
    }

    /// Let `user`'s request through, or say when it may come again.
    pub async fn admit(&self, user: &AuthUser) -> Result<(), Problem> {
        // The key's first: a request its key refuses takes nothing of its owner's rate.
        if let Credential::ApiKey { key_id, .. } = &user.credential
            && let Some(refused) = self.takes.take(format!("key:{key_id}"), self.per_key, 1).await?
        {
            return Err(Exceeded::rate("api-key-request-rate", self.per_key, refused).into());
        }
        if let Some(refused) =
            self.takes.take(format!("user:{}", user.user_id), self.per_user, 1).await?
        {
            return Err(Exceeded::rate("request-rate", self.per_user, refused).into());
        }
        Ok(())
    }
}
