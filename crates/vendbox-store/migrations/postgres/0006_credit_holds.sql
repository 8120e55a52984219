-- Credits: a purchase paid from an account's balance first holds the amount (verification),
-- then books the charge and drops the hold in one transaction (settlement), or drops the hold
-- (void). An account's available credit is its balance less its unexpired holds. A hold and a
-- charge name the API key that spent them, so a key's daily and total caps can be summed; and
-- a payment says what it bought, for the wallet's list of its payments.
CREATE TABLE credit_holds (
    payment_id     TEXT PRIMARY KEY,
    account        TEXT NOT NULL REFERENCES accounts (address),
    key_id         TEXT,
    amount_atomic  BIGINT NOT NULL CHECK (amount_atomic > 0),
    created_at     BIGINT NOT NULL,
    expires_at     BIGINT NOT NULL
);
CREATE INDEX credit_holds_account ON credit_holds (account, expires_at);
CREATE INDEX credit_holds_key ON credit_holds (key_id, expires_at);

ALTER TABLE ledger_entries ADD COLUMN key_id TEXT;
CREATE INDEX ledger_entries_key ON ledger_entries (key_id, created_at);
-- The balance is summed from the index alone.
CREATE INDEX ledger_entries_balance ON ledger_entries (account, delta_atomic);

ALTER TABLE payments ADD COLUMN purchase TEXT;
CREATE INDEX payments_payer ON payments (payer, created_at);
