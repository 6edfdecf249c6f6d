//! Deterministic mode: every relay and client in one process, on virtual
//! time, with every random choice drawn from the run seed.
//!
//! What runs for real: `courier_relay::Relay` over the real `MemoryStore`
//! (registration, device links, message acceptance, mailboxes, fetch and
//! ack, the outbox with leases, backoff and jitter, federated acceptance
//! with dedup, ack dispositions), and `courier-crypto` in every client (see
//! [`client`]). What is simulated: the links between them ([`crate::net`]),
//! the clock, crashes (the `Relay` object is dropped, its store kept), and
//! the federation transport ([`exec::SimFederation`], implementing the
//! relay's `Federation` trait).

mod adversary;
pub mod client;
pub mod exec;
pub mod store;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};

use courier_client::wire;
use courier_protocol::limits::{BATCH_ENVELOPES_MAX, FETCH_LIMIT_MAX};
use courier_protocol::{
    Address, DeliveryAcks, DeliveryBatch, DeviceId, EnvelopeAck, EnvelopeId, OutgoingMessage,
    RecipientEntry, RelayName, Username,
};
use courier_relay::drain_scheduler::{DrainSchedule, DrainScheduler, perform};
use courier_relay::federation::{FederationError, accept_batch, drain_worker};
use courier_relay::types::{
    AckStatus, ApproveLinkRequest, DeviceList, DeviceListEntry, Envelope, EnvelopeKind,
    LinkRequest, RegisterRequest,
};
use courier_relay::{AuthedDevice, Config, ManualClock, Notifier, Relay, RelayError, Store};

use crate::checker::{Arrival, Checker, Conversation, DeviceIx, Opened, digest};
use crate::net::{NetStats, Partitions, transmit};
use crate::queue::EventQueue;
use crate::report::{
    Build, FaultMark, LatencySummary, Population, RelaySummary, Report, SCHEMA_VERSION,
    ScenarioSource, Series,
};
use crate::rng::SimRng;
use crate::scenario::{FaultAction, Scenario, Topology};
use client::{DeviceCrypto, OpenedMessage, establish};
use exec::{CallId, Executor, SimFederation, WouldBlock, run_now};
use store::{PLAINTEXT_MARKER, SimStore};

/// Virtual time 0 as Unix milliseconds (2026-01-01T00:00:00Z), so the relay
/// sees plausible timestamps.
pub const EPOCH_MS: u64 = 1_767_225_600_000;
/// A federation call without an answer fails after this long.
pub const FEDERATION_TIMEOUT_MS: u64 = 10_000;
/// Relays that do not yet know every other relay re-exchange descriptors
/// with their peers this often.
pub const HELLO_INTERVAL_MS: u64 = 10_000;
/// Points in each time series.
pub const SERIES_POINTS: u64 = 240;

/// How a run is configured beyond its scenario.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// The seed of every random choice.
    pub seed: u64,
    /// Draw a progress bar on stderr (only when it is a terminal).
    pub progress: bool,
    /// Deliberately break a relay, to prove the checker notices.
    pub sabotage: Option<Sabotage>,
}

/// A deliberately introduced relay bug (used by tests and by
/// `courier-sim run --sabotage`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Sabotage {
    /// Relay `relay` loses the first outbox entry it hands to the
    /// federation: deleted, never delivered.
    LoseOutboxEntry {
        /// Relay index.
        relay: u32,
    },
}

/// Why a run could not complete (as opposed to an invariant failing).
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// Setting up relays, accounts or devices failed.
    #[error("setup: {0}")]
    Setup(String),
    /// A relay call over the memory store waited.
    #[error(transparent)]
    WouldBlock(#[from] WouldBlock),
    /// A simulated client could not encrypt (a harness bug).
    #[error("client: {0}")]
    Client(#[from] client::ClientError),
}

enum Notice {
    Mailbox(Username, DeviceId),
    Outbox(RelayName),
}

#[derive(Default)]
struct SimNotifier {
    notices: Mutex<Vec<Notice>>,
}

impl SimNotifier {
    fn take(&self) -> Vec<Notice> {
        std::mem::take(&mut *self.notices.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

impl Notifier for SimNotifier {
    fn mailbox(&self, user: &Username, device: DeviceId, _seq: u64) {
        self.notices
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Notice::Mailbox(user.clone(), device));
    }
    fn outbox(&self, relay: &RelayName) {
        self.notices
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Notice::Outbox(relay.clone()));
    }
}

struct Live {
    relay: Arc<Relay>,
    fed: SimFederation,
    notifier: Arc<SimNotifier>,
    /// The relay's real drain schedule (the node's drainer runs the same).
    sched: DrainScheduler,
    /// Destinations whose delivery workers ended, for `sched`.
    finished: Arc<Mutex<Vec<RelayName>>>,
    /// Queue time of the earliest drain timer scheduled, so a relay keeps
    /// one timer instead of one per poll.
    timer_at: Option<u64>,
}

struct RelaySlot {
    name: RelayName,
    store: Arc<SimStore>,
    live: Option<Live>,
    incarnation: u32,
    peers: Vec<usize>,
    known: BTreeSet<usize>,
    summary: RelaySummary,
    outbox_samples: Vec<u64>,
}

struct User {
    relay: usize,
    local: u32,
    devices: Vec<DeviceIx>,
    contacts: Vec<u32>,
    groups: Vec<u32>,
}

struct Queued {
    message: usize,
    conversation: Conversation,
    recipients: Vec<DeviceIx>,
    plaintext: Vec<u8>,
}

struct InFlight {
    message: usize,
    outgoing: OutgoingMessage,
    attempt: u32,
}

struct Buffered {
    message: usize,
    entry: u64,
    group: u32,
    sender: DeviceIx,
    body: Vec<u8>,
}

/// A received copy waiting to be decrypted.
struct Inbound {
    message: usize,
    entry: u64,
    header: Vec<u8>,
    body: Vec<u8>,
}

struct Device {
    user: u32,
    relay: usize,
    id: DeviceId,
    authed: AuthedDevice,
    crypto: DeviceCrypto,
    online: bool,
    queue: VecDeque<Queued>,
    in_flight: Option<InFlight>,
    sender_seq: u64,
    cursor: u64,
    unacked: BTreeSet<u64>,
    fetch_in_flight: bool,
    fetch_again: bool,
    fetch_id: u64,
    poll_gen: u64,
    inbox: Vec<Inbound>,
    buffered: Vec<Buffered>,
}

enum Ev {
    Workload,
    SendArrive {
        device: DeviceIx,
        message: usize,
        outgoing: Box<OutgoingMessage>,
    },
    SendReply {
        device: DeviceIx,
        message: usize,
        ok: bool,
        transient: bool,
    },
    SendTimeout {
        device: DeviceIx,
        message: usize,
        attempt: u32,
    },
    PushArrive {
        device: DeviceIx,
    },
    FetchArrive {
        device: DeviceIx,
        fetch_id: u64,
        after: u64,
    },
    FetchReply {
        device: DeviceIx,
        fetch_id: u64,
        envelopes: Vec<Envelope>,
        more: bool,
    },
    FetchTimeout {
        device: DeviceIx,
        fetch_id: u64,
    },
    AckArrive {
        device: DeviceIx,
        seqs: Vec<u64>,
    },
    AckReply {
        device: DeviceIx,
        seqs: Vec<u64>,
    },
    Poll {
        device: DeviceIx,
        generation: u64,
    },
    BatchArrive {
        from: usize,
        from_incarnation: u32,
        to: usize,
        call: CallId,
        batch: Box<DeliveryBatch>,
    },
    AcksArrive {
        to: usize,
        incarnation: u32,
        call: CallId,
        acks: Vec<EnvelopeAck>,
    },
    CallTimeout {
        relay: usize,
        incarnation: u32,
        call: CallId,
    },
    Hello {
        to: usize,
        known: Vec<usize>,
    },
    HelloTick {
        relay: usize,
    },
    DrainTick {
        relay: usize,
        incarnation: u32,
    },
    /// A forged batch (see `adversary`) reaches `to` over `from`'s link.
    ForgedArrive {
        from: usize,
        to: usize,
        batch: Box<DeliveryBatch>,
    },
    Sample,
    Fault(usize),
    RepairAll,
    Sabotage,
}

struct World<'s> {
    sc: &'s Scenario,
    seed: u64,
    q: EventQueue<Ev>,
    clock: Arc<ManualClock>,
    relays: Vec<RelaySlot>,
    relay_ix: BTreeMap<RelayName, usize>,
    users: Vec<User>,
    groups: Vec<Vec<u32>>,
    devices: Vec<Device>,
    checker: Checker,
    latencies: Vec<u64>,
    net_rng: SimRng,
    work_rng: SimRng,
    crypto_rng: SimRng,
    fed_stats: NetStats,
    client_stats: NetStats,
    exec: Executor,
    partitions: Partitions,
    marks: Vec<FaultMark>,
    owed: u64,
    delivered: u64,
    messages: u64,
    next_send_ms: f64,
    draining_phase: bool,
    finished: bool,
    drained: bool,
    bucket_ms: u64,
    batch_max: u32,
    sabotage: Option<Sabotage>,
    /// Adversary relays (fault kinds `replay_batches`, `forge_origin`).
    replaying: BTreeSet<usize>,
    forging: BTreeMap<usize, usize>,
    failure_notices: u64,
    rejected_sends: u64,
    inbox_len: usize,
}

/// Received copies held before a batch decryption.
pub const INBOX_FLUSH_AT: usize = 20_000;

fn setup_err(what: &str, e: impl std::fmt::Display) -> SimError {
    SimError::Setup(format!("{what}: {e}"))
}

/// Two distinct elements of a slice, mutably.
fn two_mut<T>(v: &mut [T], a: usize, b: usize) -> Option<(&mut T, &mut T)> {
    if a == b || a >= v.len() || b >= v.len() {
        return None;
    }
    if a < b {
        let (x, y) = v.split_at_mut(b);
        Some((&mut x[a], &mut y[0]))
    } else {
        let (x, y) = v.split_at_mut(a);
        Some((&mut y[0], &mut x[b]))
    }
}

/// Runs a scenario to completion and returns its report.
pub fn run(scenario: &Scenario, options: &Options) -> Result<Report, SimError> {
    let mut world = World::new(scenario, options)?;
    let bar = progress_bar(options.progress, scenario);
    let end_ms = scenario.duration_ms + scenario.drain_ms_max;
    let mut events: u64 = 0;
    while let Some((at, ev)) = world.q.pop() {
        if at > end_ms || world.finished {
            break;
        }
        world.clock.set(EPOCH_MS + at);
        events += 1;
        // Facts the checker hears from here on belong to this step.
        world.checker.at_step(events, at);
        world.handle(ev)?;
        world.settle()?;
        world.check_stores();
        if world.inbox_len >= INBOX_FLUSH_AT {
            world.flush_inboxes();
        }
        if events.is_multiple_of(8192) {
            bar.set_position(at.min(scenario.duration_ms));
        }
    }
    bar.finish_and_clear();
    Ok(world.report())
}

fn progress_bar(enabled: bool, sc: &Scenario) -> indicatif::ProgressBar {
    use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
    if !enabled {
        return ProgressBar::hidden();
    }
    // stderr() draws nothing when stderr is not a terminal.
    let bar = ProgressBar::with_draw_target(Some(sc.duration_ms), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(
        "{spinner} simulated {pos}/{len} ms [{bar:40}] {elapsed_precise} (then drain)",
    ) {
        bar.set_style(style);
    }
    bar
}

impl<'s> World<'s> {
    fn new(sc: &'s Scenario, options: &Options) -> Result<Self, SimError> {
        let seed = options.seed;
        let n = sc.relays.count as usize;
        let clock = Arc::new(ManualClock::new(EPOCH_MS));
        let mut topo_rng = SimRng::fork(seed, "topology");
        let peers = peering(sc, n, &mut topo_rng);
        let mut relays = Vec::with_capacity(n);
        let mut relay_ix = BTreeMap::new();
        for (i, peers) in peers.into_iter().enumerate() {
            let name =
                RelayName::parse(&format!("r{i}.sim")).map_err(|e| setup_err("relay name", e))?;
            relay_ix.insert(name.clone(), i);
            let mut known: BTreeSet<usize> = peers.iter().copied().collect();
            known.insert(i);
            relays.push(RelaySlot {
                name,
                store: Arc::new(SimStore::new()),
                live: None,
                incarnation: 0,
                peers,
                known,
                summary: RelaySummary::default(),
                outbox_samples: Vec::new(),
            });
        }
        let total_ms = sc.duration_ms + sc.drain_ms_max;
        let bucket_ms = (sc.duration_ms.max(1000) / SERIES_POINTS).max(100);
        // drain_once splits a take by bytes itself.
        let batch_max = BATCH_ENVELOPES_MAX as u32;
        let _ = total_ms;
        let mut world = World {
            sc,
            seed,
            q: EventQueue::new(),
            clock,
            relays,
            relay_ix,
            users: Vec::new(),
            groups: Vec::new(),
            devices: Vec::new(),
            checker: Checker::new(),
            latencies: Vec::new(),
            net_rng: SimRng::fork(seed, "network"),
            work_rng: SimRng::fork(seed, "workload"),
            crypto_rng: SimRng::fork(seed, "crypto"),
            fed_stats: NetStats::default(),
            client_stats: NetStats::default(),
            exec: Executor::default(),
            partitions: Partitions::connected(n),
            marks: Vec::new(),
            owed: 0,
            delivered: 0,
            messages: 0,
            next_send_ms: 0.0,
            draining_phase: false,
            finished: false,
            drained: false,
            bucket_ms,
            batch_max,
            sabotage: options.sabotage,
            replaying: BTreeSet::new(),
            forging: BTreeMap::new(),
            failure_notices: 0,
            rejected_sends: 0,
            inbox_len: 0,
        };
        for i in 0..n {
            world.start_relay(i);
        }
        world.populate()?;
        world.schedule_start();
        Ok(world)
    }

    fn start_relay(&mut self, i: usize) {
        let slot = &mut self.relays[i];
        let notifier = Arc::new(SimNotifier::default());
        let rng = SimRng::fork(self.seed, &format!("relay-{i}-{}", slot.incarnation));
        let store: Arc<dyn Store> = slot.store.clone();
        let mut config = Config::new(slot.name.clone());
        if let Some(depth) = self.sc.relays.mailbox_depth_max {
            config.mailbox_depth_max = depth;
            config.mailbox_per_source_max = (depth / 4).max(1);
        }
        let relay = Relay::new(config, store, self.clock.clone(), Box::new(rng))
            .with_notifier(notifier.clone());
        slot.live = Some(Live {
            relay: Arc::new(relay),
            fed: SimFederation::new(),
            notifier,
            sched: DrainScheduler::new(
                DrainSchedule {
                    batch_max: self.batch_max,
                    ..DrainSchedule::default()
                },
                EPOCH_MS + self.q.now_ms(),
            ),
            finished: Arc::new(Mutex::new(Vec::new())),
            timer_at: None,
        });
        self.drive_drain(i);
        self.q.after(0, Ev::HelloTick { relay: i });
    }

    fn crash_relay(&mut self, i: usize) {
        let slot = &mut self.relays[i];
        if let Some(live) = slot.live.take() {
            live.fed.abandon_all();
        }
        self.exec.kill_owner(i);
        slot.incarnation += 1;
        slot.summary.crashes += 1;
    }

    /// Registers every user and device with the real relay API and forms
    /// contacts and groups.
    fn populate(&mut self) -> Result<(), SimError> {
        let sc = self.sc;
        let mut rng = SimRng::fork(self.seed, "population");
        let per_relay = sc.users.per_relay;
        let total_users = sc.user_count() as u32;
        for r in 0..self.relays.len() {
            let Some(live) = &self.relays[r].live else {
                continue;
            };
            let relay = live.relay.clone();
            for local in 0..per_relay {
                let user_ix = self.users.len() as u32;
                let username =
                    Username::parse(&format!("u{local}")).map_err(|e| setup_err("username", e))?;
                let address = Address::new(username.clone(), self.relays[r].name.clone());
                let count = rng.range_inclusive(
                    u64::from(sc.users.devices_min),
                    u64::from(sc.users.devices_max),
                ) as u32;
                let mut devices = Vec::with_capacity(count as usize);
                let mut list: Vec<DeviceListEntry> = Vec::new();
                for k in 1..=count {
                    let crypto = DeviceCrypto::generate(&mut self.crypto_rng, EPOCH_MS);
                    let keys = wire::device_keys(crypto.identity());
                    let id = DeviceId(k);
                    list.push(DeviceListEntry {
                        device: id,
                        identity_key: keys.identity_key.clone(),
                    });
                    let device_list = DeviceList {
                        address: address.clone(),
                        version: u64::from(k),
                        devices: list.clone(),
                    };
                    if k == 1 {
                        let signed = wire::sign_list(crypto.identity(), device_list, id);
                        run_now(relay.register(RegisterRequest {
                            username: username.clone(),
                            invite: None,
                            device: keys,
                            device_list: signed,
                        }))?
                        .map_err(|e| setup_err("register", e))?;
                    } else {
                        let approver_ix = devices[0];
                        let approver: &Device = &self.devices[approver_ix as usize];
                        let link = run_now(relay.open_link(LinkRequest {
                            username: username.clone(),
                            device: keys,
                        }))?
                        .map_err(|e| setup_err("link", e))?;
                        let signed =
                            wire::sign_list(approver.crypto.identity(), device_list, DeviceId(1));
                        run_now(relay.approve_link(
                            &approver.authed,
                            &link.code,
                            ApproveLinkRequest {
                                device_list: signed,
                            },
                        ))?
                        .map_err(|e| setup_err("approve link", e))?;
                    }
                    let ix = self.devices.len() as DeviceIx;
                    devices.push(ix);
                    self.devices.push(Device {
                        user: user_ix,
                        relay: r,
                        id,
                        authed: AuthedDevice {
                            user: username.clone(),
                            device: id,
                            session: "sim".to_string(),
                            prekeys_low: None,
                        },
                        crypto,
                        online: true,
                        queue: VecDeque::new(),
                        in_flight: None,
                        sender_seq: 0,
                        cursor: 0,
                        unacked: BTreeSet::new(),
                        fetch_in_flight: false,
                        fetch_again: false,
                        fetch_id: 0,
                        poll_gen: 0,
                        inbox: Vec::new(),
                        buffered: Vec::new(),
                    });
                }
                self.users.push(User {
                    relay: r,
                    local,
                    devices,
                    contacts: Vec::new(),
                    groups: Vec::new(),
                });
            }
        }
        // Contacts: distinct other users, uniformly.
        let contacts = sc
            .users
            .contacts_per_user
            .min(total_users.saturating_sub(1));
        for u in 0..total_users {
            let mut set = BTreeSet::new();
            while (set.len() as u32) < contacts {
                let c = rng.below(u64::from(total_users)) as u32;
                if c != u {
                    set.insert(c);
                }
            }
            let mut list: Vec<u32> = set.into_iter().collect();
            rng.shuffle(&mut list);
            self.users[u as usize].contacts = list;
        }
        for g in 0..sc.groups.count {
            let size = rng
                .range_inclusive(u64::from(sc.groups.size_min), u64::from(sc.groups.size_max))
                as u32;
            let mut members = BTreeSet::new();
            while (members.len() as u32) < size {
                members.insert(rng.below(u64::from(total_users)) as u32);
            }
            let members: Vec<u32> = members.into_iter().collect();
            for &m in &members {
                self.users[m as usize].groups.push(g);
            }
            self.groups.push(members);
        }
        Ok(())
    }

    fn schedule_start(&mut self) {
        self.schedule_next_send();
        for (i, f) in self.sc.faults.iter().enumerate() {
            self.q.at(f.at_ms, Ev::Fault(i));
        }
        self.q.at(self.sc.duration_ms, Ev::RepairAll);
        self.q.at(0, Ev::Sample);
        if self.sabotage.is_some() {
            self.q.at(0, Ev::Sabotage);
        }
        let poll = self.sc.clients.poll_interval_ms;
        for d in 0..self.devices.len() {
            let offset = self.work_rng.below(poll);
            self.q.at(
                offset,
                Ev::Poll {
                    device: d as DeviceIx,
                    generation: 0,
                },
            );
        }
    }

    fn schedule_next_send(&mut self) {
        let w = &self.sc.workload;
        if w.rate_per_sec <= 0.0 {
            return;
        }
        if w.messages_max.is_some_and(|m| self.messages >= m) {
            return;
        }
        self.next_send_ms += self.work_rng.exponential(1000.0 / w.rate_per_sec);
        let at = self.next_send_ms.round() as u64;
        if at < self.sc.send_until_ms() {
            self.q.at(at, Ev::Workload);
        }
    }

    fn now(&self) -> u64 {
        self.q.now_ms()
    }

    fn handle(&mut self, ev: Ev) -> Result<(), SimError> {
        match ev {
            Ev::Workload => self.workload()?,
            Ev::SendArrive {
                device,
                message,
                outgoing,
            } => self.send_arrive(device, message, *outgoing)?,
            Ev::SendReply {
                device,
                message,
                ok,
                transient,
            } => self.send_reply(device, message, ok, transient)?,
            Ev::SendTimeout {
                device,
                message,
                attempt,
            } => {
                let d = &self.devices[device as usize];
                let current = d
                    .in_flight
                    .as_ref()
                    .is_some_and(|f| f.message == message && f.attempt == attempt);
                if current && d.online {
                    self.transmit_send(device);
                }
            }
            Ev::PushArrive { device } => self.kick_fetch(device),
            Ev::FetchArrive {
                device,
                fetch_id,
                after,
            } => self.fetch_arrive(device, fetch_id, after)?,
            Ev::FetchReply {
                device,
                fetch_id,
                envelopes,
                more,
            } => self.fetch_reply(device, fetch_id, envelopes, more),
            Ev::FetchTimeout { device, fetch_id } => {
                let d = &mut self.devices[device as usize];
                if d.fetch_in_flight && d.fetch_id == fetch_id {
                    d.fetch_in_flight = false;
                    self.kick_fetch(device);
                }
            }
            Ev::AckArrive { device, seqs } => self.ack_arrive(device, seqs)?,
            Ev::AckReply { device, seqs } => {
                let d = &mut self.devices[device as usize];
                for s in seqs {
                    d.unacked.remove(&s);
                }
            }
            Ev::Poll { device, generation } => {
                let d = &self.devices[device as usize];
                if d.online && d.poll_gen == generation {
                    self.kick_fetch(device);
                    self.send_ack(device);
                    self.q.after(
                        self.sc.clients.poll_interval_ms,
                        Ev::Poll { device, generation },
                    );
                }
            }
            Ev::BatchArrive {
                from,
                from_incarnation,
                to,
                call,
                batch,
            } => self.batch_arrive(from, from_incarnation, to, call, *batch)?,
            Ev::AcksArrive {
                to,
                incarnation,
                call,
                acks,
            } => {
                let slot = &self.relays[to];
                if slot.incarnation == incarnation
                    && let Some(live) = &slot.live
                {
                    live.fed.answer(call, Ok(DeliveryAcks { acks }));
                }
            }
            Ev::CallTimeout {
                relay,
                incarnation,
                call,
            } => {
                let slot = &self.relays[relay];
                if slot.incarnation == incarnation
                    && let Some(live) = &slot.live
                {
                    live.fed.answer(
                        call,
                        Err(FederationError::Unreachable {
                            relay: slot.name.clone(),
                            reason: "timed out".into(),
                        }),
                    );
                }
            }
            Ev::Hello { to, known } => self.hello(to, known),
            Ev::HelloTick { relay } => {
                if self.relays[relay].live.is_some() {
                    self.send_hellos(relay);
                    if self.relays[relay].known.len() < self.relays.len() {
                        self.q.after(HELLO_INTERVAL_MS, Ev::HelloTick { relay });
                    }
                }
            }
            Ev::DrainTick { relay, incarnation } => self.drain_tick(relay, incarnation)?,
            Ev::Sample => self.sample()?,
            Ev::Fault(i) => self.fault(i)?,
            Ev::ForgedArrive { from, to, batch } => {
                adversary::forged_arrive(self, from, to, *batch)?;
            }
            Ev::RepairAll => self.repair_all(),
            Ev::Sabotage => {
                if let Some(Sabotage::LoseOutboxEntry { relay }) = self.sabotage
                    && let Some(slot) = self.relays.get(relay as usize)
                {
                    slot.store.lose_next_outbox_entry();
                }
            }
        }
        Ok(())
    }

    // --- workload and sending ---

    fn workload(&mut self) -> Result<(), SimError> {
        self.messages += 1;
        self.schedule_next_send();
        let users = self.users.len() as u64;
        let u = self.work_rng.below(users) as usize;
        let user = &self.users[u];
        let sender = user.devices[self.work_rng.index(user.devices.len())];
        let group =
            !user.groups.is_empty() && self.work_rng.chance(self.sc.workload.group_fraction);
        let (conversation, recipients) = if group {
            let g = user.groups[self.work_rng.index(user.groups.len())];
            let recipients: Vec<DeviceIx> = self.groups[g as usize]
                .iter()
                .flat_map(|&m| self.users[m as usize].devices.iter().copied())
                .filter(|&d| d != sender)
                .collect();
            (Conversation::Group(g), recipients)
        } else {
            let Some(&c) = user
                .contacts
                .get(self.work_rng.index(user.contacts.len().max(1)))
            else {
                return Ok(());
            };
            (
                Conversation::Direct(c),
                self.users[c as usize].devices.clone(),
            )
        };
        if recipients.is_empty() {
            return Ok(());
        }
        self.queue_message(sender, conversation, recipients)
    }

    /// Records a new message of `sender` with a fresh plaintext and queues
    /// it on that device.
    fn queue_message(
        &mut self,
        sender: DeviceIx,
        conversation: Conversation,
        recipients: Vec<DeviceIx>,
    ) -> Result<(), SimError> {
        let w = &self.sc.workload;
        let size = self
            .work_rng
            .range_inclusive(u64::from(w.body_bytes_min), u64::from(w.body_bytes_max))
            as usize;
        let index = self.checker.message_count();
        let mut plaintext = Vec::with_capacity(size);
        plaintext.extend_from_slice(PLAINTEXT_MARKER);
        plaintext.extend_from_slice(format!("{index}:").as_bytes());
        while plaintext.len() < size {
            plaintext.push(b'a' + self.work_rng.below(26) as u8);
        }
        let dev = &mut self.devices[sender as usize];
        let seq = dev.sender_seq;
        dev.sender_seq += 1;
        let now = self.q.now_ms();
        let message = self.checker.record_send(
            sender,
            conversation,
            recipients.clone(),
            seq,
            now,
            &plaintext,
        );
        self.devices[sender as usize].queue.push_back(Queued {
            message,
            conversation,
            recipients,
            plaintext,
        });
        self.kick_send(sender)
    }

    fn kick_send(&mut self, device: DeviceIx) -> Result<(), SimError> {
        let d = &mut self.devices[device as usize];
        if !d.online || d.in_flight.is_some() {
            return Ok(());
        }
        let Some(next) = d.queue.pop_front() else {
            return Ok(());
        };
        for &r in &next.recipients {
            if !self.devices[device as usize].crypto.has_session(r)
                && let Some((a, b)) = two_mut(&mut self.devices, device as usize, r as usize)
            {
                establish(
                    device,
                    &mut a.crypto,
                    r,
                    &mut b.crypto,
                    &mut self.crypto_rng,
                )?;
            }
        }
        let d = &mut self.devices[device as usize];
        let (body, headers) = match next.conversation {
            Conversation::Direct(_) => d.crypto.encrypt_direct(
                device,
                &next.recipients,
                &next.plaintext,
                &mut self.crypto_rng,
            )?,
            Conversation::Group(g) => d.crypto.encrypt_group(
                device,
                g,
                &next.recipients,
                &next.plaintext,
                &mut self.crypto_rng,
            )?,
        };
        let mut random = [0u8; 10];
        random[..8].copy_from_slice(&(next.message as u64).to_be_bytes());
        self.crypto_rng.fill(&mut random[8..]);
        let id = EnvelopeId::new(EPOCH_MS + self.q.now_ms(), random);
        let recipients = next
            .recipients
            .iter()
            .zip(headers)
            .map(|(&r, header)| {
                let rd = &self.devices[r as usize];
                RecipientEntry {
                    to: Address::new(rd.authed.user.clone(), self.relays[rd.relay].name.clone()),
                    device: rd.id,
                    header: header.into(),
                }
            })
            .collect();
        let outgoing = OutgoingMessage {
            id,
            body: body.into(),
            recipients,
            ttl_secs: self.sc.workload.ttl_secs,
        };
        self.devices[device as usize].in_flight = Some(InFlight {
            message: next.message,
            outgoing,
            attempt: 0,
        });
        self.transmit_send(device);
        Ok(())
    }

    fn transmit_send(&mut self, device: DeviceIx) {
        let retry = self.sc.clients.retry_ms;
        let d = &mut self.devices[device as usize];
        let Some(f) = d.in_flight.as_mut() else {
            return;
        };
        f.attempt += 1;
        let (message, attempt) = (f.message, f.attempt);
        let outgoing = f.outgoing.clone();
        let fate = transmit(
            &self.sc.client_link,
            &mut self.net_rng,
            &mut self.client_stats,
        );
        for delay in fate.iter() {
            self.q.after(
                delay,
                Ev::SendArrive {
                    device,
                    message,
                    outgoing: Box::new(outgoing.clone()),
                },
            );
        }
        self.q.after(
            retry,
            Ev::SendTimeout {
                device,
                message,
                attempt,
            },
        );
    }

    fn send_arrive(
        &mut self,
        device: DeviceIx,
        message: usize,
        outgoing: OutgoingMessage,
    ) -> Result<(), SimError> {
        let r = self.devices[device as usize].relay;
        let Some(live) = &self.relays[r].live else {
            return Ok(());
        };
        let relay = live.relay.clone();
        let result =
            run_now(relay.accept_message(&self.devices[device as usize].authed, outgoing))?;
        let (ok, transient) = match result {
            Ok(accepted) => {
                if !accepted.duplicate {
                    self.checker.record_accept(message, self.now());
                    if let Some(m) = self.checker.message(message) {
                        self.owed += m.recipients.len() as u64;
                    }
                    self.relays[r].summary.accepted += 1;
                }
                (true, false)
            }
            Err(e) => {
                *self.relays[r]
                    .summary
                    .sends_refused
                    .entry(e.code().as_str().to_string())
                    .or_default() += 1;
                (false, is_transient(&e))
            }
        };
        self.process_notices(r);
        let fate = transmit(
            &self.sc.client_link,
            &mut self.net_rng,
            &mut self.client_stats,
        );
        for delay in fate.iter() {
            self.q.after(
                delay,
                Ev::SendReply {
                    device,
                    message,
                    ok,
                    transient,
                },
            );
        }
        Ok(())
    }

    fn send_reply(
        &mut self,
        device: DeviceIx,
        message: usize,
        ok: bool,
        transient: bool,
    ) -> Result<(), SimError> {
        let d = &mut self.devices[device as usize];
        if !d.online || d.in_flight.as_ref().is_none_or(|f| f.message != message) {
            return Ok(());
        }
        if ok || !transient {
            if !ok {
                self.rejected_sends += 1;
            }
            d.in_flight = None;
            return self.kick_send(device);
        }
        // Transient refusal: the retry timer resends.
        Ok(())
    }

    // --- receiving ---

    fn kick_fetch(&mut self, device: DeviceIx) {
        let d = &mut self.devices[device as usize];
        if !d.online {
            return;
        }
        if d.fetch_in_flight {
            d.fetch_again = true;
            return;
        }
        d.fetch_in_flight = true;
        d.fetch_again = false;
        d.fetch_id += 1;
        let (fetch_id, after) = (d.fetch_id, d.cursor);
        let fate = transmit(
            &self.sc.client_link,
            &mut self.net_rng,
            &mut self.client_stats,
        );
        for delay in fate.iter() {
            self.q.after(
                delay,
                Ev::FetchArrive {
                    device,
                    fetch_id,
                    after,
                },
            );
        }
        self.q.after(
            self.sc.clients.retry_ms,
            Ev::FetchTimeout { device, fetch_id },
        );
    }

    fn fetch_arrive(
        &mut self,
        device: DeviceIx,
        fetch_id: u64,
        after: u64,
    ) -> Result<(), SimError> {
        let r = self.devices[device as usize].relay;
        let Some(live) = &self.relays[r].live else {
            return Ok(());
        };
        let relay = live.relay.clone();
        let limit = (FETCH_LIMIT_MAX as u32).min(100);
        let Ok(response) =
            run_now(relay.fetch(&self.devices[device as usize].authed, after, limit))?
        else {
            return Ok(());
        };
        let fate = transmit(
            &self.sc.client_link,
            &mut self.net_rng,
            &mut self.client_stats,
        );
        for delay in fate.iter() {
            self.q.after(
                delay,
                Ev::FetchReply {
                    device,
                    fetch_id,
                    envelopes: response.envelopes.clone(),
                    more: response.more,
                },
            );
        }
        Ok(())
    }

    fn fetch_reply(
        &mut self,
        device: DeviceIx,
        fetch_id: u64,
        envelopes: Vec<Envelope>,
        more: bool,
    ) {
        if !self.devices[device as usize].online {
            return;
        }
        for envelope in envelopes {
            let d = &mut self.devices[device as usize];
            if envelope.seq <= d.cursor {
                self.checker.note_refetch();
                continue;
            }
            d.cursor = envelope.seq;
            d.unacked.insert(envelope.seq);
            self.process_envelope(device, envelope);
        }
        let d = &mut self.devices[device as usize];
        if d.fetch_id == fetch_id && d.fetch_in_flight {
            d.fetch_in_flight = false;
            if more || d.fetch_again {
                self.kick_fetch(device);
            }
        }
        self.send_ack(device);
    }

    fn process_envelope(&mut self, device: DeviceIx, envelope: Envelope) {
        if envelope.kind == EnvelopeKind::DeliveryFailure {
            self.failure_notices += 1;
            return;
        }
        let mut ix = [0u8; 8];
        ix.copy_from_slice(&envelope.id.as_bytes()[6..14]);
        let message = u64::from_be_bytes(ix) as usize;
        let Some(record) = self.checker.message(message) else {
            self.checker.note_unknown_receipt();
            return;
        };
        let sender_relay = self.devices[record.sender as usize].relay;
        let accepted = record.accepted_ms.is_some();
        let order_promised = sender_relay == self.devices[device as usize].relay;
        let arrival = Arrival {
            message,
            device,
            entry: envelope.seq,
            at_ms: self.q.now_ms(),
            order_promised,
        };
        if let Some(latency) = self.checker.record_arrival(arrival) {
            self.latencies.push(latency);
            if accepted {
                self.delivered += 1;
            }
        }
        // Decryption only feeds the checker, so it is batched and run on
        // both cores (see `flush_inboxes`); each device still decrypts its
        // copies in arrival order.
        self.devices[device as usize].inbox.push(Inbound {
            message,
            entry: envelope.seq,
            header: envelope.header.into_vec(),
            body: envelope.body.into_vec(),
        });
        self.inbox_len += 1;
    }

    /// Decrypts every device's received copies, on two threads (devices
    /// split in halves; each device's copies in order), and records the
    /// results in device order — the same results whatever the threads'
    /// timing.
    fn flush_inboxes(&mut self) {
        if self.inbox_len == 0 {
            return;
        }
        self.inbox_len = 0;
        let n = self.devices.len() as u32;
        let mid = self.devices.len() / 2;
        let (left, right) = self.devices.split_at_mut(mid);
        let (a, b) = std::thread::scope(|s| {
            let handle = s.spawn(move || open_inboxes(right, mid as u32, n));
            let a = open_inboxes(left, 0, n);
            (a, handle.join())
        });
        // A panic while decrypting is a bug in the crypto code; that half's
        // copies then stay undecrypted and `decrypts_to_sent` reports them.
        let b = b.unwrap_or_default();
        for (message, device, entry, opened) in a.into_iter().chain(b) {
            self.checker.record_opened(message, device, entry, opened);
        }
    }

    fn send_ack(&mut self, device: DeviceIx) {
        let d = &self.devices[device as usize];
        if !d.online || d.unacked.is_empty() {
            return;
        }
        let seqs: Vec<u64> = d.unacked.iter().copied().take(FETCH_LIMIT_MAX).collect();
        let fate = transmit(
            &self.sc.client_link,
            &mut self.net_rng,
            &mut self.client_stats,
        );
        for delay in fate.iter() {
            self.q.after(
                delay,
                Ev::AckArrive {
                    device,
                    seqs: seqs.clone(),
                },
            );
        }
    }

    fn ack_arrive(&mut self, device: DeviceIx, seqs: Vec<u64>) -> Result<(), SimError> {
        let r = self.devices[device as usize].relay;
        let Some(live) = &self.relays[r].live else {
            return Ok(());
        };
        let relay = live.relay.clone();
        if run_now(relay.ack(&self.devices[device as usize].authed, &seqs))?.is_ok() {
            let fate = transmit(
                &self.sc.client_link,
                &mut self.net_rng,
                &mut self.client_stats,
            );
            for delay in fate.iter() {
                self.q.after(
                    delay,
                    Ev::AckReply {
                        device,
                        seqs: seqs.clone(),
                    },
                );
            }
        }
        Ok(())
    }

    // --- relays and federation ---

    fn device_of(&self, relay: usize, user: &Username, device: DeviceId) -> Option<DeviceIx> {
        let local: u32 = user.as_str().strip_prefix('u')?.parse().ok()?;
        let u = relay * self.sc.users.per_relay as usize + local as usize;
        let user = self.users.get(u)?;
        user.devices
            .get((device.0 as usize).checked_sub(1)?)
            .copied()
    }

    fn process_notices(&mut self, r: usize) {
        let Some(live) = &self.relays[r].live else {
            return;
        };
        let notices = live.notifier.take();
        for notice in notices {
            match notice {
                Notice::Mailbox(user, device) => {
                    let Some(d) = self.device_of(r, &user, device) else {
                        continue;
                    };
                    if self.devices[d as usize].online {
                        let fate = transmit(
                            &self.sc.client_link,
                            &mut self.net_rng,
                            &mut self.client_stats,
                        );
                        if let Some(delay) = fate.iter().next() {
                            self.q.after(delay, Ev::PushArrive { device: d });
                        }
                    }
                }
                Notice::Outbox(dest) => {
                    if let Some(live) = &mut self.relays[r].live {
                        live.sched.woken([&dest]);
                    }
                }
            }
        }
        self.drive_drain(r);
    }

    /// Does what relay `r`'s drain schedule asks now (budget sync, expiry,
    /// looks at the outbox and the workers they call for), then sets its
    /// timer for when it asks next.
    fn drive_drain(&mut self, r: usize) {
        let incarnation = self.relays[r].incarnation;
        let Some(live) = &mut self.relays[r].live else {
            return;
        };
        let relay = live.relay.clone();
        let now = relay.now_ms();
        let mut starts = Vec::new();
        let mut expired = false;
        while let Some(action) = live.sched.poll_action(now) {
            let Ok(done) = run_now(perform(&relay, &mut live.sched, action, now)) else {
                break;
            };
            expired |= done.expired > 0;
            starts.extend(done.start);
        }
        let at = live.sched.poll_timeout(now).saturating_sub(EPOCH_MS);
        let at = at.max(self.q.now_ms());
        if live.timer_at.is_none_or(|t| at < t || t < self.q.now_ms()) {
            live.timer_at = Some(at);
            self.q.after(
                at - self.q.now_ms(),
                Ev::DrainTick {
                    relay: r,
                    incarnation,
                },
            );
        }
        for dest in starts {
            self.start_worker(r, dest);
        }
        if expired {
            self.process_notices(r);
        }
    }

    /// One delivery worker of relay `r` for `dest`: rounds of the real
    /// `drain_once` while they come back full and answered, as the node's.
    fn start_worker(&mut self, r: usize, dest: RelayName) {
        let Some(live) = &self.relays[r].live else {
            return;
        };
        let relay = live.relay.clone();
        let fed = live.fed.clone();
        let finished = live.finished.clone();
        let batch_max = self.batch_max;
        self.exec.spawn(r, async move {
            let _ = drain_worker(&relay, &fed, &dest, batch_max).await;
            finished
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(dest);
        });
    }

    /// Polls drain tasks and carries the federation calls they issue, until
    /// nothing moves.
    fn settle(&mut self) -> Result<(), SimError> {
        loop {
            let owners = self.exec.run();
            if owners.is_empty() {
                return Ok(());
            }
            for r in owners {
                let Some(live) = &self.relays[r].live else {
                    continue;
                };
                let calls = live.fed.take_outgoing();
                let ended: Vec<RelayName> =
                    std::mem::take(&mut *live.finished.lock().unwrap_or_else(|p| p.into_inner()));
                for call in calls {
                    self.carry_call(r, call);
                }
                if let Some(live) = &mut self.relays[r].live {
                    for dest in &ended {
                        live.sched.worker_finished(Some(dest));
                    }
                }
                self.process_notices(r);
            }
        }
    }

    fn carry_call(&mut self, r: usize, call: exec::OutgoingCall) {
        let incarnation = self.relays[r].incarnation;
        let Some(&to) = self.relay_ix.get(&call.dest) else {
            return;
        };
        let Some(live) = &self.relays[r].live else {
            return;
        };
        if !self.relays[r].known.contains(&to) {
            live.fed.answer(
                call.id,
                Err(FederationError::UnknownRelay(call.dest.clone())),
            );
            return;
        }
        if self.relays[r].live.is_some() {
            self.relays[r].summary.batches_out += 1;
        }
        self.q.after(
            FEDERATION_TIMEOUT_MS,
            Ev::CallTimeout {
                relay: r,
                incarnation,
                call: call.id,
            },
        );
        if !self.partitions.reachable(r, to) {
            self.fed_stats.sent += 1;
            self.fed_stats.partitioned += 1;
            return;
        }
        let fate = transmit(
            self.sc.federation_link_between(r as u32, to as u32),
            &mut self.net_rng,
            &mut self.fed_stats,
        );
        let batch = Box::new(call.batch);
        for delay in fate.iter() {
            self.q.after(
                delay,
                Ev::BatchArrive {
                    from: r,
                    from_incarnation: incarnation,
                    to,
                    call: call.id,
                    batch: batch.clone(),
                },
            );
        }
        adversary::after_send(self, r, incarnation, to, call.id, &batch);
    }

    fn batch_arrive(
        &mut self,
        from: usize,
        from_incarnation: u32,
        to: usize,
        call: CallId,
        batch: DeliveryBatch,
    ) -> Result<(), SimError> {
        let Some(live) = &self.relays[to].live else {
            return Ok(());
        };
        let relay = live.relay.clone();
        let peer = self.relays[from].name.clone();
        let acks = run_now(accept_batch(&relay, &peer, batch))?.acks;
        for a in &acks {
            match a.status {
                AckStatus::Accepted => self.relays[to].summary.federated_in += 1,
                AckStatus::Duplicate => self.relays[to].summary.federated_duplicates += 1,
                AckStatus::Rejected(_) => self.relays[to].summary.federated_refused += 1,
            }
        }
        self.process_notices(to);
        if !self.partitions.reachable(to, from) {
            self.fed_stats.sent += 1;
            self.fed_stats.partitioned += 1;
            return Ok(());
        }
        let fate = transmit(
            self.sc.federation_link_between(to as u32, from as u32),
            &mut self.net_rng,
            &mut self.fed_stats,
        );
        for delay in fate.iter() {
            self.q.after(
                delay,
                Ev::AcksArrive {
                    to: from,
                    incarnation: from_incarnation,
                    call,
                    acks: acks.clone(),
                },
            );
        }
        Ok(())
    }

    fn send_hellos(&mut self, r: usize) {
        let known: Vec<usize> = self.relays[r].known.iter().copied().collect();
        let peers = self.relays[r].peers.clone();
        for p in peers {
            if !self.partitions.reachable(r, p) {
                continue;
            }
            let fate = transmit(
                self.sc.federation_link_between(r as u32, p as u32),
                &mut self.net_rng,
                &mut self.fed_stats,
            );
            for delay in fate.iter() {
                self.q.after(
                    delay,
                    Ev::Hello {
                        to: p,
                        known: known.clone(),
                    },
                );
            }
        }
    }

    fn hello(&mut self, to: usize, known: Vec<usize>) {
        if self.relays[to].live.is_none() {
            return;
        }
        let before = self.relays[to].known.len();
        self.relays[to].known.extend(known);
        if self.relays[to].known.len() > before {
            // New descriptors are passed on at once, so knowledge floods
            // the peering graph in its diameter, not in hello intervals.
            self.send_hellos(to);
            // Entries for relays just learned were backing off on
            // `unknown_relay`: look again at once.
            let learned: Vec<RelayName> = self.relays[to]
                .known
                .iter()
                .map(|&k| self.relays[k].name.clone())
                .collect();
            if let Some(live) = &mut self.relays[to].live {
                live.sched.woken(learned.iter());
            }
            self.drive_drain(to);
        }
    }

    fn drain_tick(&mut self, r: usize, incarnation: u32) -> Result<(), SimError> {
        if self.relays[r].incarnation != incarnation {
            return Ok(());
        }
        let now_q = self.q.now_ms();
        let Some(live) = &mut self.relays[r].live else {
            return Ok(());
        };
        if live.timer_at.is_some_and(|t| t <= now_q) {
            live.timer_at = None;
        }
        let now = live.relay.now_ms();
        live.sched.timer_fired(now);
        self.drive_drain(r);
        Ok(())
    }

    // --- faults ---

    fn fault(&mut self, i: usize) -> Result<(), SimError> {
        let f = &self.sc.faults[i];
        self.marks.push(FaultMark {
            at_ms: f.at_ms,
            label: f.action.label(),
        });
        match &f.action {
            FaultAction::Partition { sets } => self.partitions.split(sets),
            FaultAction::Heal => self.heal(),
            FaultAction::Crash { relay } => self.crash_relay(*relay as usize),
            FaultAction::Restart { relay } => {
                if self.relays[*relay as usize].live.is_none() {
                    self.start_relay(*relay as usize);
                }
            }
            FaultAction::ClientOffline { relay, user } => {
                let u = *relay as usize * self.sc.users.per_relay as usize + *user as usize;
                for d in self.users[u].devices.clone() {
                    self.devices[d as usize].online = false;
                }
            }
            FaultAction::ClientOnline { relay, user } => {
                let u = *relay as usize * self.sc.users.per_relay as usize + *user as usize;
                for d in self.users[u].devices.clone() {
                    self.bring_online(d);
                }
            }
            FaultAction::ReplayBatches { relay } => {
                self.replaying.insert(*relay as usize);
            }
            FaultAction::ForgeOrigin { relay, claims } => {
                self.forging.insert(*relay as usize, *claims as usize);
            }
            FaultAction::Flood {
                relay,
                user,
                to_relay,
                to_user,
                count,
            } => {
                let per_relay = self.sc.users.per_relay as usize;
                let from = *relay as usize * per_relay + *user as usize;
                let to = *to_relay as usize * per_relay + *to_user as usize;
                adversary::flood(self, from, to, *count)?;
            }
        }
        Ok(())
    }

    fn heal(&mut self) {
        self.partitions.heal();
        for r in 0..self.relays.len() {
            if self.relays[r].live.is_some() {
                self.send_hellos(r);
            }
        }
    }

    fn bring_online(&mut self, device: DeviceIx) {
        let d = &mut self.devices[device as usize];
        if d.online {
            return;
        }
        d.online = true;
        d.fetch_in_flight = false;
        d.poll_gen += 1;
        let generation = d.poll_gen;
        if d.in_flight.is_some() {
            self.transmit_send(device);
        } else {
            // Queued sends wait for the device; kick_send starts them.
            let _ = self.kick_send(device);
        }
        self.kick_fetch(device);
        self.send_ack(device);
        self.q.after(
            self.sc.clients.poll_interval_ms,
            Ev::Poll { device, generation },
        );
    }

    /// The end of the faulty period: everything is repaired and the run
    /// drains, so "nothing lost once healed" can be judged.
    fn repair_all(&mut self) {
        self.draining_phase = true;
        self.marks.push(FaultMark {
            at_ms: self.q.now_ms(),
            label: "drain: repair all".into(),
        });
        self.heal();
        for r in 0..self.relays.len() {
            if self.relays[r].live.is_none() {
                self.start_relay(r);
            }
        }
        for d in 0..self.devices.len() {
            self.bring_online(d as DeviceIx);
        }
    }

    fn sample(&mut self) -> Result<(), SimError> {
        let mut total_outbox = 0;
        for slot in &mut self.relays {
            let destinations = run_now(slot.store.outbox_destinations())?.unwrap_or_default();
            let depth: u64 = destinations.iter().map(|d| d.pending).sum();
            total_outbox += depth;
            slot.outbox_samples.push(depth);
            slot.summary.outbox_depth_max = slot.summary.outbox_depth_max.max(depth);
        }
        if self.draining_phase {
            let quiet = total_outbox == 0
                && self.delivered >= self.owed
                && self
                    .devices
                    .iter()
                    .all(|d| d.queue.is_empty() && d.in_flight.is_none() && d.unacked.is_empty());
            if quiet {
                self.drained = true;
                self.finished = true;
                return Ok(());
            }
        }
        self.q.after(self.bucket_ms, Ev::Sample);
        Ok(())
    }

    // --- report ---

    /// The per-step part of `no_plaintext_at_rest`: a relay store that was
    /// written a plaintext during this step is reported at this step.
    fn check_stores(&mut self) {
        for (i, slot) in self.relays.iter().enumerate() {
            if slot.store.has_plaintext_sightings() {
                let found = slot.store.take_plaintext_sightings();
                self.checker.record_store_scan(i, &found);
            }
        }
    }

    fn report(mut self) -> Report {
        let end = self.q.now_ms();
        // Group messages still waiting for a sender key after this stay
        // undecrypted, which `decrypts_to_sent` reports.
        self.flush_inboxes();
        for (i, slot) in self.relays.iter().enumerate() {
            let found = slot.store.take_plaintext_sightings();
            self.checker.record_store_scan(i, &found);
        }
        let per_relay = self.sc.users.per_relay as usize;
        let devices = &self.devices;
        let users = &self.users;
        let describe = |d: DeviceIx| {
            devices.get(d as usize).map_or_else(
                || format!("device {d}"),
                |dev| {
                    let u = &users[dev.user as usize];
                    format!("u{}@r{}/d{}", u.local, u.relay, dev.id)
                },
            )
        };
        let _ = per_relay;
        let invariants = self.checker.verdicts(&describe);
        let latency = LatencySummary::from_samples(&mut self.latencies);
        let buckets = (end / self.bucket_ms + 1) as usize;
        let mut deliveries = vec![0u64; buckets];
        for t in self.checker.first_delivery_times() {
            if let Some(b) = deliveries.get_mut((t / self.bucket_ms) as usize) {
                *b += 1;
            }
        }
        let mut relays = Vec::with_capacity(self.relays.len());
        let mut outbox_depth = Vec::with_capacity(self.relays.len());
        for slot in &mut self.relays {
            slot.summary.name = slot.name.to_string();
            relays.push(slot.summary.clone());
            outbox_depth.push(std::mem::take(&mut slot.outbox_samples));
        }
        let mut delivery = self.checker.stats().clone();
        delivery.failure_notices = self.failure_notices;
        delivery.rejected_sends = self.rejected_sends;
        let mut faults = self.marks.clone();
        faults.sort_by_key(|m| m.at_ms);
        Report {
            schema_version: SCHEMA_VERSION,
            courier: Build::current(),
            mode: "deterministic".into(),
            scenario: self.sc.name.clone(),
            scenario_source: ScenarioSource::of(self.sc),
            seed: self.seed,
            sabotage: self.sabotage,
            population: Population {
                relays: self.sc.relays.count,
                users: self.users.len() as u64,
                devices: self.devices.len() as u64,
                groups: self.sc.groups.count,
            },
            simulated_ms: end,
            drained: self.drained,
            delivery,
            latency,
            federation_network: self.fed_stats,
            client_network: self.client_stats,
            relays,
            faults,
            invariants,
            series: Series {
                bucket_ms: self.bucket_ms,
                deliveries,
                outbox_depth,
            },
            loopback: None,
        }
    }
}

/// Decrypts the inboxes of `devices` (global indices from `first`), in
/// order, returning (message, device, entry, result) per copy.
fn open_inboxes(
    devices: &mut [Device],
    first: u32,
    device_count: u32,
) -> Vec<(usize, DeviceIx, u64, Opened)> {
    let mut out = Vec::new();
    for (k, d) in devices.iter_mut().enumerate() {
        let me = first + k as u32;
        for inbound in std::mem::take(&mut d.inbox) {
            let opened = d.crypto.open(&inbound.header, &inbound.body, |a| {
                (a.device < device_count).then_some(a.device)
            });
            match opened {
                Ok(OpenedMessage::Plaintext { plaintext, .. }) => {
                    out.push((
                        inbound.message,
                        me,
                        inbound.entry,
                        Opened::Plaintext(digest(&plaintext)),
                    ));
                    if !d.buffered.is_empty() {
                        retry_buffered(d, me, &mut out);
                    }
                }
                Ok(OpenedMessage::AwaitingKey { group, sender }) => d.buffered.push(Buffered {
                    message: inbound.message,
                    entry: inbound.entry,
                    group,
                    sender,
                    body: inbound.body,
                }),
                Err(_) => out.push((inbound.message, me, inbound.entry, Opened::Failed)),
            }
        }
    }
    out
}

/// Decrypts buffered group messages whose sender key has arrived.
fn retry_buffered(d: &mut Device, me: DeviceIx, out: &mut Vec<(usize, DeviceIx, u64, Opened)>) {
    for b in std::mem::take(&mut d.buffered) {
        if !d.crypto.has_sender_key(b.group, b.sender) {
            d.buffered.push(b);
            continue;
        }
        let opened = match d.crypto.open_group_body(b.group, b.sender, &b.body) {
            Ok(p) => Opened::Plaintext(digest(&p)),
            Err(_) => Opened::Failed,
        };
        out.push((b.message, me, b.entry, opened));
    }
}

/// Drains the outbox for `dest` with the relay's own driver loop
/// ([`courier_relay::federation::drain_once`]) over the simulated
/// federation, a few rounds at a time (the next drain tick continues).
fn is_transient(e: &RelayError) -> bool {
    courier_relay::federation::is_transient(e.code())
}

/// The initial peering graph.
fn peering(sc: &Scenario, n: usize, rng: &mut SimRng) -> Vec<Vec<usize>> {
    let mut edges: BTreeSet<(usize, usize)> = BTreeSet::new();
    let add = |a: usize, b: usize, edges: &mut BTreeSet<(usize, usize)>| {
        if a != b {
            edges.insert((a.min(b), a.max(b)));
        }
    };
    match sc.relays.topology {
        Topology::FullMesh => {
            for a in 0..n {
                for b in a + 1..n {
                    add(a, b, &mut edges);
                }
            }
        }
        Topology::Chain => {
            for a in 1..n {
                add(a - 1, a, &mut edges);
            }
        }
        Topology::Random => {
            let mut order: Vec<usize> = (0..n).collect();
            rng.shuffle(&mut order);
            for k in 1..n {
                let parent = order[rng.index(k)];
                add(order[k], parent, &mut edges);
            }
            for a in 0..n {
                for _ in 0..sc.relays.random_peers {
                    let b = rng.index(n);
                    add(a, b, &mut edges);
                }
            }
        }
    }
    let mut peers = vec![Vec::new(); n];
    for (a, b) in edges {
        peers[a].push(b);
        peers[b].push(a);
    }
    peers
}
