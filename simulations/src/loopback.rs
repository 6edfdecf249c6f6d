//! Loopback mode: real `courier serve` processes on 127.0.0.1 and real
//! `courier-client` processes, driven through a scenario's workload in real
//! time and judged by the same [`Checker`] as deterministic mode.
//!
//! Everything goes through the command-line contract (`docs/../CLI.md`):
//! `courier serve|id|peer add|status` and `courier-client register|send|
//! group create|group send|recv --json`, so it tests exactly what operators
//! and users run.
//!
//! Smaller scale by design, and some faults cannot be reproduced with real
//! sockets without root: what loopback does with each part of a scenario —
//! - relays, topology: one `courier serve` per relay, `courier peer add` per
//!   peering edge;
//! - users: one device each (`devices_min/max` ignored: linking needs an
//!   interactive approval); contacts and groups as in the scenario; group
//!   messages are sent by each group's creator (its first member), the only
//!   member whose client knows the group before receiving from it;
//! - workload: real time, one `courier-client send` per message, in order;
//! - `crash` = SIGKILL, `restart` = the same command on the same data dir and
//!   ports; `client_offline/online` = the driver stops/starts sending and
//!   receiving for that user; `partition`/`heal` are applied between relays
//!   in network namespaces (`netns`) when the run is root and `ip netns`
//!   works, else recorded only; `federation_link` is applied with netem when
//!   the kernel has it, else reported as not applied (in the report and on
//!   stderr); `client_link` and `link_overrides` are never applied;
//! - federation counters come from each relay's own `/metrics`, summed over
//!   its restarts;
//! - `no_plaintext_at_rest` scans every file in each relay's data directory
//!   (the SQLite database and its WAL) for the plaintext marker;
//! - latency is measured at the receiving poll, so it is rounded up to the
//!   poll interval (at least 1 s).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::net::{Ipv4Addr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::checker::{Checker, Conversation, DeviceIx, Opened, ReceiptFacts, digest};
use crate::deterministic::store::{PLAINTEXT_MARKER, contains};
use crate::net::NetStats;
use crate::netns::{self, NetnsError, Network};
use crate::report::{
    Build, FaultMark, FederationMetrics, LatencySummary, LoopbackFacts, Population, RelaySummary,
    Report, SCHEMA_VERSION, ScenarioSource, Series,
};
use crate::rng::SimRng;
use crate::scenario::{FaultAction, Scenario, Topology};

/// Longest a relay may take to print its listening address.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest the drain after the workload may last in loopback mode.
const DRAIN_MAX: Duration = Duration::from_secs(120);
/// A relay's HTTP port inside its own namespace (nothing else listens there).
const NETNS_HTTP_PORT: u16 = 8080;
/// A relay's QUIC port inside its own namespace.
const NETNS_P2P_PORT: u16 = 4001;
/// A fault applied more than this after its time is marked late.
const LATE_FAULT_MS: u64 = 1000;
/// Longest a `/metrics` scrape may take.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest loopback scenario (processes are real; keep it small).
pub const USERS_MAX: u64 = 100;

/// Why a loopback run failed to run (as opposed to an invariant failing).
#[derive(Debug, thiserror::Error)]
pub enum LoopbackError {
    /// A binary was not found.
    #[error(
        "cannot find the `{0}` binary; build it (cargo build -p courier-node -p courier-client) or pass its path"
    )]
    MissingBinary(String),
    /// The scenario is too large for real processes.
    #[error("loopback scenarios may have at most {USERS_MAX} users (this one has {0})")]
    TooLarge(u64),
    /// A process could not be started or did not come up.
    #[error("{what}: {detail}")]
    Process {
        /// Which command.
        what: String,
        /// What happened (exit status, stderr).
        detail: String,
    },
    /// Local IO (work directory, ports).
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// The network namespaces could not be set up or changed.
    #[error("network namespaces: {0}")]
    Network(#[from] NetnsError),
}

fn process_err(what: impl Into<String>, detail: impl Into<String>) -> LoopbackError {
    LoopbackError::Process {
        what: what.into(),
        detail: detail.into(),
    }
}

/// The binaries loopback mode runs.
#[derive(Debug, Clone)]
pub struct Binaries {
    /// `courier`.
    pub courier: PathBuf,
    /// `courier-client`.
    pub courier_client: PathBuf,
}

fn find(name: &str, given: Option<PathBuf>) -> Result<PathBuf, LoopbackError> {
    if let Some(p) = given {
        return if p.is_file() {
            Ok(p)
        } else {
            Err(LoopbackError::MissingBinary(p.display().to_string()))
        };
    }
    if let Ok(me) = std::env::current_exe()
        && let Some(dir) = me.parent()
    {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    Err(LoopbackError::MissingBinary(name.to_string()))
}

impl Binaries {
    /// Finds the binaries: the given paths, else next to the running
    /// executable, else on `$PATH`.
    pub fn locate(
        courier: Option<PathBuf>,
        courier_client: Option<PathBuf>,
    ) -> Result<Self, LoopbackError> {
        Ok(Binaries {
            courier: find("courier", courier)?,
            courier_client: find("courier-client", courier_client)?,
        })
    }
}

/// A free port on 127.0.0.1 (bound and released; a race with other
/// processes is possible but unlikely on a test machine).
fn free_tcp_port() -> Result<u16, LoopbackError> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn free_udp_port() -> Result<u16, LoopbackError> {
    Ok(UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// One `courier serve` process.
struct RelayProc {
    name: String,
    data_dir: PathBuf,
    /// Where it listens: 127.0.0.1, or its address in its namespace.
    host: Ipv4Addr,
    /// The network namespace it runs in, if any.
    netns: Option<String>,
    http_port: u16,
    p2p_port: u16,
    child: Option<Child>,
    multiaddr: Option<String>,
    /// Federation counters of its earlier lives (before crashes).
    metrics_past: FederationMetrics,
    /// Federation counters of the running process, as last scraped.
    metrics_now: FederationMetrics,
}

impl RelayProc {
    fn url(&self) -> String {
        format!("http://{}:{}", self.host, self.http_port)
    }

    /// Reads the running process's counters (kept as they were when the
    /// relay does not answer).
    fn scrape(&mut self) {
        if self.child.is_some()
            && let Some(m) = scrape_metrics(self.host, self.http_port)
        {
            self.metrics_now = m;
        }
    }

    /// Counters over every life of the relay.
    fn metrics_total(&self) -> FederationMetrics {
        let mut m = self.metrics_past;
        m += self.metrics_now;
        m
    }

    fn start(&mut self, courier: &Path, log: &Path) -> Result<(), LoopbackError> {
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)?;
        let mut command = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                // `ip netns exec` execs courier in place: the child is courier.
                c.args(["netns", "exec", ns]).arg(courier);
                c
            }
            None => Command::new(courier),
        };
        let mut child = command
            .arg("serve")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(["--name", &self.name])
            .args(["--http", &format!("{}:{}", self.host, self.http_port)])
            .args([
                "--p2p",
                &format!("/ip4/{}/udp/{}/quic-v1", self.host, self.p2p_port),
            ])
            .args(["--registration", "open"])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
            .spawn()
            .map_err(|e| process_err(format!("spawn {}", courier.display()), e.to_string()))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| process_err("courier serve", "no stdout"))?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line.starts_with("listening http=") {
                    let _ = tx.send(());
                }
            }
        });
        if rx.recv_timeout(START_TIMEOUT).is_err() {
            let _ = child.kill();
            let _ = child.wait();
            return Err(process_err(
                format!("courier serve ({})", self.name),
                format!("did not print its address; see {}", log.display()),
            ));
        }
        self.child = Some(child);
        Ok(())
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
            // A new process counts from zero.
            self.metrics_past += std::mem::take(&mut self.metrics_now);
        }
    }
}

impl Drop for RelayProc {
    fn drop(&mut self) {
        self.kill();
    }
}

fn output(cmd: &mut Command, what: &str) -> Result<String, LoopbackError> {
    let out = cmd.output().map_err(|e| process_err(what, e.to_string()))?;
    if !out.status.success() {
        return Err(process_err(
            what,
            format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

struct LoopUser {
    relay: usize,
    local: u32,
    state: PathBuf,
    address: String,
    online: bool,
    contacts: Vec<usize>,
    groups: Vec<u32>,
    /// Receipts so far (each line of `recv` output is one entry).
    entries: u64,
}

/// Runs `scenario` against real processes; working files go under
/// `out/work`.
pub fn run(scenario: &Scenario, binaries: &Binaries, out: &Path) -> Result<Report, LoopbackError> {
    let users_total = scenario.user_count();
    if users_total > USERS_MAX {
        return Err(LoopbackError::TooLarge(users_total));
    }
    let work = out.join("work");
    if work.exists() {
        std::fs::remove_dir_all(&work)?;
    }
    std::fs::create_dir_all(&work)?;
    let seed = 1;
    let mut rng = SimRng::fork(seed, "loopback");
    let n = scenario.relays.count as usize;

    // The network goes first so that it drops last, after every relay
    // process in it has been killed.
    let mut facts = LoopbackFacts::default();
    let mut network = isolate(scenario, n, &mut facts)?;

    // Relays.
    let mut relays = Vec::with_capacity(n);
    for i in 0..n {
        let (host, netns, http_port, p2p_port) = match &network {
            Some(net) => (
                net.relay_ip(i),
                Some(net.namespace(i)),
                NETNS_HTTP_PORT,
                NETNS_P2P_PORT,
            ),
            None => (
                Ipv4Addr::LOCALHOST,
                None,
                free_tcp_port()?,
                free_udp_port()?,
            ),
        };
        let mut r = RelayProc {
            name: format!("r{i}.loopback"),
            data_dir: work.join(format!("relay-{i}")),
            host,
            netns,
            http_port,
            p2p_port,
            child: None,
            multiaddr: None,
            metrics_past: FederationMetrics::default(),
            metrics_now: FederationMetrics::default(),
        };
        r.start(&binaries.courier, &work.join(format!("relay-{i}.log")))?;
        let id = output(
            Command::new(&binaries.courier)
                .arg("id")
                .arg("--data-dir")
                .arg(&r.data_dir),
            "courier id",
        )?;
        let ip4 = format!("/ip4/{}/", r.host);
        r.multiaddr = id
            .lines()
            .find(|l| l.contains(&ip4) && l.contains("/p2p/"))
            .map(|l| l.trim().to_string());
        relays.push(r);
    }
    // Peering along the scenario's topology (full mesh or chain; random
    // peering uses a chain plus the shortcuts the seed picks).
    for (a, b) in edges(scenario, n, &mut rng) {
        let Some(addr) = relays[b].multiaddr.clone() else {
            return Err(process_err(
                "courier id",
                format!("relay {b} printed no multiaddr on {}", relays[b].host),
            ));
        };
        output(
            Command::new(&binaries.courier)
                .arg("peer")
                .arg("add")
                .arg("--data-dir")
                .arg(&relays[a].data_dir)
                .arg(&addr),
            "courier peer add",
        )?;
    }

    // Users, one device each.
    let mut users = Vec::new();
    for (r, relay) in relays.iter().enumerate() {
        for local in 0..scenario.users.per_relay {
            let state = work.join(format!("client-r{r}-u{local}"));
            let printed = output(
                Command::new(&binaries.courier_client)
                    .arg("--state")
                    .arg(&state)
                    .arg("register")
                    // The full address, so the client need not guess the
                    // relay's name.
                    .arg(format!("u{local}@{}", relay.name))
                    .arg("--relay")
                    .arg(relay.url()),
                "courier-client register",
            )?;
            let address = printed
                .lines()
                .find(|l| l.contains('@'))
                .map(|l| l.trim().to_string())
                .unwrap_or_else(|| format!("u{local}@{}", relay.name));
            users.push(LoopUser {
                relay: r,
                local,
                state,
                address,
                online: true,
                contacts: Vec::new(),
                groups: Vec::new(),
                entries: 0,
            });
        }
    }
    let total = users.len();
    for (u, user) in users.iter_mut().enumerate() {
        let mut set = std::collections::BTreeSet::new();
        let want = (scenario.users.contacts_per_user as usize).min(total.saturating_sub(1));
        while set.len() < want {
            let c = rng.index(total);
            if c != u {
                set.insert(c);
            }
        }
        user.contacts = set.into_iter().collect();
    }
    let mut groups: Vec<Vec<usize>> = Vec::new();
    for g in 0..scenario.groups.count {
        let size = rng.range_inclusive(
            u64::from(scenario.groups.size_min),
            u64::from(scenario.groups.size_max),
        ) as usize;
        let mut members = std::collections::BTreeSet::new();
        while members.len() < size.min(total) {
            members.insert(rng.index(total));
        }
        let members: Vec<usize> = members.into_iter().collect();
        let creator = members[0];
        let mut cmd = Command::new(&binaries.courier_client);
        cmd.arg("--state")
            .arg(&users[creator].state)
            .args(["group", "create", &format!("g{g}")]);
        for &m in &members[1..] {
            cmd.arg(&users[m].address);
        }
        output(&mut cmd, "courier-client group create")?;
        users[creator].groups.push(g);
        groups.push(members);
    }

    // Workload and faults, in real time.
    let mut checker = Checker::new();
    let mut latencies = Vec::new();
    let mut marks = Vec::new();
    let mut faults: Vec<(u64, FaultAction)> = scenario
        .faults
        .iter()
        .map(|f| (f.at_ms, f.action.clone()))
        .collect();
    faults.sort_by_key(|f| f.0);
    let mut faults = faults.into_iter().peekable();
    let poll = Duration::from_millis(scenario.clients.poll_interval_ms.max(1000));
    let mut next_poll = Instant::now();
    let start = Instant::now();
    let mut next_send_ms = 0.0f64;
    let mut sent = 0u64;
    let send_until = scenario.send_until_ms();
    let mut summaries = vec![RelaySummary::default(); n];
    let mut seqs = vec![0u64; total];
    let mut pending: Vec<Vec<(usize, usize, Vec<u8>)>> = vec![Vec::new(); total];
    let mut outbox_samples: Vec<Vec<u64>> = vec![Vec::new(); n];
    loop {
        let now_ms = start.elapsed().as_millis() as u64;
        // Faults first, so one that fell due while a blocked
        // `courier-client` call held the loop is still applied (late, and
        // said so) rather than skipped because the period ended.
        while faults.peek().is_some_and(|f| f.0 <= now_ms) {
            let Some((at, action)) = faults.next() else {
                break;
            };
            let mut label = action.label();
            if now_ms > at + LATE_FAULT_MS {
                label.push_str(&format!(" (applied {} ms late)", now_ms - at));
            }
            match action {
                FaultAction::Crash { relay } => {
                    // Counters up to the crash; SIGKILL leaves no chance later.
                    relays[relay as usize].scrape();
                    relays[relay as usize].kill();
                    summaries[relay as usize].crashes += 1;
                }
                FaultAction::Restart { relay } => {
                    let log = work.join(format!("relay-{relay}.log"));
                    relays[relay as usize].start(&binaries.courier, &log)?;
                }
                FaultAction::ClientOffline { relay, user } => {
                    if let Some(u) = users
                        .iter_mut()
                        .find(|u| u.relay == relay as usize && u.local == user)
                    {
                        u.online = false;
                    }
                }
                FaultAction::ClientOnline { relay, user } => {
                    if let Some(u) = users
                        .iter_mut()
                        .find(|u| u.relay == relay as usize && u.local == user)
                    {
                        u.online = true;
                    }
                }
                FaultAction::Partition { sets } => match network.as_mut() {
                    Some(net) => net.partition(&sets)?,
                    None => label.push_str(" (recorded only)"),
                },
                FaultAction::Heal => match network.as_mut() {
                    Some(net) => net.heal()?,
                    None => label.push_str(" (recorded only)"),
                },
                // The adversaries live in the deterministic mode, where a
                // relay's outgoing batches pass through the harness.
                FaultAction::ReplayBatches { .. }
                | FaultAction::ForgeOrigin { .. }
                | FaultAction::Flood { .. } => {
                    label.push_str(" (deterministic mode only; not applied in loopback)");
                }
            }
            marks.push(FaultMark { at_ms: at, label });
        }
        if now_ms >= scenario.duration_ms {
            break;
        }
        // Sends due now.
        let rate = scenario.workload.rate_per_sec;
        while rate > 0.0
            && (next_send_ms as u64) <= now_ms
            && (next_send_ms as u64) < send_until
            && scenario.workload.messages_max.is_none_or(|m| sent < m)
        {
            let at = next_send_ms as u64;
            next_send_ms += rng.exponential(1000.0 / rate);
            sent += 1;
            let u = rng.index(total);
            let group = (!users[u].groups.is_empty()
                && rng.chance(scenario.workload.group_fraction))
            .then(|| users[u].groups[rng.index(users[u].groups.len())]);
            let (conversation, recipients): (Conversation, Vec<usize>) = match group {
                Some(g) => (
                    Conversation::Group(g),
                    groups[g as usize]
                        .iter()
                        .copied()
                        .filter(|&m| m != u)
                        .collect(),
                ),
                None => {
                    let Some(&c) = users[u]
                        .contacts
                        .get(rng.index(users[u].contacts.len().max(1)))
                    else {
                        continue;
                    };
                    (Conversation::Direct(c as u32), vec![c])
                }
            };
            let index = checker.message_count();
            let size = rng.range_inclusive(
                u64::from(scenario.workload.body_bytes_min),
                u64::from(scenario.workload.body_bytes_max).min(2000),
            ) as usize;
            let mut text = Vec::with_capacity(size);
            text.extend_from_slice(PLAINTEXT_MARKER);
            text.extend_from_slice(format!("{index}:").as_bytes());
            while text.len() < size {
                text.push(b'a' + rng.below(26) as u8);
            }
            let seq = seqs[u];
            seqs[u] += 1;
            let m = checker.record_send(
                u as DeviceIx,
                conversation,
                recipients.iter().map(|&r| r as DeviceIx).collect(),
                seq,
                at,
                &text,
            );
            pending[u].push((m, group.map_or(usize::MAX, |g| g as usize), text));
        }
        // Each online user sends what it has queued, in order.
        for u in 0..total {
            if !users[u].online || pending[u].is_empty() {
                continue;
            }
            let queue = std::mem::take(&mut pending[u]);
            let mut rest = Vec::new();
            for (m, group, text) in queue {
                if !rest.is_empty() {
                    rest.push((m, group, text));
                    continue;
                }
                let text_str = String::from_utf8_lossy(&text).into_owned();
                let mut cmd = Command::new(&binaries.courier_client);
                cmd.arg("--state").arg(&users[u].state);
                if group == usize::MAX {
                    let Some(rec) = checker.message(m) else {
                        continue;
                    };
                    let to = rec.recipients.first().map_or(0, |&d| d as usize);
                    cmd.args(["send", &users[to].address, &text_str]);
                } else {
                    cmd.args(["group", "send", &format!("g{group}"), &text_str]);
                }
                match cmd.output() {
                    Ok(o) if o.status.success() => {
                        checker.record_accept(m, start.elapsed().as_millis() as u64);
                        summaries[users[u].relay].accepted += 1;
                    }
                    // Home relay down or refusing: keep it and retry later.
                    _ => rest.push((m, group, text)),
                }
            }
            pending[u] = rest;
        }
        if Instant::now() >= next_poll {
            receive_all(binaries, &mut users, &mut checker, &mut latencies, start);
            sample_outboxes(binaries, &relays, &mut outbox_samples, &mut summaries);
            relays.iter_mut().for_each(RelayProc::scrape);
            next_poll = Instant::now() + poll;
        }
        std::thread::sleep(Duration::from_millis(50));
    }

    // Drain: repair, then receive until everything arrived or time is up.
    marks.push(FaultMark {
        at_ms: start.elapsed().as_millis() as u64,
        label: "drain: repair all".into(),
    });
    if let Some(net) = network.as_mut() {
        net.heal()?;
    }
    for (i, r) in relays.iter_mut().enumerate() {
        if r.child.is_none() {
            r.start(&binaries.courier, &work.join(format!("relay-{i}.log")))?;
        }
    }
    for u in users.iter_mut() {
        u.online = true;
    }
    let drain_deadline = Instant::now() + DRAIN_MAX;
    let mut drained = false;
    while Instant::now() < drain_deadline {
        for u in 0..total {
            for (m, group, text) in std::mem::take(&mut pending[u]) {
                let text_str = String::from_utf8_lossy(&text).into_owned();
                let mut cmd = Command::new(&binaries.courier_client);
                cmd.arg("--state").arg(&users[u].state);
                if group == usize::MAX {
                    let to = checker
                        .message(m)
                        .and_then(|r| r.recipients.first().copied())
                        .unwrap_or(0) as usize;
                    cmd.args(["send", &users[to].address, &text_str]);
                } else {
                    cmd.args(["group", "send", &format!("g{group}"), &text_str]);
                }
                if cmd.output().is_ok_and(|o| o.status.success()) {
                    checker.record_accept(m, start.elapsed().as_millis() as u64);
                }
            }
        }
        receive_all(binaries, &mut users, &mut checker, &mut latencies, start);
        sample_outboxes(binaries, &relays, &mut outbox_samples, &mut summaries);
        relays.iter_mut().for_each(RelayProc::scrape);
        let owed: u64 = (0..checker.message_count())
            .filter_map(|i| checker.message(i))
            .filter(|m| m.accepted_ms.is_some())
            .map(|m| m.recipients.len() as u64)
            .sum();
        if checker.stats().deliveries >= owed {
            drained = true;
            break;
        }
        std::thread::sleep(poll);
    }
    let end_ms = start.elapsed().as_millis() as u64;
    for r in relays.iter_mut() {
        r.scrape();
        r.kill();
    }
    for (i, r) in relays.iter().enumerate() {
        checker.record_store_scan(i, &scan_dir(&r.data_dir));
    }
    let describe = |d: DeviceIx| {
        users
            .get(d as usize)
            .map_or_else(|| format!("user {d}"), |u| format!("{}/d1", u.address))
    };
    let invariants = checker.verdicts(&describe);
    // Outbox depth is sampled once per poll, so the series use that step.
    let bucket_ms = poll.as_millis() as u64;
    let mut deliveries = vec![0u64; (end_ms / bucket_ms + 1) as usize];
    for t in checker.first_delivery_times() {
        if let Some(b) = deliveries.get_mut((t / bucket_ms) as usize) {
            *b += 1;
        }
    }
    for (s, r) in summaries.iter_mut().zip(&relays) {
        s.name = r.name.clone();
        s.federation_metrics = Some(r.metrics_total());
    }
    drop(relays);
    drop(network);
    Ok(Report {
        schema_version: SCHEMA_VERSION,
        courier: Build::current(),
        mode: "loopback".into(),
        scenario: scenario.name.clone(),
        scenario_source: ScenarioSource::of(scenario),
        seed,
        sabotage: None,
        population: Population {
            relays: scenario.relays.count,
            users: total as u64,
            devices: total as u64,
            groups: scenario.groups.count,
        },
        simulated_ms: end_ms,
        drained,
        delivery: checker.stats().clone(),
        latency: LatencySummary::from_samples(&mut latencies),
        federation_network: NetStats::default(),
        client_network: NetStats::default(),
        relays: summaries,
        faults: marks,
        invariants,
        series: Series {
            bucket_ms,
            deliveries,
            outbox_depth: outbox_samples,
        },
        loopback: Some(facts),
    })
}

/// Sets up network namespaces when this process can, applies the link
/// model, and records in `facts` (and on stderr) what is and is not applied.
fn isolate(
    scenario: &Scenario,
    relays: usize,
    facts: &mut LoopbackFacts,
) -> Result<Option<Network>, LoopbackError> {
    let has_partitions = scenario
        .faults
        .iter()
        .any(|f| matches!(f.action, FaultAction::Partition { .. }));
    let not_applied = |facts: &mut LoopbackFacts, what: String| {
        eprintln!("courier-sim loopback: NOT applied: {what}");
        facts.not_applied.push(what);
    };
    let network = match netns::available() {
        Ok(()) => {
            let swept = netns::sweep_stale();
            if !swept.is_empty() {
                eprintln!(
                    "courier-sim loopback: removed what earlier runs left: {}",
                    swept.join(", ")
                );
            }
            let net = Network::create(relays)?;
            facts.isolation = "network_namespaces".into();
            if has_partitions {
                facts
                    .applied
                    .push("partition/heal: blackhole routes between relay namespaces".into());
            }
            Some(net)
        }
        Err(why) => {
            eprintln!(
                "courier-sim loopback: no network isolation ({why}); faults between relays are recorded only"
            );
            facts.isolation = "none".into();
            facts.isolation_unavailable = Some(why);
            if has_partitions {
                not_applied(facts, "partition/heal: no network isolation".into());
            }
            None
        }
    };
    let link = &scenario.federation_link;
    let describe = format!("federation_link ({})", netns::netem_args(link).join(" "));
    match &network {
        Some(net) if net.netem_available() => {
            let applied = net.apply_link(link)?;
            facts.applied.push(format!(
                "federation_link: {applied} on each relay's interface (its answers to clients included)"
            ));
        }
        Some(_) => not_applied(facts, format!("{describe}: this kernel has no netem qdisc")),
        None => not_applied(facts, format!("{describe}: no network isolation")),
    }
    not_applied(
        facts,
        "client_link: clients run on the host and are not shaped".into(),
    );
    if !scenario.link_overrides.is_empty() {
        not_applied(
            facts,
            format!(
                "link_overrides ({}): per-pair link models are not supported",
                scenario.link_overrides.len()
            ),
        );
    }
    Ok(network)
}

/// A relay's federation counters from its `GET /metrics` (Prometheus text),
/// summed over peers; `None` when it does not answer.
fn scrape_metrics(host: Ipv4Addr, port: u16) -> Option<FederationMetrics> {
    use std::io::Write as _;
    let addr = std::net::SocketAddr::from((host, port));
    let mut stream = TcpStream::connect_timeout(&addr, SCRAPE_TIMEOUT).ok()?;
    stream.set_read_timeout(Some(SCRAPE_TIMEOUT)).ok()?;
    // HTTP/1.0: the answer is the body up to the close, never chunked.
    stream
        .write_all(format!("GET /metrics HTTP/1.0\r\nHost: {host}\r\n\r\n").as_bytes())
        .ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    (head.split_whitespace().nth(1) == Some("200")).then(|| parse_metrics(body))
}

/// Sums the federation counters in Prometheus text.
fn parse_metrics(text: &str) -> FederationMetrics {
    use crate::report::FederationMetrics as M;
    const SENT: &str = "courier_federation_envelopes_sent_total";
    const RECEIVED: &str = "courier_federation_envelopes_received_total";
    let mut m = M::default();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.trim().parse::<f64>() else {
            continue;
        };
        let value = value as u64;
        let (name, labels) = series.split_once('{').unwrap_or((series, ""));
        if name == RECEIVED {
            m.envelopes_received += value;
        } else if name == SENT {
            if labels.contains("result=\"delivered\"") {
                m.envelopes_delivered += value;
            } else if labels.contains("result=\"retried\"") {
                m.envelopes_retried += value;
            } else if labels.contains("result=\"failed\"") {
                m.envelopes_failed += value;
            }
        }
    }
    m
}

/// One `courier-client recv --json` per online user; each printed line is a
/// receipt.
fn receive_all(
    binaries: &Binaries,
    users: &mut [LoopUser],
    checker: &mut Checker,
    latencies: &mut Vec<u64>,
    start: Instant,
) {
    let relay_of: Vec<usize> = users.iter().map(|u| u.relay).collect();
    for (ix, u) in users.iter_mut().enumerate() {
        if !u.online {
            continue;
        }
        let Ok(out) = Command::new(&binaries.courier_client)
            .arg("--state")
            .arg(&u.state)
            .args(["recv", "--json"])
            .output()
        else {
            continue;
        };
        let now = start.elapsed().as_millis() as u64;
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            let Some(text) = v.get("text").and_then(|t| t.as_str()) else {
                continue;
            };
            let Some(rest) = text.as_bytes().strip_prefix(PLAINTEXT_MARKER) else {
                continue;
            };
            let Some(index) = std::str::from_utf8(rest)
                .ok()
                .and_then(|r| r.split(':').next())
                .and_then(|n| n.parse::<usize>().ok())
            else {
                checker.note_unknown_receipt();
                continue;
            };
            let Some(sender) = checker.message(index).map(|m| m.sender as usize) else {
                checker.note_unknown_receipt();
                continue;
            };
            u.entries += 1;
            let facts = ReceiptFacts {
                message: index,
                device: ix as DeviceIx,
                entry: u.entries,
                at_ms: now,
                opened: Opened::Plaintext(digest(text.as_bytes())),
                order_promised: relay_of.get(sender) == Some(&u.relay),
            };
            if let Some(l) = checker.record_receipt(facts) {
                latencies.push(l);
            }
        }
    }
}

/// Appends each relay's outbox depth (`courier status --json`, field
/// `outbox_depth`; 0 when unreadable, e.g. while the relay restarts).
fn sample_outboxes(
    binaries: &Binaries,
    relays: &[RelayProc],
    samples: &mut [Vec<u64>],
    summaries: &mut [RelaySummary],
) {
    for ((relay, series), summary) in relays.iter().zip(samples).zip(summaries) {
        let depth = Command::new(&binaries.courier)
            .arg("status")
            .arg("--data-dir")
            .arg(&relay.data_dir)
            .arg("--json")
            .output()
            .ok()
            .and_then(|o| serde_json::from_slice::<serde_json::Value>(&o.stdout).ok())
            .and_then(|v| v.get("outbox_depth").and_then(serde_json::Value::as_u64))
            .unwrap_or(0);
        series.push(depth);
        summary.outbox_depth_max = summary.outbox_depth_max.max(depth);
    }
}

/// Descriptions of plaintext found in any file under `dir`.
fn scan_dir(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    for path in paths {
        if path.is_dir() {
            found.extend(scan_dir(&path));
            continue;
        }
        let mut bytes = Vec::new();
        if std::fs::File::open(&path)
            .and_then(|mut f| f.read_to_end(&mut bytes))
            .is_ok()
            && contains(&bytes, PLAINTEXT_MARKER)
        {
            found.push(format!("file {}", path.display()));
        }
    }
    found
}

/// Peering edges (a peers with b) for the scenario's topology.
fn edges(scenario: &Scenario, n: usize, rng: &mut SimRng) -> Vec<(usize, usize)> {
    let mut out = BTreeMap::new();
    match scenario.relays.topology {
        Topology::FullMesh => {
            for a in 0..n {
                for b in a + 1..n {
                    out.insert((a, b), ());
                }
            }
        }
        Topology::Chain => {
            for a in 1..n {
                out.insert((a - 1, a), ());
            }
        }
        Topology::Random => {
            for a in 1..n {
                out.insert((a - 1, a), ());
            }
            for a in 0..n {
                for _ in 0..scenario.relays.random_peers {
                    let b = rng.index(n);
                    if a != b {
                        out.insert((a.min(b), a.max(b)), ());
                    }
                }
            }
        }
    }
    out.into_keys().collect()
}

/// True when something answers HTTP on `port` (a relay that came up).
pub fn http_answers(port: u16) -> bool {
    TcpStream::connect(("127.0.0.1", port)).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn federation_counters_are_summed_over_peers_and_results() {
        let text = "# TYPE courier_federation_envelopes_sent_total counter\n\
            courier_federation_envelopes_sent_total{peer=\"r1\",result=\"delivered\"} 7\n\
            courier_federation_envelopes_sent_total{peer=\"r2\",result=\"delivered\"} 3\n\
            courier_federation_envelopes_sent_total{peer=\"r1\",result=\"retried\"} 2\n\
            courier_federation_envelopes_sent_total{peer=\"r1\",result=\"failed\"} 1\n\
            courier_federation_envelopes_received_total{peer=\"r1\"} 9\n\
            courier_federation_envelopes_received_totally_else 100\n\
            courier_http_requests_total{route=\"/metrics\"} 5\n";
        assert_eq!(
            parse_metrics(text),
            FederationMetrics {
                envelopes_delivered: 10,
                envelopes_retried: 2,
                envelopes_failed: 1,
                envelopes_received: 9,
            }
        );
    }
}
