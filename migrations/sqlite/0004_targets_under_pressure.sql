-- SPEC §4.2: one delivery in flight per (target, record) across replicas.
-- A replica takes the lease before it POSTs and releases it in the
-- transaction that records the answer; `lease_until` (Unix milliseconds)
-- lets another replica take over from one that died holding it.
ALTER TABLE delivery_state ADD COLUMN lease_holder INTEGER NULL;
ALTER TABLE delivery_state ADD COLUMN lease_until INTEGER NULL;
