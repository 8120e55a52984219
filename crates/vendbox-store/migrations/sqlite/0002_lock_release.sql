-- A released grant keeps its release-token hash and records when it ended, so that releasing
-- twice with one token is told apart from a stale token; and each grant keeps its TTL, the
-- default length of a renewal.
ALTER TABLE locks ADD COLUMN released_at INTEGER;
ALTER TABLE locks ADD COLUMN ttl_ms INTEGER;
-- Grants made before TTLs were recorded lasted from acquisition to expiry.
UPDATE locks SET ttl_ms = expires_at - acquired_at WHERE expires_at IS NOT NULL AND acquired_at IS NOT NULL;
