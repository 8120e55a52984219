-- The boxes of a SecretVM VM, one per compose service, in start order: a VM is a pod of boxes
-- sharing its first box's network namespace. `secretvm_vms.lease_id` stays the first box's
-- lease (the pod's, whose port the VM's domain serves); a restarted vendbox ends, bills and
-- checks every box of a VM from these rows. A row is written as soon as its box is made.
CREATE TABLE secretvm_vm_boxes (
    vm_id     TEXT NOT NULL,
    position  INTEGER NOT NULL,
    service   TEXT NOT NULL,
    lease_id  TEXT NOT NULL,
    PRIMARY KEY (vm_id, position)
);
