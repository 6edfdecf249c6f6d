//! `courier.toml`: every setting of a relay, its default, and how flags and
//! `COURIER_*` environment variables override it.
//!
//! Precedence, lowest first: built-in defaults, the config file
//! (`<data-dir>/courier.toml` or `--config FILE`), `COURIER_*` environment
//! variables, command-line flags. A field's doc comment is its operator
//! documentation: `config_doc` renders the doc comments and defaults into
//! the example `courier.toml` and the tables of `docs/operator.md`, so adding
//! a setting is adding a documented field with its default.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use courier_gateway::config::{HttpConfig, RateLimitConfig, WebSocketConfig};
use courier_protocol::RelayName;
use serde::{Deserialize, Serialize};

/// Name of the config file inside the data directory.
pub const CONFIG_FILE: &str = "courier.toml";
/// Default data directory, relative to the working directory.
pub const DATA_DIR_DEFAULT: &str = "courier-data";
/// Default relay name.
pub const NAME_DEFAULT: &str = "localhost";
/// Default HTTP listen address.
pub const HTTP_LISTEN_DEFAULT: &str = "127.0.0.1:8080";
/// Default federation listen address.
pub const P2P_LISTEN_DEFAULT: &str = "/ip4/0.0.0.0/udp/4433/quic-v1";

/// Who may create an account.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Registration {
    /// Anyone who can reach the relay.
    Open,
    /// Only holders of a code from `courier invite`.
    Invite,
}

/// Which relays may federate with this one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FederationPolicy {
    /// Any relay (except those in `deny`).
    #[default]
    Open,
    /// Only relays in `allow`.
    Allowlist,
    /// Any relay not in `deny`.
    Denylist,
}

/// When SQLite commits reach the disk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SqliteDurability {
    /// fsync at every commit.
    #[default]
    Full,
    /// Survives a process crash, not a power loss.
    Normal,
}

/// Relay rules: `[relay]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct RelaySettings {
    /// Lifetime of an access token.
    pub access_token_secs: u64,
    /// Lifetime of a refresh token (each refresh issues a new one); 30 days by
    /// default.
    pub refresh_token_secs: u64,
    /// How long a login challenge may be answered.
    pub challenge_secs: u64,
    /// How long a device-link request stays open.
    pub link_secs: u64,
    /// Below this many one-time prekeys a device is told
    /// (`Courier-Prekeys-Low`, `prekeys_low` frame).
    pub prekeys_low_water: u32,
    /// Most envelopes waiting for one device; sends beyond get 507
    /// `mailbox_full`.
    pub mailbox_depth_max: u32,
    /// Most bytes (body + header of each envelope) waiting for one device (1
    /// GiB by default); sends beyond get 507 `mailbox_full`.
    pub mailbox_bytes_max: u64,
    /// Most envelopes one source may have waiting for one device — a source is
    /// the sending account, or for federated mail the relay it came from; sends
    /// beyond get 507 `mailbox_quota` while other senders still get through (so
    /// one account cannot fill a mailbox with mail the device never acks). 0: a
    /// quarter of `mailbox_depth_max`.
    pub mailbox_per_source_max: u32,
    /// The same share in bytes. 0: a quarter of `mailbox_bytes_max`.
    pub mailbox_per_source_bytes_max: u64,
    /// Most outbox entries (messages waiting for other relays, one per message
    /// and destination relay) in total; sends beyond get 507 `outbox_full`.
    pub outbox_max: u64,
    /// Most distinct destination relays with mail waiting; beyond: 507
    /// `outbox_full`.
    pub outbox_destinations_max: u64,
    /// Most outbox entries one account may have waiting; beyond: 507
    /// `outbox_quota`.
    pub outbox_per_account_max: u64,
    /// Most distinct destination relays one account may have mail waiting for;
    /// beyond: 507 `outbox_quota`.
    pub outbox_destinations_per_account_max: u64,
}

impl RelaySettings {
    /// The per-source share limits in effect: (entries, bytes). A share is
    /// a quarter of the mailbox unless configured, so that one source (or
    /// three) cannot fill a mailbox and lock everyone else out.
    pub fn per_source(&self) -> (u32, u64) {
        let entries = match self.mailbox_per_source_max {
            0 => (self.mailbox_depth_max / 4).max(1),
            n => n,
        };
        let bytes = match self.mailbox_per_source_bytes_max {
            0 => (self.mailbox_bytes_max / 4).max(1),
            n => n,
        };
        (entries, bytes)
    }
}

impl Default for RelaySettings {
    fn default() -> Self {
        let defaults = courier_relay::Config::new(
            RelayName::parse(NAME_DEFAULT).unwrap_or_else(|_| unreachable!()),
        );
        RelaySettings {
            access_token_secs: defaults.access_token_ms / 1000,
            refresh_token_secs: defaults.refresh_token_ms / 1000,
            challenge_secs: defaults.challenge_ms / 1000,
            link_secs: defaults.link_ms / 1000,
            prekeys_low_water: defaults.prekeys_low_water,
            mailbox_depth_max: defaults.mailbox_depth_max,
            mailbox_bytes_max: defaults.mailbox_bytes_max,
            // Follow the totals unless set (see `RelaySettings::per_source`).
            mailbox_per_source_max: 0,
            mailbox_per_source_bytes_max: 0,
            outbox_max: defaults.outbox_limits.entries_max,
            outbox_destinations_max: defaults.outbox_limits.destinations_max,
            outbox_per_account_max: defaults.outbox_limits.per_account_max,
            outbox_destinations_per_account_max: defaults
                .outbox_limits
                .destinations_per_account_max,
        }
    }
}

/// Budgets on handing out one-time prekeys: `[prekey_budget]`. Past a
/// budget a bundle is still served, without a one-time prekey (X3DH then
/// uses the signed prekey alone). A bucket holds `*_burst` one-time prekeys
/// and gains one every `*_refill_secs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct PrekeyBudgetSettings {
    /// One-time prekeys one local account may take from one device at once.
    pub account_burst: u32,
    /// An account gets one more (per device) every this many seconds.
    pub account_refill_secs: u64,
    /// One-time prekeys one peer relay (all its users together) may take from
    /// one device at once.
    pub peer_burst: u32,
    /// A peer gets one more (per device) every this many seconds.
    pub peer_refill_secs: u64,
    /// One-time prekeys one device hands out to everyone together at once.
    pub device_burst: u32,
    /// A device hands out one more every this many seconds (at most 2 880 a
    /// day).
    pub device_refill_secs: u64,
}

impl Default for PrekeyBudgetSettings {
    fn default() -> Self {
        let d = courier_relay::PrekeyBudgetConfig::default();
        PrekeyBudgetSettings {
            account_burst: d.account_burst,
            account_refill_secs: d.account_refill_ms / 1000,
            peer_burst: d.peer_burst,
            peer_refill_secs: d.peer_refill_ms / 1000,
            device_burst: d.device_burst,
            device_refill_secs: d.device_refill_ms / 1000,
        }
    }
}

impl PrekeyBudgetSettings {
    /// The relay's budget config.
    pub fn to_relay(&self) -> courier_relay::PrekeyBudgetConfig {
        courier_relay::PrekeyBudgetConfig {
            account_burst: self.account_burst,
            account_refill_ms: self.account_refill_secs.saturating_mul(1000),
            peer_burst: self.peer_burst,
            peer_refill_ms: self.peer_refill_secs.saturating_mul(1000),
            device_burst: self.device_burst,
            device_refill_ms: self.device_refill_secs.saturating_mul(1000),
            ..courier_relay::PrekeyBudgetConfig::default()
        }
    }
}

/// Log output: `[log]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `text` or `json` (one object per line, with the request span's
    /// `request_id`, `method`, `route`).
    pub format: LogFormat,
    /// A `tracing` filter, e.g. `info,courier_gateway=debug`; `RUST_LOG` wins
    /// when set.
    pub filter: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
            filter: "info".to_owned(),
        }
    }
}

/// Log line format.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
    clap::ValueEnum,
)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Federation: `[federation]`. Read by the federation swarm
/// (`node/src/federation/`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct FederationConfig {
    /// Whether to run the federation swarm at all.
    pub enabled: bool,
    /// The libp2p listen multiaddr, QUIC (`--p2p`).
    pub p2p: String,
    /// Multiaddrs (without `/p2p/…`; the PeerId is appended) other relays
    /// should dial, when they differ from `p2p` (behind NAT, or `p2p` binds
    /// 0.0.0.0); an IP or a DNS name
    /// (`/dns4/relay-a.example/udp/4433/quic-v1`), resolved by the dialling
    /// relay.
    pub external_addresses: Vec<String>,
    /// `open` (any relay not in `deny`), `allowlist` (only `allow`), `denylist`
    /// (any not in `deny`).
    pub policy: FederationPolicy,
    /// Relay names or PeerIds allowed under `allowlist`.
    pub allow: Vec<String>,
    /// Relay names or PeerIds refused under `open` and `denylist`.
    pub deny: Vec<String>,
    /// Multiaddrs ending in `/p2p/PeerId` dialled at start.
    pub bootstrap: Vec<String>,
    /// Most relays the peer book (`peers.json`) holds
    /// (`COURIER_FEDERATION_PEERS_MAX`); at least 1. When full, relays learned
    /// through gossip that never connected are evicted first; operator-added
    /// and operator-pinned peers never (`docs/federation.md`, *Peer book cap*).
    pub peers_max: usize,
}

impl Default for FederationConfig {
    fn default() -> Self {
        FederationConfig {
            enabled: true,
            p2p: P2P_LISTEN_DEFAULT.to_owned(),
            external_addresses: Vec::new(),
            policy: FederationPolicy::Open,
            allow: Vec::new(),
            deny: Vec::new(),
            bootstrap: Vec::new(),
            peers_max: crate::federation::peers::PEERS_MAX_DEFAULT,
        }
    }
}

/// The whole of `courier.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The relay's name, the part after `@` in its users' addresses (a DNS host
    /// name).
    pub name: String,
    /// HTTP listen address (`ADDR:PORT`, `--http`); port 0 picks a free port,
    /// written to `<data-dir>/http.addr`.
    pub http_listen: String,
    /// URL clients and other relays use to reach the HTTP API (it goes in the
    /// relay descriptor). Unset: `http://<http_listen>`.
    pub public_url: Option<String>,
    /// `sqlite:PATH` / `sqlite://PATH`, or
    /// `postgres://USER[:PASS]@HOST[:PORT]/DB` (`--database-url`); `memory:`
    /// keeps everything in memory and loses it at exit (benchmarks only).
    /// Unset: SQLite at `<data-dir>/courier.db`.
    pub database_url: Option<String>,
    /// PostgreSQL only: keep the tables in this schema (created if missing)
    /// instead of the default search path; letters, digits, `_`.
    pub database_schema: Option<String>,
    /// SQLite only. `full`: no write is answered before its commit is fsynced,
    /// an accepted message survives power loss (the fsync runs on a thread of
    /// its own, pipelined with the next batch); `normal`: survives a process
    /// crash only. (SQLite's writer keeps a 64 MiB page cache on its own
    /// thread; see docs/storage.md.)
    pub sqlite_durability: SqliteDurability,
    /// `open` or `invite` (`--registration`). Unset: `open` for the name
    /// `localhost`, `invite` otherwise.
    pub registration: Option<Registration>,
    /// At SIGINT/SIGTERM, how long to wait for in-flight requests and WebSocket
    /// closes.
    pub shutdown_grace_secs: u64,
    /// `[log]`.
    pub log: LogConfig,
    /// `[relay]`.
    pub relay: RelaySettings,
    /// `[http]`.
    pub http: HttpConfig,
    /// `[rate_limit]`.
    pub rate_limit: RateLimitConfig,
    /// `[websocket]`.
    pub websocket: WebSocketConfig,
    /// `[federation]`.
    pub federation: FederationConfig,
    /// `[prekey_budget]`.
    pub prekey_budget: PrekeyBudgetSettings,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            name: NAME_DEFAULT.to_owned(),
            http_listen: HTTP_LISTEN_DEFAULT.to_owned(),
            public_url: None,
            database_url: None,
            database_schema: None,
            sqlite_durability: SqliteDurability::Full,
            registration: None,
            shutdown_grace_secs: 10,
            log: LogConfig::default(),
            relay: RelaySettings::default(),
            http: HttpConfig::default(),
            rate_limit: RateLimitConfig::default(),
            websocket: WebSocketConfig::default(),
            federation: FederationConfig::default(),
            prekey_budget: PrekeyBudgetSettings::default(),
        }
    }
}

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The IO error.
        source: std::io::Error,
    },
    /// The file is not valid TOML or has unknown or mistyped settings.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong, with line and column.
        message: String,
    },
    /// A `COURIER_*` variable does not fit its setting.
    #[error("environment variable {name}: {message}")]
    Env {
        /// The variable.
        name: String,
        /// What is wrong.
        message: String,
    },
    /// A value is out of range.
    #[error("invalid setting {field}: {message}")]
    Invalid {
        /// The setting.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
}

/// Environment variables that name a flag rather than a file setting; the
/// generic `COURIER_<SECTION>_<KEY>` scan skips them (clap reads them).
const FLAG_VARIABLES: &[&str] = &[
    "COURIER_DATA_DIR",
    "COURIER_CONFIG",
    "COURIER_TEST_DATABASE_URL",
];

impl Config {
    /// Reads `path`, or returns the defaults if it does not exist and
    /// `required` is false.
    pub fn load(path: &Path, required: bool) -> Result<Config, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => String::new(),
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.to_owned(),
                    source,
                });
            }
        };
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })
    }

    /// Applies `COURIER_<KEY>` and `COURIER_<SECTION>_<KEY>` variables (e.g.
    /// `COURIER_NAME`, `COURIER_RATE_LIMIT_IP_BURST`,
    /// `COURIER_FEDERATION_POLICY`) from `vars`. Values are TOML literals
    /// (`200`, `true`, `["a", "b"]`); anything that does not parse as one is
    /// taken as a string.
    pub fn apply_env(
        &mut self,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<(), ConfigError> {
        let mut tree = toml::Value::try_from(&*self).map_err(|e| ConfigError::Invalid {
            field: "config",
            message: e.to_string(),
        })?;
        let mut changed = false;
        for (name, value) in vars {
            let Some(rest) = name.strip_prefix("COURIER_") else {
                continue;
            };
            if FLAG_VARIABLES.contains(&name.as_str()) {
                continue;
            }
            let Some(path) = setting_path(&tree, &rest.to_ascii_lowercase()) else {
                continue;
            };
            let parsed = parse_env_value(&value);
            set_path(&mut tree, &path, parsed);
            changed = true;
        }
        if changed {
            *self = tree
                .try_into()
                .map_err(|e: toml::de::Error| ConfigError::Env {
                    name: "COURIER_*".to_owned(),
                    message: e.to_string(),
                })?;
        }
        Ok(())
    }

    /// The relay name, validated.
    pub fn relay_name(&self) -> Result<RelayName, ConfigError> {
        RelayName::parse(&self.name).map_err(|e| ConfigError::Invalid {
            field: "name",
            message: e.to_string(),
        })
    }

    /// The HTTP listen address, validated.
    pub fn http_addr(&self) -> Result<SocketAddr, ConfigError> {
        self.http_listen.parse().map_err(|e| ConfigError::Invalid {
            field: "http_listen",
            message: format!("{e} (expected ADDR:PORT)"),
        })
    }

    /// The registration policy after defaults: `open` for `localhost`.
    pub fn registration(&self) -> Registration {
        self.registration.unwrap_or(if self.name == NAME_DEFAULT {
            Registration::Open
        } else {
            Registration::Invite
        })
    }

    /// Checks everything that can be checked without IO.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.relay_name()?;
        self.http_addr()?;
        if self.http.body_bytes_max < 1024 {
            return Err(ConfigError::Invalid {
                field: "http.body_bytes_max",
                message: "must be at least 1024".to_owned(),
            });
        }
        if self.websocket.in_flight_max == 0 {
            return Err(ConfigError::Invalid {
                field: "websocket.in_flight_max",
                message: "must be at least 1".to_owned(),
            });
        }
        courier_gateway::client_ip::Proxies::parse(&self.http.trusted_proxies).map_err(|e| {
            ConfigError::Invalid {
                field: "http.trusted_proxies",
                message: e.to_string(),
            }
        })?;
        if self.http.connections_max == 0 || self.http.connections_per_ip_max == 0 {
            return Err(ConfigError::Invalid {
                field: "http.connections_max",
                message: "connections_max and connections_per_ip_max must be at least 1".to_owned(),
            });
        }
        if self.http.header_read_timeout_ms == 0 {
            return Err(ConfigError::Invalid {
                field: "http.header_read_timeout_ms",
                message: "must be at least 1".to_owned(),
            });
        }
        let b = &self.prekey_budget;
        if b.account_refill_secs == 0 || b.peer_refill_secs == 0 || b.device_refill_secs == 0 {
            return Err(ConfigError::Invalid {
                field: "prekey_budget",
                message: "refill intervals must be at least 1 second".to_owned(),
            });
        }
        if self.websocket.write_timeout_ms < 100 {
            return Err(ConfigError::Invalid {
                field: "websocket.write_timeout_ms",
                message: "must be at least 100".to_owned(),
            });
        }
        if self.federation.peers_max == 0 {
            return Err(ConfigError::Invalid {
                field: "federation.peers_max",
                message: "must be at least 1".to_owned(),
            });
        }
        Ok(())
    }

    /// The config file text: the effective settings as TOML.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_default()
    }
}

/// Finds the setting an environment key names: `rate_limit_ip_burst` →
/// `["rate_limit", "ip_burst"]`. Tables are matched by prefix because their
/// names contain underscores too.
fn setting_path(tree: &toml::Value, key: &str) -> Option<Vec<String>> {
    let table = tree.as_table()?;
    if let Some(value) = table.get(key)
        && !value.is_table()
    {
        return Some(vec![key.to_owned()]);
    }
    for (name, value) in table {
        if let Some(sub) = value.as_table()
            && let Some(rest) = key
                .strip_prefix(name.as_str())
                .and_then(|r| r.strip_prefix('_'))
            && sub.contains_key(rest)
        {
            return Some(vec![name.clone(), rest.to_owned()]);
        }
    }
    // Optional top-level settings are absent from the serialized tree.
    const OPTIONAL: &[&str] = &[
        "public_url",
        "database_url",
        "database_schema",
        "registration",
    ];
    OPTIONAL.contains(&key).then(|| vec![key.to_owned()])
}

fn parse_env_value(text: &str) -> toml::Value {
    #[derive(Deserialize)]
    struct Probe {
        v: toml::Value,
    }
    toml::from_str::<Probe>(&format!("v = {text}"))
        .map(|p| p.v)
        .unwrap_or_else(|_| toml::Value::String(text.to_owned()))
}

fn set_path(tree: &mut toml::Value, path: &[String], value: toml::Value) {
    let mut node = tree;
    for (i, part) in path.iter().enumerate() {
        let Some(table) = node.as_table_mut() else {
            return;
        };
        if i + 1 == path.len() {
            table.insert(part.clone(), value);
            return;
        }
        node = table
            .entry(part.clone())
            .or_insert_with(|| toml::Value::Table(Default::default()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_serve_localhost_with_open_registration() {
        let c = Config::default();
        c.validate().unwrap();
        assert_eq!(c.registration(), Registration::Open);
        assert_eq!(c.http_addr().unwrap().port(), 8080);
        let named = Config {
            name: "relay-a.example".into(),
            ..Config::default()
        };
        assert_eq!(named.registration(), Registration::Invite);
    }

    #[test]
    fn file_round_trips_and_rejects_unknown_settings() {
        let c = Config::default();
        let back: Config = toml::from_str(&c.to_toml()).unwrap();
        assert_eq!(back, c);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(CONFIG_FILE);
        std::fs::write(&path, "name = \"a.example\"\n[http]\nbody_bytes_maxx = 3\n").unwrap();
        let err = Config::load(&path, true).unwrap_err().to_string();
        assert!(err.contains("body_bytes_maxx"), "{err}");
        assert_eq!(
            Config::load(&dir.path().join("absent.toml"), false).unwrap(),
            Config::default()
        );
        assert!(Config::load(&dir.path().join("absent.toml"), true).is_err());
    }

    #[test]
    fn environment_overrides_nested_settings() {
        let mut c = Config::default();
        c.apply_env([
            ("COURIER_NAME".to_owned(), "relay-b.example".to_owned()),
            ("COURIER_RATE_LIMIT_IP_BURST".to_owned(), "7".to_owned()),
            (
                "COURIER_FEDERATION_POLICY".to_owned(),
                "allowlist".to_owned(),
            ),
            (
                "COURIER_HTTP_CORS_ORIGINS".to_owned(),
                "[\"https://a\"]".to_owned(),
            ),
            (
                "COURIER_DATABASE_URL".to_owned(),
                "postgres://x/y".to_owned(),
            ),
            ("COURIER_DATA_DIR".to_owned(), "/ignored".to_owned()),
            ("OTHER".to_owned(), "x".to_owned()),
        ])
        .unwrap();
        assert_eq!(c.name, "relay-b.example");
        assert_eq!(c.rate_limit.ip_burst, 7);
        assert_eq!(c.federation.policy, FederationPolicy::Allowlist);
        assert_eq!(c.http.cors_origins, vec!["https://a".to_owned()]);
        assert_eq!(c.database_url.as_deref(), Some("postgres://x/y"));
        let mut bad = Config::default();
        assert!(
            bad.apply_env([("COURIER_RATE_LIMIT_IP_BURST".to_owned(), "many".to_owned())])
                .is_err()
        );
    }

    #[test]
    fn trusted_proxies_come_from_the_environment_and_must_parse() {
        let mut c = Config::default();
        assert!(c.http.trusted_proxies.is_empty());
        c.apply_env([(
            "COURIER_HTTP_TRUSTED_PROXIES".to_owned(),
            "[\"127.0.0.1\", \"10.0.0.0/8\"]".to_owned(),
        )])
        .unwrap();
        assert_eq!(c.http.trusted_proxies, vec!["127.0.0.1", "10.0.0.0/8"]);
        c.validate().unwrap();
        c.http.trusted_proxies = vec!["10.0.0.0/40".to_owned()];
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("http.trusted_proxies"), "{err}");
    }

    #[test]
    fn prekey_budget_has_defaults_reads_its_variables_and_needs_refills() {
        let mut c = Config::default();
        assert_eq!(c.prekey_budget.account_burst, 5);
        assert_eq!(
            c.prekey_budget.to_relay(),
            courier_relay::PrekeyBudgetConfig::default()
        );
        c.apply_env([
            (
                "COURIER_PREKEY_BUDGET_ACCOUNT_BURST".to_owned(),
                "3".to_owned(),
            ),
            (
                "COURIER_PREKEY_BUDGET_PEER_REFILL_SECS".to_owned(),
                "7".to_owned(),
            ),
        ])
        .unwrap();
        assert_eq!(c.prekey_budget.account_burst, 3);
        assert_eq!(c.prekey_budget.to_relay().peer_refill_ms, 7000);
        c.validate().unwrap();
        c.prekey_budget.device_refill_secs = 0;
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("prekey_budget"), "{err}");
    }

    #[test]
    fn federation_peers_max_defaults_to_1000_reads_its_variable_and_must_be_positive() {
        let mut c = Config::default();
        assert_eq!(c.federation.peers_max, 1000);
        c.apply_env([("COURIER_FEDERATION_PEERS_MAX".to_owned(), "250".to_owned())])
            .unwrap();
        assert_eq!(c.federation.peers_max, 250);
        let from_file: Config = toml::from_str("[federation]\npeers_max = 20\n").unwrap();
        assert_eq!(from_file.federation.peers_max, 20);
        c.federation.peers_max = 0;
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("federation.peers_max"), "{err}");
        let mut bad = Config::default();
        assert!(
            bad.apply_env([("COURIER_FEDERATION_PEERS_MAX".to_owned(), "-1".to_owned())])
                .is_err()
        );
    }
}
