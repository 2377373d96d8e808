-- Personal data, kept apart from the immutable event log: events refer to users by id only, so
-- erasing a user deletes their profile row and nothing in `events` has to change.

CREATE TABLE user_profiles (
    user_id      text PRIMARY KEY REFERENCES users (user_id),
    email        text,
    display_name text,
    updated_at   timestamptz NOT NULL DEFAULT now()
);
-- "Add a member by email" looks people up here.
CREATE INDEX user_profiles_by_email ON user_profiles (lower(email));

-- Set when a user erased their account: their tokens are refused from then on.
ALTER TABLE users ADD COLUMN erased_at timestamptz;

-- Readers see the profiles of people who share an organization with them (rm_members is itself
-- restricted to the caller's organizations), and their own.
GRANT SELECT ON user_profiles TO oc_reader;
ALTER TABLE user_profiles ENABLE ROW LEVEL SECURITY;
CREATE POLICY colleagues ON user_profiles FOR SELECT TO oc_reader
    USING (user_id = current_setting('oc.user_id', true)
           OR user_id IN (SELECT user_id FROM rm_members));
