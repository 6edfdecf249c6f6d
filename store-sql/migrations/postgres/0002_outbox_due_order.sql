-- outbox_take reads due entries in (next_attempt_ms, id) order; with id in
-- the index a backlog is read in order without a sort.
DROP INDEX outbox_due;
CREATE INDEX outbox_due ON outbox (relay, next_attempt_ms, id);
