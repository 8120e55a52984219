-- vendbox's first schema, SQLite flavour. Times are Unix milliseconds (UTC); money is atomic
-- USDC units in INTEGER (64-bit). Later changes come as new migrations, never edits of this one.

CREATE TABLE quotes (
    id            TEXT PRIMARY KEY,
    offer_id      TEXT NOT NULL,
    minutes       INTEGER,
    actions       INTEGER,
    region        TEXT,
    image         TEXT,
    price_atomic  INTEGER NOT NULL CHECK (price_atomic >= 0),
    created_at    INTEGER NOT NULL,
    expires_at    INTEGER NOT NULL
);
CREATE INDEX quotes_expires_at ON quotes (expires_at);

CREATE TABLE payments (
    id              TEXT PRIMARY KEY,
    quote_id        TEXT REFERENCES quotes (id),
    method          TEXT NOT NULL,
    chain           TEXT NOT NULL,
    asset           TEXT NOT NULL,
    payer           TEXT NOT NULL,
    nonce           TEXT NOT NULL,
    amount_atomic   INTEGER NOT NULL CHECK (amount_atomic >= 0),
    state           TEXT NOT NULL CHECK (state IN ('verified', 'settled', 'voided')),
    settlement_ref  TEXT,
    void_reason     TEXT,
    proof           TEXT,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,
    UNIQUE (chain, asset, payer, nonce)
);
CREATE INDEX payments_state ON payments (state, updated_at);

CREATE TABLE leases (
    id                 TEXT PRIMARY KEY,
    offer_id           TEXT NOT NULL,
    quote_id           TEXT REFERENCES quotes (id),
    payment_id         TEXT REFERENCES payments (id),
    state              TEXT NOT NULL CHECK (state IN ('pending', 'provisioning', 'active', 'expired', 'terminated', 'failed')),
    region             TEXT,
    image              TEXT,
    box_id             TEXT,
    created_at         INTEGER NOT NULL,
    updated_at         INTEGER NOT NULL,
    expires_at         INTEGER,
    actions_remaining  INTEGER CHECK (actions_remaining >= 0),
    failure_reason     TEXT
);
CREATE INDEX leases_state ON leases (state, expires_at);

CREATE TABLE lease_tokens (
    lease_id    TEXT NOT NULL REFERENCES leases (id) ON DELETE CASCADE,
    capability  TEXT NOT NULL CHECK (capability IN ('root', 'read', 'extend', 'terminate')),
    token_hash  TEXT NOT NULL UNIQUE,
    PRIMARY KEY (lease_id, capability)
);

-- One row per key, kept after release so that fencing tokens never go backwards.
CREATE TABLE locks (
    key                 TEXT PRIMARY KEY,
    fencing_token       INTEGER NOT NULL CHECK (fencing_token >= 0),
    owner               TEXT,
    release_token_hash  TEXT,
    acquired_at         INTEGER,
    expires_at          INTEGER,
    metadata            TEXT
);

CREATE TABLE accounts (
    address     TEXT PRIMARY KEY,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
);

CREATE TABLE ledger_entries (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    account       TEXT NOT NULL REFERENCES accounts (address),
    kind          TEXT NOT NULL CHECK (kind IN ('top_up', 'charge', 'refund')),
    delta_atomic  INTEGER NOT NULL,
    reference     TEXT NOT NULL,
    created_at    INTEGER NOT NULL,
    UNIQUE (account, kind, reference)
);

CREATE TABLE api_keys (
    id          TEXT PRIMARY KEY,
    account     TEXT NOT NULL REFERENCES accounts (address),
    key_hash    TEXT NOT NULL UNIQUE,
    label       TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    revoked_at  INTEGER
);
