-- Wallet-signature authentication and API keys. A signed request's nonce is claimed once per
-- address and kept until its timestamp leaves the accepted window (then purged), so a replay is
-- refused by this table on every host sharing the database. An API key is stored as its
-- SHA-256 only, with its last four characters for listing, its scope and its spending caps.
CREATE TABLE auth_nonces (
    address     TEXT NOT NULL,
    nonce       TEXT NOT NULL,
    expires_at  BIGINT NOT NULL,
    PRIMARY KEY (address, nonce)
);
CREATE INDEX auth_nonces_expiry ON auth_nonces (expires_at);

-- api_keys (from the first migration) gains what a key shows and may spend; a key without a
-- label has an empty one.
ALTER TABLE api_keys ADD COLUMN last4 TEXT NOT NULL DEFAULT '';
ALTER TABLE api_keys ADD COLUMN scope TEXT NOT NULL DEFAULT '{"kind":"all"}';
ALTER TABLE api_keys ADD COLUMN daily_cap_atomic BIGINT CHECK (daily_cap_atomic >= 0);
ALTER TABLE api_keys ADD COLUMN total_cap_atomic BIGINT CHECK (total_cap_atomic >= 0);
CREATE INDEX api_keys_account ON api_keys (account, created_at);

-- x402Compute's instances: a lease with a box, owned by the wallet that paid for it. Its
-- one-time root password is issued at most once, and only when no SSH key was given.
CREATE TABLE compute_instances (
    lease_id            TEXT PRIMARY KEY REFERENCES leases (id) ON DELETE CASCADE,
    owner               TEXT NOT NULL,
    plan                TEXT NOT NULL,
    region              TEXT,
    os_id               BIGINT,
    label               TEXT,
    ssh_key_given       BOOLEAN NOT NULL,
    password_issued_at  BIGINT,
    created_at          BIGINT NOT NULL
);
CREATE INDEX compute_instances_owner ON compute_instances (owner, created_at);
