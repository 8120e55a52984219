-- E2B envd access tokens handed out by a sandbox's connect, besides its lease's root token: E2B
-- keeps earlier handles working, and vendbox keeps only tokens' hashes, so each connect adds a
-- token instead of replacing one. They go with their sandbox's lease.
CREATE TABLE e2b_access_tokens (
    lease_id    TEXT NOT NULL REFERENCES leases (id) ON DELETE CASCADE,
    token_hash  TEXT NOT NULL UNIQUE,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (lease_id, token_hash)
);
