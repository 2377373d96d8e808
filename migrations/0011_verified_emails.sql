-- Adding a member by email matches only emails the identity provider verified (its
-- `email_verified` claim): anyone can sign in with an unverified address that is not theirs.
ALTER TABLE user_profiles ADD COLUMN email_verified boolean NOT NULL DEFAULT false;
