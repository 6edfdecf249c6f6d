//! `courier-load`: drives a running relay over real HTTP and WebSocket.
//!
//! `courier-load send` registers N clients, connects each to `/v1/ws`, sends
//! messages between random pairs at a target rate (each a `POST
//! /v1/messages`, or with `--via ws` a `send` frame on the sender's socket)
//! and reports throughput and send-to-receive latency percentiles. `courier-load idle` opens N
//! WebSockets and holds them, reporting the relay's memory per connection.
//!
//! Its clients are the SDK's `HttpTransport` with requests built by
//! `courier_client::wire`, not `Client`s: they send opaque bodies under
//! dummy headers, which a relay cannot tell from encrypted ones, so the
//! load measures the relay rather than the client's cryptography.
//!
//! Benchmarks should run the relay with rate limits off
//! (`COURIER_RATE_LIMIT_IP_PER_SECOND=0 COURIER_RATE_LIMIT_ACCOUNT_PER_SECOND=0`);
//! otherwise 429s are counted as send errors.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use courier_client::transport::Subscription;
use courier_client::{HttpTransport, Transport as _, TransportError, wire};
use courier_crypto::Identity;
use courier_protocol::api::{ChallengeRequest, RegisterRequest};
use courier_protocol::ws::{ClientFrame, ServerFrame};
use courier_protocol::{
    Address, Bytes, DeviceId, EnvelopeId, OutgoingMessage, RelayName, Username,
};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use tokio::sync::Mutex;

/// mimalloc instead of glibc's malloc: the load tool allocates and frees small
/// buffers (frames, JSON, envelopes) on every message from several threads,
/// where glibc's arenas showed up as the top symbols of the profile.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Load generator for a Courier relay.
#[derive(Debug, Parser)]
#[command(name = "courier-load", version, about)]
struct Cli {
    /// The relay's HTTP base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080", global = true)]
    url: String,
    /// The relay's name (the part after @).
    #[arg(long, default_value = "localhost", global = true)]
    name: String,
    /// Clients (accounts, one device and one WebSocket each).
    #[arg(long, default_value_t = 100, global = true)]
    clients: usize,
    /// Invite code file with one code per line, for relays with invite-only
    /// registration.
    #[arg(long, global = true)]
    invites: Option<std::path::PathBuf>,
    /// Print the report as one JSON object.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Send messages between random pairs at a target rate.
    Send {
        /// Target messages per second, over all clients.
        #[arg(long, default_value_t = 1000.0)]
        rate: f64,
        /// How long to send, in seconds.
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
        /// Concurrent HTTP senders.
        #[arg(long, default_value_t = 64)]
        senders: usize,
        /// Message body size in bytes (at least 8).
        #[arg(long, default_value_t = 256)]
        body_bytes: usize,
        /// How messages are sent: `http` (`POST /v1/messages` per message)
        /// or `ws` (a `send` frame on the sender's open WebSocket).
        #[arg(long, value_enum, default_value_t = Via::Http)]
        via: Via,
        /// With `--via ws`: most sends one client has unanswered; beyond
        /// that its sends wait (closed loop, like `--senders` over HTTP).
        #[arg(long, default_value_t = 32)]
        window: usize,
    },
    /// Open idle WebSockets and hold them.
    Idle {
        /// Seconds to hold the connections.
        #[arg(long, default_value_t = 10.0)]
        hold: f64,
        /// PID of the relay, to report its resident memory per connection.
        #[arg(long)]
        relay_pid: Option<u32>,
    },
}

/// One registered, logged-in client: its address and access token on the
/// SDK's HTTP transport (whose connection pool all clients share).
struct Device {
    transport: HttpTransport,
    address: Address,
    token: String,
}

impl Device {
    /// Registers `username` as device 1 with a fresh identity and logs in,
    /// with requests built by the SDK's wire module.
    async fn register(
        transport: HttpTransport,
        relay: &RelayName,
        username: &str,
        invite: Option<String>,
    ) -> anyhow::Result<Device> {
        let key = Identity::generate(&mut rand::make_rng::<rand::rngs::StdRng>());
        let user = Username::parse(username)?;
        let keys = wire::device_keys(&key);
        let request = RegisterRequest {
            username: user.clone(),
            invite,
            device: keys.clone(),
            device_list: wire::first_device_list(&key, Address::new(user, relay.clone()), &keys),
        };
        let registered = transport.register(&request).await?;
        let challenge = transport
            .challenge(&ChallengeRequest {
                username: registered.address.user.clone(),
                device: registered.device,
            })
            .await?;
        let answer = wire::login_answer(&key, &registered.address, registered.device, &challenge);
        let tokens = transport.login(&answer).await?;
        Ok(Device {
            transport,
            address: registered.address,
            token: tokens.access_token,
        })
    }

    /// Opens the push WebSocket.
    async fn connect(&self) -> Result<Box<dyn Subscription>, TransportError> {
        self.transport.subscribe(&self.token).await
    }
}

/// A message with a dummy 16-byte header per recipient device, kept for an
/// hour: the relay never opens either, so the load needs no encryption.
fn message(id: EnvelopeId, body: Vec<u8>, to: &[(Address, DeviceId)]) -> OutgoingMessage {
    let recipients = to
        .iter()
        .map(|(address, device)| (address.clone(), *device, Bytes(vec![0xaa; 16])));
    wire::outgoing(id, body, recipients, 3600)
}

/// One HTTP client for every device, so thousands of them share a pool of
/// connections to the relay.
fn shared_transport(url: &str) -> anyhow::Result<HttpTransport> {
    // reqwest built with courier-client's features has rustls without a
    // crypto provider; Err means one is installed already.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(64)
        .build()?;
    Ok(HttpTransport::with_client(url, http)?)
}

fn progress(len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template(&format!(
            "{what:>10} [{{elapsed_precise}}] {{wide_bar}} {{pos}}/{{len}} {{msg}}"
        ))
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

async fn register_all(cli: &Cli) -> anyhow::Result<Vec<Device>> {
    let relay = RelayName::parse(&cli.name).context("--name")?;
    let transport = shared_transport(&cli.url)?;
    let invites: Vec<String> = match &cli.invites {
        Some(path) => std::fs::read_to_string(path)?
            .lines()
            .map(str::to_owned)
            .collect(),
        None => Vec::new(),
    };
    let run = format!("{:08x}", rand::random::<u32>());
    let bar = progress(cli.clients as u64, "register");
    let bar_ref = &bar;
    let mut devices = Vec::with_capacity(cli.clients);
    // Bounded concurrency: registration is a signature check and a write.
    for chunk in (0..cli.clients).collect::<Vec<_>>().chunks(32) {
        let batch = chunk.iter().map(|&i| {
            let transport = transport.clone();
            let relay = relay.clone();
            let invite = invites.get(i).cloned();
            let name = format!("load-{run}-{i}");
            async move {
                let device = Device::register(transport, &relay, &name, invite).await?;
                bar_ref.inc(1);
                Ok::<_, anyhow::Error>(device)
            }
        });
        for result in futures::future::join_all(batch).await {
            devices.push(result.context("registering a client")?);
        }
    }
    bar.finish();
    Ok(devices)
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

async fn idle(cli: &Cli, hold: f64, relay_pid: Option<u32>) -> anyhow::Result<()> {
    let devices = register_all(cli).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = relay_pid.and_then(rss_kib);
    let bar = progress(devices.len() as u64, "connect");
    let mut sockets = Vec::with_capacity(devices.len());
    for chunk in devices.chunks(100) {
        let opened = futures::future::join_all(chunk.iter().map(Device::connect)).await;
        for socket in opened {
            sockets.push(socket.context("opening a WebSocket")?);
            bar.inc(1);
        }
    }
    bar.finish();
    tokio::time::sleep(Duration::from_secs_f64(hold)).await;
    let after = relay_pid.and_then(rss_kib);
    let per_connection = match (before, after) {
        (Some(b), Some(a)) => Some((a.saturating_sub(b) as f64 * 1024.0) / sockets.len() as f64),
        _ => None,
    };
    if cli.json {
        println!(
            "{}",
            serde_json::json!({
                "connections": sockets.len(),
                "relay_rss_before_kib": before,
                "relay_rss_after_kib": after,
                "bytes_per_connection": per_connection,
            })
        );
    } else {
        println!("connections:           {}", sockets.len());
        if let (Some(b), Some(a), Some(per)) = (before, after, per_connection) {
            println!("relay RSS before:      {b} KiB");
            println!("relay RSS after:       {a} KiB");
            println!(
                "per idle connection:   {:.0} bytes ({:.1} KiB)",
                per,
                per / 1024.0
            );
        }
    }
    for mut socket in sockets {
        socket.close().await;
    }
    Ok(())
}

/// The path a message takes into the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Via {
    /// One `POST /v1/messages` per message.
    Http,
    /// One `send` frame per message on the sender's WebSocket.
    Ws,
}

/// A message for a client's connection task to send: the message and when
/// the sender started it (for the send latency).
type Outgoing = (courier_protocol::OutgoingMessage, Instant);

struct Stats {
    latency_us: Mutex<Histogram<u64>>,
    send_us: Mutex<Histogram<u64>>,
    sent: AtomicU64,
    errors: AtomicU64,
    delivered: AtomicU64,
}

fn histogram() -> Histogram<u64> {
    // 1 µs to 60 s at 3 significant digits.
    Histogram::new_with_bounds(1, 60_000_000, 3)
        .unwrap_or_else(|_| Histogram::new(3).unwrap_or_else(|_| unreachable_histogram()))
}

fn unreachable_histogram() -> Histogram<u64> {
    // new(3) only fails for sigfig > 5; kept separate so no expect() is needed.
    Histogram::new(2).unwrap_or_else(|_| std::process::exit(2))
}

/// One client's WebSocket: records and acks every envelope pushed to it
/// and, with `--via ws`, sends what arrives on `outgoing` as `send` frames
/// and counts their answers.
async fn connection(
    mut socket: Box<dyn Subscription>,
    epoch: Instant,
    stats: Arc<Stats>,
    stop: Arc<tokio::sync::Notify>,
    mut outgoing: tokio::sync::mpsc::Receiver<Outgoing>,
    bar: ProgressBar,
    window: usize,
) {
    let mut seqs = Vec::new();
    let mut pending: std::collections::HashMap<u64, Instant> = Default::default();
    let mut next_request = 0u64;
    loop {
        let frame = tokio::select! {
            frame = socket.next() => frame,
            Some(first) = outgoing.recv(), if pending.len() < window => {
                // Everything already queued goes out with one write.
                let mut next = Some(first);
                let mut frames = Vec::new();
                while let Some((message, t0)) = next.take() {
                    next_request += 1;
                    pending.insert(next_request, t0);
                    frames.push(ClientFrame::Send { request: next_request, message });
                    if pending.len() < window {
                        next = outgoing.try_recv().ok();
                    }
                }
                if socket.send(&frames).await.is_err() {
                    break;
                }
                continue;
            }
            () = stop.notified() => break,
        };
        let Ok(Some(frame)) = frame else { break };
        let mut frames = vec![frame];
        // Drain whatever else is already here, then ack it all at once.
        while let Some(Ok(Some(more))) = futures::FutureExt::now_or_never(socket.next()) {
            frames.push(more);
        }
        let now_us = epoch.elapsed().as_micros() as u64;
        let mut latency = stats.latency_us.lock().await;
        for frame in frames {
            match frame {
                ServerFrame::Envelope { envelope } => {
                    let body = envelope.body.as_slice();
                    if body.len() >= 8 {
                        let mut t = [0u8; 8];
                        t.copy_from_slice(&body[..8]);
                        let sent_us = u64::from_be_bytes(t);
                        let _ = latency.record(now_us.saturating_sub(sent_us).max(1));
                    }
                    stats.delivered.fetch_add(1, Ordering::Relaxed);
                    seqs.push(envelope.seq);
                }
                ServerFrame::Sent { request, .. } => {
                    if let Some(t0) = pending.remove(&request) {
                        stats.sent.fetch_add(1, Ordering::Relaxed);
                        let _ = stats
                            .send_us
                            .lock()
                            .await
                            .record((t0.elapsed().as_micros() as u64).max(1));
                    }
                }
                ServerFrame::Refused { request, error } => {
                    pending.remove(&request);
                    if stats.errors.fetch_add(1, Ordering::Relaxed) < 5 {
                        bar.println(format!("send refused: {}", error.code));
                    }
                }
                ServerFrame::PrekeysLow { .. } | ServerFrame::Error { .. } => {}
            }
        }
        drop(latency);
        if !seqs.is_empty() && socket.ack(&std::mem::take(&mut seqs)).await.is_err() {
            break;
        }
    }
    socket.close().await;
}

async fn send_load(
    cli: &Cli,
    rate: f64,
    duration: f64,
    senders: usize,
    body_bytes: usize,
    via: Via,
    window: usize,
) -> anyhow::Result<()> {
    anyhow::ensure!(cli.clients >= 2, "--clients must be at least 2");
    anyhow::ensure!(rate > 0.0, "--rate must be positive");
    let devices = Arc::new(register_all(cli).await?);
    let epoch = Instant::now();
    let stats = Arc::new(Stats {
        latency_us: Mutex::new(histogram()),
        send_us: Mutex::new(histogram()),
        sent: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        delivered: AtomicU64::new(0),
    });
    let stop = Arc::new(tokio::sync::Notify::new());
    let total = (rate * duration).round() as u64;
    let bar = progress(total, "send");
    let mut receivers = Vec::new();
    let mut outboxes = Vec::new();
    for device in devices.iter() {
        let socket = device.connect().await.context("opening a WebSocket")?;
        let (tx, rx) = tokio::sync::mpsc::channel(1024);
        outboxes.push(tx);
        receivers.push(tokio::spawn(connection(
            socket,
            epoch,
            stats.clone(),
            stop.clone(),
            rx,
            bar.clone(),
            window.max(1),
        )));
    }
    let outboxes = Arc::new(outboxes);
    let senders = senders.clamp(1, total.max(1) as usize);
    let interval = Duration::from_secs_f64(senders as f64 / rate);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for k in 0..senders {
        let devices = devices.clone();
        let outboxes = outboxes.clone();
        let stats = stats.clone();
        let bar = bar.clone();
        let count = total / senders as u64 + u64::from((k as u64) < total % senders as u64);
        tasks.push(tokio::spawn(async move {
            let offset = interval.mul_f64(k as f64 / senders as f64);
            let mut next = started + offset;
            for n in 0..count {
                tokio::time::sleep_until(next.into()).await;
                next += interval;
                let from = rand::random_range(0..devices.len());
                let mut to = rand::random_range(0..devices.len() - 1);
                if to >= from {
                    to += 1;
                }
                let mut body = vec![0u8; body_bytes.max(8)];
                let sent_us = epoch.elapsed().as_micros() as u64;
                body[..8].copy_from_slice(&sent_us.to_be_bytes());
                let id = EnvelopeId::new(
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_millis() as u64)
                        .unwrap_or(0),
                    rand::random(),
                );
                let target = [(devices[to].address.clone(), DeviceId(1))];
                let t0 = Instant::now();
                if via == Via::Ws {
                    // Answered on the sender's connection task, which
                    // counts it as sent (or refused).
                    let message = message(id, body, &target);
                    if outboxes[from].send((message, t0)).await.is_err() {
                        stats.errors.fetch_add(1, Ordering::Relaxed);
                    }
                    bar.inc(1);
                    continue;
                }
                let sender = &devices[from];
                let sent = sender
                    .transport
                    .send(&sender.token, &message(id, body, &target))
                    .await;
                match sent {
                    Ok(_) => {
                        stats.sent.fetch_add(1, Ordering::Relaxed);
                        let _ = stats
                            .send_us
                            .lock()
                            .await
                            .record((t0.elapsed().as_micros() as u64).max(1));
                    }
                    Err(e) => {
                        if stats.errors.fetch_add(1, Ordering::Relaxed) < 5 {
                            bar.println(format!("send failed: {e}"));
                        }
                    }
                }
                bar.inc(1);
                if n % 256 == 0 {
                    let secs = started.elapsed().as_secs_f64().max(1e-3);
                    bar.set_message(format!(
                        "{:.0} sent/s {:.0} delivered/s",
                        stats.sent.load(Ordering::Relaxed) as f64 / secs,
                        stats.delivered.load(Ordering::Relaxed) as f64 / secs
                    ));
                }
            }
        }));
    }
    for task in tasks {
        task.await?;
    }
    if via == Via::Ws {
        // Sends are answered asynchronously: wait for the answers.
        let deadline = Instant::now() + Duration::from_secs(10);
        while stats.sent.load(Ordering::Relaxed) + stats.errors.load(Ordering::Relaxed) < total
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let send_secs = started.elapsed().as_secs_f64();
    bar.finish();
    // Let the last pushes land.
    let sent = stats.sent.load(Ordering::Relaxed);
    let drain_deadline = Instant::now() + Duration::from_secs(10);
    while stats.delivered.load(Ordering::Relaxed) < sent && Instant::now() < drain_deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let delivered_secs = started.elapsed().as_secs_f64();
    stop.notify_waiters();
    for r in receivers {
        r.abort();
    }
    let latency = stats.latency_us.lock().await;
    let send = stats.send_us.lock().await;
    let delivered = stats.delivered.load(Ordering::Relaxed);
    let errors = stats.errors.load(Ordering::Relaxed);
    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let report = serde_json::json!({
        "clients": cli.clients,
        "target_rate": rate,
        "duration_s": duration,
        "sent": sent,
        "send_errors": errors,
        "delivered": delivered,
        "sent_per_s": sent as f64 / send_secs,
        "delivered_per_s": delivered as f64 / delivered_secs,
        "latency_ms": {
            "p50": ms(&latency, 0.5), "p99": ms(&latency, 0.99),
            "p999": ms(&latency, 0.999), "max": latency.max() as f64 / 1000.0,
        },
        "via": format!("{via:?}").to_lowercase(),
        "send_answer_ms": { "p50": ms(&send, 0.5), "p99": ms(&send, 0.99) },
    });
    if cli.json {
        println!("{report}");
    } else {
        println!("clients:            {}", cli.clients);
        println!("target rate:        {rate:.0} msg/s for {duration:.1} s");
        println!(
            "sent:               {sent} ({:.0} msg/s), errors {errors}",
            sent as f64 / send_secs
        );
        println!(
            "delivered (ws):     {delivered} ({:.0} msg/s)",
            delivered as f64 / delivered_secs
        );
        println!(
            "send→receive:       p50 {:.2} ms  p99 {:.2} ms  p999 {:.2} ms  max {:.2} ms",
            ms(&latency, 0.5),
            ms(&latency, 0.99),
            ms(&latency, 0.999),
            latency.max() as f64 / 1000.0
        );
        println!(
            "{}:  p50 {:.2} ms  p99 {:.2} ms",
            match via {
                Via::Http => "POST /v1/messages",
                Via::Ws => "ws send → sent   ",
            },
            ms(&send, 0.5),
            ms(&send, 0.99)
        );
    }
    if delivered < sent {
        anyhow::bail!(
            "{} accepted messages were not delivered within 10 s",
            sent - delivered
        );
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match &cli.command {
            Command::Send {
                rate,
                duration,
                senders,
                body_bytes,
                via,
                window,
            } => send_load(&cli, *rate, *duration, *senders, *body_bytes, *via, *window).await,
            Command::Idle { hold, relay_pid } => idle(&cli, *hold, *relay_pid).await,
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
