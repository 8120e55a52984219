-- An account's balance is kept on its row: every ledger entry adds its delta in the statement
-- that books it (a trigger, so no way of booking can miss it), and a booking reads one row
-- instead of summing the account's whole ledger, which grew with every charge. The ledger stays
-- the record: the balance is its sum, and the backfill below makes it so for existing entries.
ALTER TABLE accounts ADD COLUMN balance_atomic INTEGER NOT NULL DEFAULT 0;
UPDATE accounts SET balance_atomic =
    (SELECT COALESCE(SUM(delta_atomic), 0) FROM ledger_entries WHERE ledger_entries.account = accounts.address);
CREATE TRIGGER ledger_entries_add_to_balance AFTER INSERT ON ledger_entries
BEGIN
    UPDATE accounts SET balance_atomic = balance_atomic + NEW.delta_atomic WHERE address = NEW.account;
END;
