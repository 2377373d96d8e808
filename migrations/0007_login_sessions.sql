-- Browser sign-in: server-side login sessions behind an HttpOnly cookie.
--
-- The cookie holds a random token; only its SHA-256 is stored, so a database leak does not leak
-- live sessions. Signing out sets revoked_at: a stolen cookie stops working at once.

CREATE TABLE login_sessions (
    token_sha256 bytea PRIMARY KEY,
    user_id      text NOT NULL REFERENCES users (user_id),
    -- Sent back by the browser in X-CSRF-Token on every state-changing request.
    csrf_token   text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL,
    revoked_at   timestamptz
);
CREATE INDEX login_sessions_by_user ON login_sessions (user_id);

-- A sign-in in progress: PKCE verifier and nonce for the `state` sent to the provider.
CREATE TABLE login_attempts (
    state         text PRIMARY KEY,
    pkce_verifier text NOT NULL,
    nonce         text NOT NULL,
    return_to     text NOT NULL,
    expires_at    timestamptz NOT NULL
);
