-- Courier relay schema, SQLite. Integers are INTEGER (i64), binary is BLOB.
CREATE TABLE invites (
    code_hash BLOB PRIMARY KEY,
    expires_ms INTEGER NOT NULL,
    used INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE accounts (
    username TEXT PRIMARY KEY,
    created_ms INTEGER NOT NULL,
    list_version INTEGER NOT NULL,
    device_list BLOB NOT NULL
);
CREATE TABLE devices (
    pk INTEGER PRIMARY KEY AUTOINCREMENT,
    username TEXT NOT NULL,
    device INTEGER NOT NULL,
    identity_key BLOB NOT NULL,
    dh_key BLOB NOT NULL,
    dh_key_signature BLOB NOT NULL,
    spk_id INTEGER,
    spk_public BLOB,
    spk_signature BLOB,
    spk_created_ms INTEGER,
    otk_count INTEGER NOT NULL DEFAULT 0,
    next_seq INTEGER NOT NULL DEFAULT 1,
    depth INTEGER NOT NULL DEFAULT 0,
    created_ms INTEGER NOT NULL,
    UNIQUE (username, device)
);
CREATE TABLE one_time_prekeys (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    device_pk INTEGER NOT NULL,
    key_id INTEGER NOT NULL,
    public BLOB NOT NULL,
    UNIQUE (device_pk, key_id)
);
CREATE INDEX one_time_prekeys_by_device ON one_time_prekeys (device_pk, id);
CREATE TABLE challenges (
    id TEXT PRIMARY KEY,
    username TEXT NOT NULL,
    device INTEGER NOT NULL,
    nonce BLOB NOT NULL,
    expires_ms INTEGER NOT NULL
);
CREATE TABLE sessions (
    id TEXT PRIMARY KEY,
    username TEXT NOT NULL,
    device INTEGER NOT NULL
);
CREATE TABLE access_tokens (
    hash BLOB PRIMARY KEY,
    session_id TEXT NOT NULL,
    expires_ms INTEGER NOT NULL
);
CREATE INDEX access_tokens_by_session ON access_tokens (session_id);
CREATE TABLE refresh_tokens (
    hash BLOB PRIMARY KEY,
    session_id TEXT NOT NULL,
    expires_ms INTEGER NOT NULL,
    used INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX refresh_tokens_by_session ON refresh_tokens (session_id);
CREATE TABLE links (
    code TEXT PRIMARY KEY,
    secret_hash BLOB NOT NULL,
    username TEXT NOT NULL,
    identity_key BLOB NOT NULL,
    dh_key BLOB NOT NULL,
    dh_key_signature BLOB NOT NULL,
    expires_ms INTEGER NOT NULL,
    approved_device INTEGER
);
-- One row per accepted envelope id: the body (until the last reference
-- goes) and the idempotency key (until expiry).
CREATE TABLE messages (
    id BLOB PRIMARY KEY,
    digest BLOB NOT NULL,
    origin TEXT NOT NULL,
    kind INTEGER NOT NULL,
    body BLOB,
    refs INTEGER NOT NULL,
    received_ms INTEGER NOT NULL,
    expires_ms INTEGER NOT NULL
);
CREATE INDEX messages_by_expiry ON messages (expires_ms);
CREATE TABLE mailbox (
    device_pk INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    message_id BLOB NOT NULL,
    header BLOB NOT NULL,
    expires_ms INTEGER NOT NULL,
    PRIMARY KEY (device_pk, seq)
) WITHOUT ROWID;
CREATE INDEX mailbox_by_expiry ON mailbox (expires_ms);
CREATE TABLE outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    relay TEXT NOT NULL,
    message_id BLOB NOT NULL,
    recipients BLOB NOT NULL,
    sender_user TEXT,
    sender_device INTEGER,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_ms INTEGER NOT NULL DEFAULT 0,
    expires_ms INTEGER NOT NULL
);
CREATE INDEX outbox_due ON outbox (relay, next_attempt_ms);
CREATE INDEX outbox_by_expiry ON outbox (expires_ms);
