-- SSH public keys that open a lease's box through the SSH gateway. A key may open several
-- leases; the gateway looks keys up by their SHA-256 fingerprint (`SHA256:…`, as OpenSSH
-- prints it).
CREATE TABLE lease_ssh_keys (
    lease_id     TEXT NOT NULL REFERENCES leases (id) ON DELETE CASCADE,
    fingerprint  TEXT NOT NULL,
    public_key   TEXT NOT NULL,
    PRIMARY KEY (lease_id, fingerprint)
);
CREATE INDEX lease_ssh_keys_fingerprint ON lease_ssh_keys (fingerprint);
