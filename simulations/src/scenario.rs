//! Scenarios: what a run simulates, parsed from TOML and validated in one
//! place. `docs/simulations.md` documents every field; the shipped examples
//! live in `simulations/scenarios/`.

use std::path::Path;

use serde::{Deserialize, Serialize};

/// Most relays one scenario may ask for.
pub const RELAYS_MAX: u32 = 1_000;
/// Most users one scenario may ask for, over all relays.
pub const USERS_MAX: u64 = 1_000_000;
/// Most devices one user may have (the protocol's own limit).
pub const DEVICES_PER_USER_MAX: u32 = courier_protocol::limits::DEVICES_PER_ACCOUNT_MAX as u32;
/// Longest simulated time, in milliseconds (30 days).
pub const DURATION_MS_MAX: u64 = 30 * 24 * 3600 * 1000;
/// Largest message body a scenario may ask for, in bytes.
pub const BODY_BYTES_MAX: u32 = 64 * 1024;
/// Most messages one scenario may generate.
pub const MESSAGES_MAX: u64 = 50_000_000;

/// Why a scenario was rejected.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// The file could not be read.
    #[error("cannot read scenario {path}")]
    Read {
        /// The file.
        path: String,
        /// The IO error.
        source: std::io::Error,
    },
    /// The TOML is malformed or has an unknown or mistyped field.
    #[error("scenario {path} is not valid: {message}")]
    Parse {
        /// The file (or `<string>`).
        path: String,
        /// toml's message, with line and column.
        message: String,
    },
    /// A field has a value outside what the simulator supports.
    #[error("scenario field `{field}`: {reason}")]
    Invalid {
        /// Dotted path of the field, e.g. `faults[2].relay`.
        field: String,
        /// What is wrong and what is allowed.
        reason: String,
    },
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> ScenarioError {
    ScenarioError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

/// A whole scenario.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// A short name, used in reports.
    pub name: String,
    /// Free text shown in the report.
    #[serde(default)]
    pub description: String,
    /// The text this scenario was parsed from, verbatim (embedded in
    /// reports so a report reproduces its run).
    #[serde(skip)]
    pub source: String,
    /// Simulated time during which the workload and the fault schedule run.
    pub duration_ms: u64,
    /// After `duration_ms` every fault is repaired (partitions healed, relays
    /// restarted, clients back online) and the run continues until nothing is
    /// in flight, at most this long. The delivery invariants are checked
    /// after this drain.
    #[serde(default = "default_drain_ms_max")]
    pub drain_ms_max: u64,
    /// Relays and how they peer.
    pub relays: Relays,
    /// Users and devices.
    pub users: Users,
    /// Groups.
    #[serde(default)]
    pub groups: Groups,
    /// Messages to send.
    pub workload: Workload,
    /// Client behaviour.
    #[serde(default)]
    pub clients: Clients,
    /// Relay ↔ relay links.
    #[serde(default)]
    pub federation_link: Link,
    /// Relay ↔ relay links that differ from `federation_link` (e.g. one
    /// slow intercontinental pair).
    #[serde(default)]
    pub link_overrides: Vec<LinkOverride>,
    /// Client ↔ home relay links.
    #[serde(default)]
    pub client_link: Link,
    /// Faults, applied in time order.
    #[serde(default)]
    pub faults: Vec<Fault>,
}

fn default_drain_ms_max() -> u64 {
    10 * 60 * 1000
}

/// The relays of a scenario.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Relays {
    /// Number of relays, 1..=[`RELAYS_MAX`].
    pub count: u32,
    /// Which relays peer with which at start. Relays learn about the others
    /// through descriptor exchange with their peers.
    #[serde(default)]
    pub topology: Topology,
    /// For `random`: peers each relay adds beyond a random spanning tree.
    #[serde(default = "default_random_peers")]
    pub random_peers: u32,
    /// Each relay's `mailbox_depth_max` (entries per device; each source
    /// gets a quarter of it), when not the relay's default of 10,000: a
    /// small mailbox makes the flood adversary cheap to simulate.
    #[serde(default)]
    pub mailbox_depth_max: Option<u32>,
}

fn default_random_peers() -> u32 {
    2
}

/// The initial peering graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Topology {
    /// Every relay peers with every other.
    #[default]
    FullMesh,
    /// Relay i peers with i-1 and i+1.
    Chain,
    /// A random spanning tree plus `random_peers` random extra peers each.
    Random,
}

/// Users and devices.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Users {
    /// Users homed on each relay.
    pub per_relay: u32,
    /// Fewest devices per user.
    #[serde(default = "one")]
    pub devices_min: u32,
    /// Most devices per user; each user gets a uniform count in
    /// `devices_min..=devices_max`.
    #[serde(default = "one")]
    pub devices_max: u32,
    /// Direct messages go to one of this many contacts, chosen uniformly
    /// among all users at setup.
    #[serde(default = "default_contacts")]
    pub contacts_per_user: u32,
}

fn one() -> u32 {
    1
}

fn default_contacts() -> u32 {
    5
}

/// Groups, formed at setup from uniformly chosen users.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Groups {
    /// Number of groups.
    #[serde(default)]
    pub count: u32,
    /// Fewest members (users) per group, at least 2.
    #[serde(default = "default_group_size")]
    pub size_min: u32,
    /// Most members per group.
    #[serde(default = "default_group_size")]
    pub size_max: u32,
}

fn default_group_size() -> u32 {
    3
}

/// The message workload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Workload {
    /// Network-wide sends per simulated second (Poisson arrivals).
    pub rate_per_sec: f64,
    /// No new sends are started after this time; defaults to `duration_ms`.
    #[serde(default)]
    pub send_until_ms: Option<u64>,
    /// Cap on the number of messages; the workload stops at whichever of
    /// `send_until_ms` and `messages_max` comes first.
    #[serde(default)]
    pub messages_max: Option<u64>,
    /// Fraction of sends that go to a group (needs `groups.count > 0`).
    #[serde(default)]
    pub group_fraction: f64,
    /// Smallest plaintext, in bytes.
    #[serde(default = "default_body_min")]
    pub body_bytes_min: u32,
    /// Largest plaintext, in bytes.
    #[serde(default = "default_body_max")]
    pub body_bytes_max: u32,
    /// How long relays keep an undelivered message, in seconds.
    #[serde(default = "default_ttl")]
    pub ttl_secs: u64,
}

fn default_body_min() -> u32 {
    64
}

fn default_body_max() -> u32 {
    512
}

fn default_ttl() -> u64 {
    7 * 24 * 3600
}

/// How simulated clients behave.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Clients {
    /// A device without a push re-fetches its mailbox this often.
    #[serde(default = "default_poll")]
    pub poll_interval_ms: u64,
    /// A send or fetch without an answer is retried after this long.
    #[serde(default = "default_retry")]
    pub retry_ms: u64,
}

fn default_poll() -> u64 {
    5_000
}

fn default_retry() -> u64 {
    1_000
}

impl Default for Clients {
    fn default() -> Self {
        Clients {
            poll_interval_ms: default_poll(),
            retry_ms: default_retry(),
        }
    }
}

/// A link model: one-way latency plus jitter, and fault rates per message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Link {
    /// Fixed one-way latency, in milliseconds.
    #[serde(default = "default_latency")]
    pub latency_ms: u64,
    /// Random extra latency added to each message.
    #[serde(default)]
    pub jitter: Jitter,
    /// Probability that a message is lost.
    #[serde(default)]
    pub loss: f64,
    /// Probability that a message arrives twice.
    #[serde(default)]
    pub duplicate: f64,
    /// Probability that a message is held back by up to
    /// `reorder_delay_ms_max`, letting later ones overtake it.
    #[serde(default)]
    pub reorder: f64,
    /// Longest extra delay of a reordered message, in milliseconds.
    #[serde(default = "default_reorder_delay")]
    pub reorder_delay_ms_max: u64,
}

fn default_latency() -> u64 {
    10
}

fn default_reorder_delay() -> u64 {
    200
}

impl Default for Link {
    fn default() -> Self {
        Link {
            latency_ms: default_latency(),
            jitter: Jitter::None,
            loss: 0.0,
            duplicate: 0.0,
            reorder: 0.0,
            reorder_delay_ms_max: default_reorder_delay(),
        }
    }
}

/// A different link model between two relays (both directions).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkOverride {
    /// The two relay indices.
    pub relays: [u32; 2],
    /// The link between them.
    pub link: Link,
}

/// A jitter distribution, in milliseconds, added to the fixed latency.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(tag = "dist", rename_all = "snake_case", deny_unknown_fields)]
pub enum Jitter {
    /// No jitter.
    #[default]
    None,
    /// Uniform in `0..=max_ms`.
    Uniform {
        /// Largest jitter.
        max_ms: u64,
    },
    /// |N(0, stddev_ms²)|, capped at `max_ms`.
    Normal {
        /// Standard deviation.
        stddev_ms: f64,
        /// Cap.
        #[serde(default = "default_jitter_cap")]
        max_ms: u64,
    },
    /// Exponential with the given mean, capped at `max_ms`: a long tail.
    Exponential {
        /// Mean.
        mean_ms: f64,
        /// Cap.
        #[serde(default = "default_jitter_cap")]
        max_ms: u64,
    },
}

fn default_jitter_cap() -> u64 {
    10_000
}

/// One entry of the fault schedule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RawFault")]
pub struct Fault {
    /// When the fault happens, in simulated milliseconds from start.
    pub at_ms: u64,
    /// What happens.
    #[serde(flatten)]
    pub action: FaultAction,
}

/// A fault as written: `kind` plus the fields that kind needs. Parsed
/// through this flat form because serde cannot reject unknown fields of a
/// flattened enum.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFault {
    at_ms: u64,
    kind: String,
    sets: Option<Vec<Vec<u32>>>,
    relay: Option<u32>,
    user: Option<u32>,
    claims: Option<u32>,
    to_relay: Option<u32>,
    to_user: Option<u32>,
    count: Option<u32>,
}

impl TryFrom<RawFault> for Fault {
    type Error = String;

    fn try_from(raw: RawFault) -> Result<Self, String> {
        let need = |v: Option<u32>, name: &str| {
            v.ok_or_else(|| format!("fault kind `{}` needs `{name}`", raw.kind))
        };
        let action = match raw.kind.as_str() {
            "partition" => FaultAction::Partition {
                sets: raw
                    .sets
                    .clone()
                    .ok_or_else(|| "fault kind `partition` needs `sets`".to_string())?,
            },
            "heal" => FaultAction::Heal,
            "crash" => FaultAction::Crash {
                relay: need(raw.relay, "relay")?,
            },
            "restart" => FaultAction::Restart {
                relay: need(raw.relay, "relay")?,
            },
            "client_offline" => FaultAction::ClientOffline {
                relay: need(raw.relay, "relay")?,
                user: need(raw.user, "user")?,
            },
            "client_online" => FaultAction::ClientOnline {
                relay: need(raw.relay, "relay")?,
                user: need(raw.user, "user")?,
            },
            "replay_batches" => FaultAction::ReplayBatches {
                relay: need(raw.relay, "relay")?,
            },
            "forge_origin" => FaultAction::ForgeOrigin {
                relay: need(raw.relay, "relay")?,
                claims: need(raw.claims, "claims")?,
            },
            "flood" => FaultAction::Flood {
                relay: need(raw.relay, "relay")?,
                user: need(raw.user, "user")?,
                to_relay: need(raw.to_relay, "to_relay")?,
                to_user: need(raw.to_user, "to_user")?,
                count: need(raw.count, "count")?,
            },
            other => {
                return Err(format!(
                    "unknown fault kind `{other}`, expected one of partition, heal, crash, restart, client_offline, client_online, replay_batches, forge_origin, flood"
                ));
            }
        };
        let adversary_fields = raw.claims.is_some()
            || raw.to_relay.is_some()
            || raw.to_user.is_some()
            || raw.count.is_some();
        let adversary_extra = match &action {
            FaultAction::ForgeOrigin { .. } => {
                raw.sets.is_some()
                    || raw.user.is_some()
                    || raw.to_relay.is_some()
                    || raw.to_user.is_some()
                    || raw.count.is_some()
            }
            FaultAction::Flood { .. } => raw.sets.is_some() || raw.claims.is_some(),
            FaultAction::ReplayBatches { .. } => {
                raw.sets.is_some() || raw.user.is_some() || adversary_fields
            }
            _ => adversary_fields,
        };
        if adversary_extra {
            return Err(format!(
                "fault kind `{}` has a field that belongs to another kind",
                raw.kind
            ));
        }
        let extra = match &action {
            FaultAction::Partition { .. } => raw.relay.is_some() || raw.user.is_some(),
            FaultAction::Heal => raw.sets.is_some() || raw.relay.is_some() || raw.user.is_some(),
            FaultAction::Crash { .. } | FaultAction::Restart { .. } => {
                raw.sets.is_some() || raw.user.is_some()
            }
            FaultAction::ClientOffline { .. } | FaultAction::ClientOnline { .. } => {
                raw.sets.is_some()
            }
            // Checked above with their own fields.
            FaultAction::ReplayBatches { .. }
            | FaultAction::ForgeOrigin { .. }
            | FaultAction::Flood { .. } => false,
        };
        if extra {
            return Err(format!(
                "fault kind `{}` has a field that belongs to another kind",
                raw.kind
            ));
        }
        Ok(Fault {
            at_ms: raw.at_ms,
            action,
        })
    }
}

/// What a fault does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FaultAction {
    /// Split the relays into sets; relays in different sets cannot reach each
    /// other. Relays not named form one more set together.
    Partition {
        /// Disjoint sets of relay indices.
        sets: Vec<Vec<u32>>,
    },
    /// Remove every partition.
    Heal,
    /// Stop a relay: its in-memory state is gone, its store survives, and
    /// everything in flight to it is lost.
    Crash {
        /// Relay index.
        relay: u32,
    },
    /// Start a crashed relay again from its store.
    Restart {
        /// Relay index.
        relay: u32,
    },
    /// Take every device of a user offline.
    ClientOffline {
        /// The user's home relay index.
        relay: u32,
        /// The user's index on that relay.
        user: u32,
    },
    /// Bring a user's devices back online; they fetch their mailbox.
    ClientOnline {
        /// The user's home relay index.
        relay: u32,
        /// The user's index on that relay.
        user: u32,
    },
    /// Adversary: from now on the relay sends every delivery batch a second
    /// time a second later, as an attacker replaying captured traffic
    /// would. The defence: receivers deduplicate by envelope id.
    ReplayBatches {
        /// The replaying relay.
        relay: u32,
    },
    /// Adversary: from now on the relay also sends, beside each delivery
    /// batch, a forged copy claiming to come from relay `claims` (fresh
    /// envelope ids, the same recipients). The defence: a receiver refuses
    /// a batch whose origin is not the authenticated peer.
    ForgeOrigin {
        /// The forging relay.
        relay: u32,
        /// The relay it claims to be.
        claims: u32,
    },
    /// Adversary: a user's first device sends `count` messages to another
    /// user at once, an account flooding a mailbox. The defence: each
    /// source's share of a device's mailbox (audit #13 item 1); other
    /// senders still reach the victim.
    Flood {
        /// The flooder's home relay index.
        relay: u32,
        /// The flooder's index on that relay.
        user: u32,
        /// The victim's home relay index.
        to_relay: u32,
        /// The victim's index on that relay.
        to_user: u32,
        /// Messages sent.
        count: u32,
    },
}

impl FaultAction {
    /// The kind as written in TOML, for reports.
    pub fn kind(&self) -> &'static str {
        match self {
            FaultAction::Partition { .. } => "partition",
            FaultAction::Heal => "heal",
            FaultAction::Crash { .. } => "crash",
            FaultAction::Restart { .. } => "restart",
            FaultAction::ClientOffline { .. } => "client_offline",
            FaultAction::ClientOnline { .. } => "client_online",
            FaultAction::ReplayBatches { .. } => "replay_batches",
            FaultAction::ForgeOrigin { .. } => "forge_origin",
            FaultAction::Flood { .. } => "flood",
        }
    }

    /// A one-line description for reports and plots.
    pub fn label(&self) -> String {
        match self {
            FaultAction::Partition { sets } => format!("partition {sets:?}"),
            FaultAction::Heal => "heal".to_string(),
            FaultAction::Crash { relay } => format!("crash r{relay}"),
            FaultAction::Restart { relay } => format!("restart r{relay}"),
            FaultAction::ClientOffline { relay, user } => format!("offline u{user}@r{relay}"),
            FaultAction::ClientOnline { relay, user } => format!("online u{user}@r{relay}"),
            FaultAction::ReplayBatches { relay } => format!("r{relay} replays batches"),
            FaultAction::ForgeOrigin { relay, claims } => format!("r{relay} forges r{claims}"),
            FaultAction::Flood {
                relay,
                user,
                to_relay,
                to_user,
                count,
            } => format!("u{user}@r{relay} floods u{to_user}@r{to_relay} x{count}"),
        }
    }
}

impl Scenario {
    /// Reads, parses and validates a scenario file.
    pub fn load(path: &Path) -> Result<Self, ScenarioError> {
        let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse_named(&text, &path.display().to_string())
    }

    /// Parses and validates scenario text.
    pub fn parse(text: &str) -> Result<Self, ScenarioError> {
        Self::parse_named(text, "<string>")
    }

    fn parse_named(text: &str, path: &str) -> Result<Self, ScenarioError> {
        let mut scenario: Scenario = toml::from_str(text).map_err(|e| ScenarioError::Parse {
            path: path.to_string(),
            message: e.to_string().trim_end().to_string(),
        })?;
        scenario.validate()?;
        scenario.source = text.to_string();
        Ok(scenario)
    }

    /// Total users over all relays.
    pub fn user_count(&self) -> u64 {
        u64::from(self.relays.count) * u64::from(self.users.per_relay)
    }

    /// The link model between relays `a` and `b`: an override naming the
    /// pair, else `federation_link`.
    pub fn federation_link_between(&self, a: u32, b: u32) -> &Link {
        self.link_overrides
            .iter()
            .find(|o| o.relays == [a, b] || o.relays == [b, a])
            .map_or(&self.federation_link, |o| &o.link)
    }

    /// When the workload stops starting new sends.
    pub fn send_until_ms(&self) -> u64 {
        self.workload.send_until_ms.unwrap_or(self.duration_ms)
    }

    /// Checks every field; the first problem found is returned.
    pub fn validate(&self) -> Result<(), ScenarioError> {
        if self.name.trim().is_empty() {
            return Err(invalid("name", "must not be empty"));
        }
        if self.duration_ms == 0 || self.duration_ms > DURATION_MS_MAX {
            return Err(invalid(
                "duration_ms",
                format!("must be 1..={DURATION_MS_MAX}"),
            ));
        }
        if self.drain_ms_max > DURATION_MS_MAX {
            return Err(invalid(
                "drain_ms_max",
                format!("must be at most {DURATION_MS_MAX}"),
            ));
        }
        let r = &self.relays;
        if r.count == 0 || r.count > RELAYS_MAX {
            return Err(invalid("relays.count", format!("must be 1..={RELAYS_MAX}")));
        }
        if r.topology == Topology::Random && r.random_peers >= r.count.max(1) {
            return Err(invalid(
                "relays.random_peers",
                "must be less than relays.count",
            ));
        }
        let u = &self.users;
        if u.per_relay == 0 {
            return Err(invalid("users.per_relay", "must be at least 1"));
        }
        if self.user_count() > USERS_MAX {
            return Err(invalid(
                "users.per_relay",
                format!("relays.count × users.per_relay must be at most {USERS_MAX}"),
            ));
        }
        if u.devices_min == 0
            || u.devices_max < u.devices_min
            || u.devices_max > DEVICES_PER_USER_MAX
        {
            return Err(invalid(
                "users.devices_min",
                format!("need 1 <= devices_min <= devices_max <= {DEVICES_PER_USER_MAX}"),
            ));
        }
        if self.user_count() > 1 && u.contacts_per_user == 0 {
            return Err(invalid("users.contacts_per_user", "must be at least 1"));
        }
        if u64::from(u.contacts_per_user) >= self.user_count().max(1) && self.user_count() > 1 {
            return Err(invalid(
                "users.contacts_per_user",
                "must be less than the number of users",
            ));
        }
        let g = &self.groups;
        if g.count > 0 {
            if g.size_min < 2 || g.size_max < g.size_min {
                return Err(invalid("groups.size_min", "need 2 <= size_min <= size_max"));
            }
            if u64::from(g.size_max) > self.user_count() {
                return Err(invalid(
                    "groups.size_max",
                    "must be at most the number of users",
                ));
            }
            if u64::from(g.size_max) * u64::from(u.devices_max) > 1000 {
                return Err(invalid(
                    "groups.size_max",
                    "size_max × devices_max must be at most 1000 (recipients per message)",
                ));
            }
        }
        let w = &self.workload;
        if !(w.rate_per_sec.is_finite() && w.rate_per_sec >= 0.0 && w.rate_per_sec <= 1e7) {
            return Err(invalid("workload.rate_per_sec", "must be 0..=1e7"));
        }
        if self.send_until_ms() > self.duration_ms {
            return Err(invalid(
                "workload.send_until_ms",
                "must be at most duration_ms",
            ));
        }
        let expected = w.rate_per_sec * self.send_until_ms() as f64 / 1000.0;
        let cap = w.messages_max.map_or(expected, |m| expected.min(m as f64));
        if cap > MESSAGES_MAX as f64 {
            return Err(invalid(
                "workload.rate_per_sec",
                format!("the run would send more than {MESSAGES_MAX} messages"),
            ));
        }
        if !(0.0..=1.0).contains(&w.group_fraction) {
            return Err(invalid("workload.group_fraction", "must be 0..=1"));
        }
        if w.group_fraction > 0.0 && g.count == 0 {
            return Err(invalid(
                "workload.group_fraction",
                "group sends need groups.count > 0",
            ));
        }
        if w.group_fraction < 1.0 && self.user_count() < 2 {
            return Err(invalid(
                "users.per_relay",
                "direct messages need at least 2 users",
            ));
        }
        if w.body_bytes_min < 32
            || w.body_bytes_max < w.body_bytes_min
            || w.body_bytes_max > BODY_BYTES_MAX
        {
            return Err(invalid(
                "workload.body_bytes_min",
                format!(
                    "need 32 <= body_bytes_min <= body_bytes_max <= {BODY_BYTES_MAX} (32 bytes carry the message's identity)"
                ),
            ));
        }
        if w.ttl_secs == 0 || w.ttl_secs > 30 * 24 * 3600 {
            return Err(invalid("workload.ttl_secs", "must be 1..=2592000"));
        }
        let c = &self.clients;
        if c.poll_interval_ms == 0 || c.retry_ms == 0 {
            return Err(invalid(
                "clients",
                "poll_interval_ms and retry_ms must be at least 1",
            ));
        }
        validate_link(&self.federation_link, "federation_link")?;
        for (i, o) in self.link_overrides.iter().enumerate() {
            let [a, b] = o.relays;
            if a >= r.count || b >= r.count || a == b {
                return Err(invalid(
                    format!("link_overrides[{i}].relays"),
                    "must name two different existing relays",
                ));
            }
            validate_link(&o.link, &format!("link_overrides[{i}].link"))?;
        }
        validate_link(&self.client_link, "client_link")?;
        self.validate_faults()
    }

    fn validate_faults(&self) -> Result<(), ScenarioError> {
        let n = self.relays.count;
        let mut order: Vec<usize> = (0..self.faults.len()).collect();
        order.sort_by_key(|&i| self.faults[i].at_ms);
        let mut crashed = vec![false; n as usize];
        let mut offline = std::collections::BTreeSet::new();
        for i in order {
            let f = &self.faults[i];
            let field = |name: &str| format!("faults[{i}].{name}");
            if f.at_ms > self.duration_ms {
                return Err(invalid(field("at_ms"), "must be at most duration_ms"));
            }
            let relay_ok = |r: u32| -> Result<usize, ScenarioError> {
                if r >= n {
                    Err(invalid(
                        field("relay"),
                        format!("relay {r} does not exist (relays are 0..{n})"),
                    ))
                } else {
                    Ok(r as usize)
                }
            };
            match &f.action {
                FaultAction::Partition { sets } => {
                    let mut seen = std::collections::BTreeSet::new();
                    if sets.is_empty() {
                        return Err(invalid(field("sets"), "must name at least one set"));
                    }
                    for set in sets {
                        if set.is_empty() {
                            return Err(invalid(field("sets"), "sets must not be empty"));
                        }
                        for &r in set {
                            relay_ok(r).map_err(|_| {
                                invalid(field("sets"), format!("relay {r} does not exist"))
                            })?;
                            if !seen.insert(r) {
                                return Err(invalid(
                                    field("sets"),
                                    format!("relay {r} is in two sets"),
                                ));
                            }
                        }
                    }
                }
                FaultAction::Heal => {}
                FaultAction::Crash { relay } => {
                    let r = relay_ok(*relay)?;
                    if crashed[r] {
                        return Err(invalid(field("relay"), "relay is already crashed then"));
                    }
                    crashed[r] = true;
                }
                FaultAction::Restart { relay } => {
                    let r = relay_ok(*relay)?;
                    if !crashed[r] {
                        return Err(invalid(field("relay"), "relay is not crashed then"));
                    }
                    crashed[r] = false;
                }
                FaultAction::ClientOffline { relay, user }
                | FaultAction::ClientOnline { relay, user } => {
                    relay_ok(*relay)?;
                    if *user >= self.users.per_relay {
                        return Err(invalid(
                            field("user"),
                            format!(
                                "user {user} does not exist (users are 0..{})",
                                self.users.per_relay
                            ),
                        ));
                    }
                    let going_offline = matches!(f.action, FaultAction::ClientOffline { .. });
                    let changed = if going_offline {
                        offline.insert((*relay, *user))
                    } else {
                        offline.remove(&(*relay, *user))
                    };
                    if !changed {
                        return Err(invalid(
                            field("kind"),
                            if going_offline {
                                "client is already offline then"
                            } else {
                                "client is not offline then"
                            },
                        ));
                    }
                }
                FaultAction::ReplayBatches { relay } => {
                    relay_ok(*relay)?;
                }
                FaultAction::ForgeOrigin { relay, claims } => {
                    relay_ok(*relay)?;
                    relay_ok(*claims).map_err(|_| {
                        invalid(field("claims"), format!("relay {claims} does not exist"))
                    })?;
                    if relay == claims {
                        return Err(invalid(field("claims"), "a relay cannot forge itself"));
                    }
                }
                FaultAction::Flood {
                    relay,
                    user,
                    to_relay,
                    to_user,
                    count,
                } => {
                    relay_ok(*relay)?;
                    relay_ok(*to_relay).map_err(|_| {
                        invalid(
                            field("to_relay"),
                            format!("relay {to_relay} does not exist"),
                        )
                    })?;
                    for (name, u) in [("user", user), ("to_user", to_user)] {
                        if *u >= self.users.per_relay {
                            return Err(invalid(
                                field(name),
                                format!(
                                    "user {u} does not exist (users are 0..{})",
                                    self.users.per_relay
                                ),
                            ));
                        }
                    }
                    if (relay, user) == (to_relay, to_user) {
                        return Err(invalid(field("to_user"), "a user cannot flood itself"));
                    }
                    if *count == 0 || *count > 100_000 {
                        return Err(invalid(field("count"), "must be 1..=100000"));
                    }
                }
            }
        }
        Ok(())
    }
}

fn validate_link(link: &Link, name: &str) -> Result<(), ScenarioError> {
    for (field, p) in [
        ("loss", link.loss),
        ("duplicate", link.duplicate),
        ("reorder", link.reorder),
    ] {
        if !(0.0..=1.0).contains(&p) {
            return Err(invalid(
                format!("{name}.{field}"),
                "must be a probability 0..=1",
            ));
        }
    }
    if link.loss >= 1.0 {
        return Err(invalid(
            format!("{name}.loss"),
            "must be below 1, or nothing is ever delivered",
        ));
    }
    if link.latency_ms > 600_000 {
        return Err(invalid(
            format!("{name}.latency_ms"),
            "must be at most 600000",
        ));
    }
    let cap_ok = |max_ms: u64| max_ms <= 600_000;
    let ok = match &link.jitter {
        Jitter::None => true,
        Jitter::Uniform { max_ms } => cap_ok(*max_ms),
        Jitter::Normal { stddev_ms, max_ms } => {
            stddev_ms.is_finite() && *stddev_ms >= 0.0 && cap_ok(*max_ms)
        }
        Jitter::Exponential { mean_ms, max_ms } => {
            mean_ms.is_finite() && *mean_ms >= 0.0 && cap_ok(*max_ms)
        }
    };
    if !ok {
        return Err(invalid(
            format!("{name}.jitter"),
            "parameters must be finite, non-negative, and max_ms at most 600000",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMALL: &str = r#"
name = "t"
duration_ms = 10000
[relays]
count = 3
[users]
per_relay = 4
contacts_per_user = 2
[workload]
rate_per_sec = 5
"#;

    #[test]
    fn minimal_scenario_gets_defaults() {
        let s = Scenario::parse(SMALL).unwrap();
        assert_eq!(s.relays.topology, Topology::FullMesh);
        assert_eq!(s.users.devices_min, 1);
        assert_eq!(s.federation_link.latency_ms, 10);
        assert_eq!(s.send_until_ms(), 10000);
    }

    #[test]
    fn faults_and_jitter_parse() {
        let text = format!(
            "{SMALL}\n[federation_link]\njitter = {{ dist = \"normal\", stddev_ms = 5.0 }}\nloss = 0.1\n\
             [[faults]]\nat_ms = 100\nkind = \"partition\"\nsets = [[0], [1, 2]]\n\
             [[faults]]\nat_ms = 200\nkind = \"crash\"\nrelay = 1\n\
             [[faults]]\nat_ms = 300\nkind = \"restart\"\nrelay = 1\n\
             [[faults]]\nat_ms = 400\nkind = \"heal\"\n"
        );
        let s = Scenario::parse(&text).unwrap();
        assert_eq!(s.faults.len(), 4);
        assert_eq!(s.faults[1].action, FaultAction::Crash { relay: 1 });
        assert!(matches!(s.federation_link.jitter, Jitter::Normal { .. }));
    }

    #[test]
    fn link_override_applies_to_its_pair_only() {
        let text = format!(
            "{SMALL}\n[[link_overrides]]\nrelays = [2, 0]\nlink = {{ latency_ms = 300, loss = 0.5 }}\n"
        );
        let s = Scenario::parse(&text).unwrap();
        assert_eq!(s.federation_link_between(0, 2).latency_ms, 300);
        assert_eq!(s.federation_link_between(2, 0).loss, 0.5);
        assert_eq!(s.federation_link_between(0, 1).latency_ms, 10);
        let bad = format!("{SMALL}\n[[link_overrides]]\nrelays = [1, 1]\nlink = {{}}\n");
        assert!(matches!(
            Scenario::parse(&bad).unwrap_err(),
            ScenarioError::Invalid { field, .. } if field == "link_overrides[0].relays"
        ));
    }

    #[test]
    fn unknown_field_is_rejected_with_its_name() {
        let err = Scenario::parse(&format!("{SMALL}\nbogus = 1\n")).unwrap_err();
        assert!(err.to_string().contains("bogus"), "{err}");
    }

    #[test]
    fn out_of_range_values_name_the_field() {
        let cases = [
            (SMALL.replace("count = 3", "count = 0"), "relays.count"),
            (
                format!("{SMALL}\n[client_link]\nloss = 1.5\n"),
                "client_link.loss",
            ),
            (
                format!("{SMALL}\n[[faults]]\nat_ms = 1\nkind = \"crash\"\nrelay = 9\n"),
                "faults[0].relay",
            ),
            (
                format!("{SMALL}\n[[faults]]\nat_ms = 1\nkind = \"restart\"\nrelay = 0\n"),
                "faults[0].relay",
            ),
            (
                format!(
                    "{SMALL}\n[[faults]]\nat_ms = 1\nkind = \"partition\"\nsets = [[0], [0, 1]]\n"
                ),
                "faults[0].sets",
            ),
            (
                SMALL.replace("rate_per_sec = 5", "rate_per_sec = 5\ngroup_fraction = 0.5"),
                "workload.group_fraction",
            ),
        ];
        for (text, field) in cases {
            let err = Scenario::parse(&text).unwrap_err();
            assert!(
                matches!(&err, ScenarioError::Invalid { field: f, .. } if f == field),
                "expected {field}, got {err}"
            );
        }
    }

    #[test]
    fn fault_with_unknown_kind_or_missing_field_is_rejected() {
        for bad in [
            "[[faults]]\nat_ms = 1\nkind = \"meteor\"\n",
            "[[faults]]\nat_ms = 1\nkind = \"crash\"\n",
            "[[faults]]\nat_ms = 1\nkind = \"heal\"\nrelay = 1\n",
            "[[faults]]\nat_ms = 1\nkind = \"heal\"\ncolour = 1\n",
        ] {
            let err = Scenario::parse(&format!("{SMALL}\n{bad}")).unwrap_err();
            assert!(matches!(err, ScenarioError::Parse { .. }), "{bad}: {err}");
        }
    }

    #[test]
    fn malformed_toml_is_a_parse_error() {
        let err = Scenario::parse("name = ").unwrap_err();
        assert!(matches!(err, ScenarioError::Parse { .. }));
    }
}
