-- E2B sandboxes (the e2b surface): a box lease owned by the account whose API key made it, with
-- the template it was asked for and the metadata and environment variables the E2B API keeps
-- with a sandbox (JSON objects of strings).
CREATE TABLE e2b_sandboxes (
    lease_id    TEXT PRIMARY KEY,
    owner       TEXT NOT NULL,
    template    TEXT NOT NULL,
    metadata    TEXT NOT NULL,
    env_vars    TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);
CREATE INDEX e2b_sandboxes_owner ON e2b_sandboxes (owner, created_at);
