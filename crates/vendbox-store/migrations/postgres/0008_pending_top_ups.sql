-- A top-up is written down before its x402 payment settles: the account it credits and how
-- much. Booking the `top_up` entry deletes the row in the same transaction, so a row left
-- behind (the process died, or the store failed, after the money moved) is a top-up owed, and
-- the settlement worker books it once its payment is settled (or drops it once voided).
CREATE TABLE pending_top_ups (
    payment_id     TEXT PRIMARY KEY REFERENCES payments (id),
    account        TEXT NOT NULL,
    amount_atomic  BIGINT NOT NULL CHECK (amount_atomic > 0),
    created_at     BIGINT NOT NULL
);
