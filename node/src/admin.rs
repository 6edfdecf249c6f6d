//! `init`, `id`, `invite` and `status`: admin commands that work on the data
//! directory directly.
//!
//! `invite` and `status` open the relay's store themselves rather than
//! talking to a running relay: they work whether or not it runs, need no
//! admin endpoint (nothing to secure on the HTTP port), and SQLite in WAL
//! mode and PostgreSQL both allow a second process.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use serde::Serialize;

use crate::config::{CONFIG_FILE, Config};
use crate::identity;

/// What `init` created.
#[derive(Debug, Clone)]
pub struct InitReport {
    /// The relay's PeerId.
    pub peer_id: String,
    /// Full multiaddrs, ending in `/p2p/<PeerId>`.
    pub multiaddrs: Vec<String>,
}

/// Creates the data directory (mode 0700) and writes `courier.toml` with the
/// effective settings if it has none. Used by `init` and on first `serve`.
pub fn ensure_data_dir(data_dir: &Path, config: &Config) -> anyhow::Result<bool> {
    if !data_dir.exists() {
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::DirBuilderExt;
            builder.mode(0o700);
        }
        builder
            .create(data_dir)
            .with_context(|| format!("cannot create {}", data_dir.display()))?;
    }
    let path = data_dir.join(CONFIG_FILE);
    if path.exists() {
        return Ok(false);
    }
    // The effective settings, each under its documentation.
    let text = crate::config_doc::example(config)?;
    // 0600 whatever the umask: it may hold a database password.
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options
        .open(&path)
        .and_then(|mut file| std::io::Write::write_all(&mut file, text.as_bytes()))
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(true)
}

/// Makes every file and directory this process creates private to its
/// user (umask 077): the SQLite database and its WAL and shared-memory
/// files (SQLite creates those with 0644), `http.addr`, `peers.json`, the
/// control socket. One setting instead of a mode at each place that
/// creates a file, including the places inside libraries.
pub fn private_files() {
    #[cfg(unix)]
    {
        use nix::sys::stat::{Mode, umask};
        umask(Mode::from_bits_truncate(0o077));
    }
}

/// Warns (once, as a structured event) when the data directory can be
/// read or entered by other users: it holds the relay key, the database
/// and maybe a database password. The directory is not changed: its mode
/// may be deliberate (a shared group for backups).
pub fn warn_if_data_dir_exposed(data_dir: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(data_dir) {
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                tracing::warn!(
                    data_dir = %data_dir.display(),
                    mode = format!("{mode:04o}"),
                    "the data directory is accessible to other users (it holds the relay key and the database); run chmod 700 on it"
                );
            }
        }
    }
}

/// The federation addresses to advertise: external addresses if set, else
/// the listen address.
pub fn p2p_addresses(config: &Config) -> Vec<String> {
    if config.federation.external_addresses.is_empty() {
        vec![config.federation.p2p.clone()]
    } else {
        config.federation.external_addresses.clone()
    }
}

/// `courier init`: a new data directory with config and key.
pub fn init(data_dir: &Path, config: &Config) -> anyhow::Result<InitReport> {
    if data_dir.join(CONFIG_FILE).exists() {
        anyhow::bail!(
            "{} already exists; edit it or use another --data-dir",
            data_dir.join(CONFIG_FILE).display()
        );
    }
    ensure_data_dir(data_dir, config)?;
    let (key, _) = identity::load_or_create(data_dir)?;
    let peer = identity::peer_id(&key);
    Ok(InitReport {
        peer_id: peer.to_string(),
        multiaddrs: identity::full_multiaddrs(&p2p_addresses(config), &peer),
    })
}

/// The config of an existing data directory (file, then environment).
pub fn existing_config(data_dir: &Path) -> anyhow::Result<Config> {
    let path = data_dir.join(CONFIG_FILE);
    if !path.exists() {
        anyhow::bail!(
            "no relay in {} (run `courier init` or `courier serve` first)",
            data_dir.display()
        );
    }
    let mut config = Config::load(&path, true)?;
    config.apply_env(std::env::vars())?;
    config.validate()?;
    Ok(config)
}

/// `courier invite`: a one-time registration code valid for `valid_hours`.
pub async fn invite(data_dir: &Path, config: &Config, valid_hours: u64) -> anyhow::Result<String> {
    let store = crate::store::open(data_dir, config).await?;
    let relay = crate::serve::relay(data_dir, config, store, Arc::new(courier_relay::NoNotifier))?;
    let code = relay
        .create_invite(valid_hours.saturating_mul(3600 * 1000))
        .await
        .map_err(|e| anyhow::anyhow!("cannot store the invite: {e}"))?;
    Ok(code)
}

/// What `courier status` reports.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// Relay name.
    pub name: String,
    /// PeerId.
    pub peer_id: String,
    /// Address of the running relay's HTTP API, if one wrote it.
    pub http: Option<String>,
    /// Registered accounts (users).
    pub users: u64,
    /// Envelopes waiting in all mailboxes.
    pub mailbox_depth: u64,
    /// Stored message records (kept for deduplication until they expire).
    pub messages: u64,
    /// Envelopes waiting in the federation outbox, per destination relay.
    pub outbox: Vec<OutboxStatus>,
    /// Sum of `outbox`.
    pub outbox_depth: u64,
    /// Federation peers: state, last seen, round-trip time, outbox depth,
    /// delivered/retried/failed counts (live when the relay runs).
    pub peers: Vec<crate::federation::PeerInfo>,
}

/// Outbox backlog towards one relay.
#[derive(Debug, Clone, Serialize)]
pub struct OutboxStatus {
    /// Destination relay.
    pub relay: String,
    /// Envelopes waiting.
    pub pending: u64,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "name:          {}", self.name)?;
        writeln!(f, "peer id:       {}", self.peer_id)?;
        writeln!(
            f,
            "http:          {}",
            self.http.as_deref().unwrap_or("(not running)")
        )?;
        writeln!(f, "users:         {}", self.users)?;
        writeln!(f, "mailbox depth: {}", self.mailbox_depth)?;
        writeln!(f, "messages:      {}", self.messages)?;
        writeln!(f, "outbox depth:  {}", self.outbox_depth)?;
        for o in &self.outbox {
            writeln!(f, "  {:<24} {}", o.relay, o.pending)?;
        }
        writeln!(f, "peers:         {}", self.peers.len())?;
        if !self.peers.is_empty() {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0);
            write!(f, "{}", crate::federation::control::table(&self.peers, now))?;
        }
        Ok(())
    }
}

/// `courier status`.
pub async fn status(data_dir: &Path, config: &Config) -> anyhow::Result<Status> {
    let key = identity::load(data_dir)?;
    let store = crate::store::open(data_dir, config).await?;
    let destinations = store
        .outbox_destinations()
        .await
        .map_err(|e| anyhow::anyhow!("cannot read the outbox: {e}"))?;
    let stats = store
        .stats()
        .await
        .map_err(|e| anyhow::anyhow!("cannot read the store: {e}"))?;
    let peers = crate::federation::control::peers(data_dir).await?;
    let peers = crate::federation::control::with_outbox_depth(peers, store.as_ref()).await?;
    let http = std::fs::read_to_string(data_dir.join(crate::serve::HTTP_ADDR_FILE))
        .ok()
        .map(|s| s.trim().to_owned());
    Ok(Status {
        name: config.name.clone(),
        peer_id: identity::peer_id(&key).to_string(),
        http,
        users: stats.accounts,
        mailbox_depth: stats.mailbox_entries,
        messages: stats.messages,
        outbox_depth: stats.outbox_entries,
        peers,
        outbox: destinations
            .into_iter()
            .map(|d| OutboxStatus {
                relay: d.relay.to_string(),
                pending: d.pending,
            })
            .collect(),
    })
}

/// `courier peer list`: peers with their outbox depth from the store.
pub async fn peers(
    data_dir: &Path,
    config: &Config,
) -> anyhow::Result<Vec<crate::federation::PeerInfo>> {
    let peers = crate::federation::control::peers(data_dir).await?;
    let store = crate::store::open(data_dir, config).await?;
    crate::federation::control::with_outbox_depth(peers, store.as_ref()).await
}
