-- What the extensions of a lease were paid in all (atomic USDC), so that a refund for unused
-- time never gives back more than the lease's payments came to.
ALTER TABLE leases ADD COLUMN renewal_paid_atomic INTEGER NOT NULL DEFAULT 0;
