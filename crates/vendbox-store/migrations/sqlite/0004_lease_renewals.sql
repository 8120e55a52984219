-- How many times a lease was renewed or extended (VpsAgent's `renewal_count`), and the
-- settlement of the latest renewal; and Storefront `request_id`s, so that a request sent twice
-- makes one machine and is charged once (the first answer is kept and given again).
ALTER TABLE leases ADD COLUMN renewal_count INTEGER NOT NULL DEFAULT 0;
ALTER TABLE leases ADD COLUMN last_renewal_payment_id TEXT;

CREATE TABLE lease_requests (
    request_id  TEXT PRIMARY KEY,
    body_hash   TEXT NOT NULL,
    lease_id    TEXT REFERENCES leases (id),
    response    TEXT,
    created_at  INTEGER NOT NULL
);
