-- Security audit #13, items 1, 5 and 14 (see docs/storage.md).
--
-- messages.id is now the message key, HMAC(store secret, source, envelope
-- id): an envelope id is deduplicated per source, not relay-wide, and the
-- key does not name the source. The envelope id recipients see moves to
-- `envelope`. Rows from before keep their envelope id as key until they
-- expire (mailbox and outbox rows reference messages by this key).
ALTER TABLE messages ADD COLUMN envelope BLOB;
UPDATE messages SET envelope = id;

-- Mailbox limits per device and per (device, source): each entry knows what
-- it counts (`bytes`, and `quota_key` = HMAC(store secret, recipient device,
-- source), NULL for entries from before and for notices). The device keeps
-- its total bytes beside its depth, changed in the same statements; a
-- source's share is counted from these rows only when the mailbox is deeper
-- than one share (see docs/storage.md).
ALTER TABLE mailbox ADD COLUMN quota_key BLOB;
ALTER TABLE mailbox ADD COLUMN bytes INTEGER NOT NULL DEFAULT 0;
UPDATE mailbox SET bytes = length(header)
    + COALESCE((SELECT length(body) FROM messages WHERE messages.id = mailbox.message_id), 0);
ALTER TABLE devices ADD COLUMN bytes INTEGER NOT NULL DEFAULT 0;
UPDATE devices SET bytes = COALESCE((SELECT SUM(bytes) FROM mailbox WHERE mailbox.device_pk = devices.pk), 0);

-- The submitting device of an outbox entry, only for a delivery-failure
-- notice, sealed (AES-256-GCM under a key derived from the store secret)
-- instead of in plaintext. Entries queued before this migration lose their
-- notice (the message itself is still delivered or expires as before).
ALTER TABLE outbox ADD COLUMN sender BLOB;
ALTER TABLE outbox DROP COLUMN sender_user;
ALTER TABLE outbox DROP COLUMN sender_device;
