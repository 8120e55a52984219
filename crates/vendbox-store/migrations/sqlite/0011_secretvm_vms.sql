-- SecretVM's VMs (the secretvm surface): a docker-compose workload of one wallet, run in a box
-- (its lease, once launched) and charged from the wallet's credits by the billing period.
-- `billed_until` is the end of the last period charged; a charge's ledger reference is the VM
-- and that period's start, so a period is charged once however often a round is retried.
CREATE TABLE secretvm_vms (
    id             TEXT PRIMARY KEY,
    owner          TEXT NOT NULL,
    name           TEXT NOT NULL,
    vm_type        TEXT NOT NULL,
    status         TEXT NOT NULL,
    status_reason  TEXT,
    lease_id       TEXT,
    port           INTEGER NOT NULL,
    spec           TEXT NOT NULL,
    billed_until   INTEGER,
    created_at     INTEGER NOT NULL,
    updated_at     INTEGER NOT NULL
);
CREATE INDEX secretvm_vms_owner ON secretvm_vms (owner, created_at);
CREATE INDEX secretvm_vms_status ON secretvm_vms (status, billed_until);
