//! Who a token's subject is, and what we hold about them. Events name users by `usr_…` id only;
//! email and display name live in `user_profiles`, refreshed from token claims, and are deleted
//! when the user erases their account.

use schemas::ids::UserId;

/// Identity claims of a token.
#[derive(Debug, Clone, Default)]
pub struct Profile {
    pub email: Option<String>,
    /// Whether the identity provider vouches that the email belongs to this person. Only
    /// verified emails are matched when someone is added by email.
    pub email_verified: bool,
    pub name: Option<String>,
}

/// Our id for (issuer, subject), created on first sight, with the profile brought up to date.
/// `None` if the account was erased.
pub async fn resolve(
    db: &deadpool_postgres::Client,
    issuer: &str,
    subject: &str,
    profile: &Profile,
) -> Result<Option<UserId>, tokio_postgres::Error> {
    let stmt = db
        .prepare_cached(
            "WITH u AS ( \
                 INSERT INTO users (user_id, issuer, subject) VALUES ($1, $2, $3) \
                 ON CONFLICT (issuer, subject) DO UPDATE SET issuer = EXCLUDED.issuer \
                 RETURNING user_id, erased_at), \
             p AS ( \
                 INSERT INTO user_profiles (user_id, email, email_verified, display_name) \
                 SELECT user_id, $4, $6, $5 FROM u \
                 WHERE erased_at IS NULL AND ($4::text IS NOT NULL OR $5::text IS NOT NULL) \
                 ON CONFLICT (user_id) DO UPDATE \
                 SET email = EXCLUDED.email, email_verified = EXCLUDED.email_verified, \
                     display_name = EXCLUDED.display_name, updated_at = now()) \
             SELECT user_id, erased_at IS NOT NULL FROM u",
        )
        .await?;
    let row = db
        .query_one(
            &stmt,
            &[
                &UserId::new().as_str(),
                &issuer,
                &subject,
                &profile.email,
                &profile.name,
                &profile.email_verified,
            ],
        )
        .await?;
    let erased: bool = row.get(1);
    let id: String = row.get(0);
    Ok((!erased).then(|| id.parse().ok()).flatten())
}

/// Erase a user's personal data and refuse their tokens from now on.
pub async fn erase(
    db: &mut deadpool_postgres::Client,
    user: &UserId,
) -> Result<(), tokio_postgres::Error> {
    let tx = db.transaction().await?;
    tx.execute("UPDATE users SET erased_at = now() WHERE user_id = $1", &[&user.as_str()]).await?;
    tx.execute("DELETE FROM user_profiles WHERE user_id = $1", &[&user.as_str()]).await?;
    tx.commit().await
}

/// Who a verified email belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EmailMatch {
    /// Nobody who signed in has this email, verified.
    Nobody,
    One(UserId),
    /// Several accounts have it verified (the provider allows that): refuse to guess.
    Several,
}

/// The user whose verified email this is (case-insensitive).
pub async fn by_verified_email(
    db: &deadpool_postgres::Client,
    email: &str,
) -> Result<EmailMatch, tokio_postgres::Error> {
    let rows = db
        .query(
            "SELECT user_id FROM user_profiles WHERE lower(email) = lower($1) AND email_verified LIMIT 2",
            &[&email],
        )
        .await?;
    Ok(match rows.as_slice() {
        [] => EmailMatch::Nobody,
        [one] => one.get::<_, String>(0).parse().map_or(EmailMatch::Nobody, EmailMatch::One),
        _ => EmailMatch::Several,
    })
}
