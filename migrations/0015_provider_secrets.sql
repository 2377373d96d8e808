-- Provider API keys, apart from the events (identity/src/credentials.rs): each encrypted under a
-- data key of its own (AES-256-GCM), the data key wrapped under a key-encryption key from
-- configuration (`kek_id`), both bound to the organization and connection. Deleting the row
-- destroys the data key: the secret is then unrecoverable (crypto-shredding).
CREATE TABLE provider_secrets (
    connection_id   text PRIMARY KEY,
    organization_id text NOT NULL,
    kek_id          text NOT NULL,
    wrapped_dek     bytea NOT NULL,
    dek_nonce       bytea NOT NULL,
    ciphertext      bytea NOT NULL,
    nonce           bytea NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
