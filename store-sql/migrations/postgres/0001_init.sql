-- Courier relay schema, PostgreSQL. Integers are BIGINT (i64), binary is BYTEA.
CREATE TABLE invites (
    code_hash BYTEA PRIMARY KEY,
    expires_ms BIGINT NOT NULL,
    used BIGINT NOT NULL DEFAULT 0
);
CREATE TABLE accounts (
    username TEXT PRIMARY KEY,
    created_ms BIGINT NOT NULL,
    list_version BIGINT NOT NULL,
    device_list BYTEA NOT NULL
);
CREATE TABLE devices (
    pk BIGSERIAL PRIMARY KEY,
    username TEXT NOT NULL,
    device BIGINT NOT NULL,
    identity_key BYTEA NOT NULL,
    dh_key BYTEA NOT NULL,
    dh_key_signature BYTEA NOT NULL,
    spk_id BIGINT,
    spk_public BYTEA,
    spk_signature BYTEA,
    spk_created_ms BIGINT,
    otk_count BIGINT NOT NULL DEFAULT 0,
    next_seq BIGINT NOT NULL DEFAULT 1,
    depth BIGINT NOT NULL DEFAULT 0,
    created_ms BIGINT NOT NULL,
    UNIQUE (username, device)
);
CREATE TABLE one_time_prekeys (
    id BIGSERIAL PRIMARY KEY,
    device_pk BIGINT NOT NULL,
    key_id BIGINT NOT NULL,
    public BYTEA NOT NULL,
    UNIQUE (device_pk, key_id)
);
CREATE INDEX one_time_prekeys_by_device ON one_time_prekeys (device_pk, id);
CREATE TABLE challenges (
    id TEXT PRIMARY KEY,
    username TEXT NOT NULL,
    device BIGINT NOT NULL,
    nonce BYTEA NOT NULL,
    expires_ms BIGINT NOT NULL
);
CREATE TABLE sessions (
    id TEXT PRIMARY KEY,
    username TEXT NOT NULL,
    device BIGINT NOT NULL
);
CREATE TABLE access_tokens (
    hash BYTEA PRIMARY KEY,
    session_id TEXT NOT NULL,
    expires_ms BIGINT NOT NULL
);
CREATE INDEX access_tokens_by_session ON access_tokens (session_id);
CREATE TABLE refresh_tokens (
    hash BYTEA PRIMARY KEY,
    session_id TEXT NOT NULL,
    expires_ms BIGINT NOT NULL,
    used BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX refresh_tokens_by_session ON refresh_tokens (session_id);
CREATE TABLE links (
    code TEXT PRIMARY KEY,
    secret_hash BYTEA NOT NULL,
    username TEXT NOT NULL,
    identity_key BYTEA NOT NULL,
    dh_key BYTEA NOT NULL,
    dh_key_signature BYTEA NOT NULL,
    expires_ms BIGINT NOT NULL,
    approved_device BIGINT
);
-- One row per accepted envelope id: the body (until the last reference
-- goes) and the idempotency key (until expiry).
CREATE TABLE messages (
    id BYTEA PRIMARY KEY,
    digest BYTEA NOT NULL,
    origin TEXT NOT NULL,
    kind BIGINT NOT NULL,
    body BYTEA,
    refs BIGINT NOT NULL,
    received_ms BIGINT NOT NULL,
    expires_ms BIGINT NOT NULL
);
CREATE INDEX messages_by_expiry ON messages (expires_ms);
CREATE TABLE mailbox (
    device_pk BIGINT NOT NULL,
    seq BIGINT NOT NULL,
    message_id BYTEA NOT NULL,
    header BYTEA NOT NULL,
    expires_ms BIGINT NOT NULL,
    PRIMARY KEY (device_pk, seq)
);
CREATE INDEX mailbox_by_expiry ON mailbox (expires_ms);
CREATE TABLE outbox (
    id BIGSERIAL PRIMARY KEY,
    relay TEXT NOT NULL,
    message_id BYTEA NOT NULL,
    recipients BYTEA NOT NULL,
    sender_user TEXT,
    sender_device BIGINT,
    attempts BIGINT NOT NULL DEFAULT 0,
    next_attempt_ms BIGINT NOT NULL DEFAULT 0,
    expires_ms BIGINT NOT NULL
);
CREATE INDEX outbox_due ON outbox (relay, next_attempt_ms);
CREATE INDEX outbox_by_expiry ON outbox (expires_ms);
