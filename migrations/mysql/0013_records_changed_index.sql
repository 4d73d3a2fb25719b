-- docs/spec.md §4.2 (issue 32): records by when they last changed. An idle
-- replica looks here for records whose newest merged event no live
-- delivery holds (a replica that died holding their messages), and takes
-- their delivery over instead of waiting for the broker to hand the
-- messages back. One entry per record, so the store's bytes per event do
-- not grow (docs/spec.md §6.1). Built online.
CREATE INDEX idx_record_state_updated ON record_state (updated_at) ALGORITHM=INPLACE LOCK=NONE;
