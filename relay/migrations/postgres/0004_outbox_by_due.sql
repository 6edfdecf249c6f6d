-- The drainer's look at what is due (Store::outbox_due) reads the first due
-- entries over all destinations in (next_attempt_ms, id) order; this index
-- makes that a bounded range scan instead of a read of the whole outbox.
CREATE INDEX outbox_by_due ON outbox (next_attempt_ms, id);
