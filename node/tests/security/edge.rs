//! Security regression tests: edge — the HTTP listener (timeouts,
//! connection caps, oversized heads), client addresses behind proxies,
//! `/metrics` cost, file modes and a full disk. Items 9, 10, 15, 16, 19
//! and 20 of the audit.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use courier_protocol::{DeviceId, EnvelopeId};

use crate::common::{Relay, envelope_id, expect_error};

fn addr(relay: &Relay) -> SocketAddr {
    relay.url.trim_start_matches("http://").parse().unwrap()
}

/// Reads until the relay closes the connection (EOF or reset), at most
/// `within`; returns what was read, or `None` if it was still open then.
fn read_until_closed(stream: &mut TcpStream, within: Duration) -> Option<Vec<u8>> {
    let deadline = Instant::now() + within;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        stream.set_read_timeout(Some(left)).unwrap();
        match stream.read(&mut buf) {
            Ok(0) => return Some(got),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return None;
            }
            // Reset: closed too.
            Err(_) => return Some(got),
        }
    }
}

/// One raw request on a fresh connection (`Connection: close`); the status
/// and the body.
fn raw_request(relay: &Relay, head: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr(relay)).unwrap();
    stream.write_all(head.as_bytes()).unwrap();
    let got = read_until_closed(&mut stream, Duration::from_secs(30)).expect("no answer");
    let text = String::from_utf8_lossy(&got).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
    (status, body)
}

fn error_code(body: &str) -> String {
    let json: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body:?}"));
    assert!(json["error"]["message"].is_string(), "{json}");
    json["error"]["code"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// Retries a plain `GET /healthz` on new connections until it is served
/// (a closed connection's place is freed asynchronously).
fn served_within(relay: &Relay, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        let (status, _) = raw_request(
            relay,
            "GET /healthz HTTP/1.1\r\nHost: relay\r\nConnection: close\r\n\r\n",
        );
        if status == 200 {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

// ------------------------------------------------------------------ item 9

#[test]
fn silent_half_sent_and_idle_keep_alive_connections_are_closed_after_the_header_timeout() {
    let relay = Relay::start(&[], &[("COURIER_HTTP_HEADER_READ_TIMEOUT_MS", "1000")]);
    let silent = TcpStream::connect(addr(&relay)).unwrap();
    let mut half = TcpStream::connect(addr(&relay)).unwrap();
    half.write_all(b"GET /healthz HTTP/1.1\r\nHost: relay\r\nX-Slow: ")
        .unwrap();
    let mut idle = TcpStream::connect(addr(&relay)).unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: relay\r\n\r\n")
        .unwrap();
    let mut first = [0u8; 12];
    idle.read_exact(&mut first).unwrap();
    assert_eq!(&first, b"HTTP/1.1 200");

    // Generous: the timeout is 1 s, the test allows 30.
    for (name, mut stream) in [("silent", silent), ("half a header", half), ("idle", idle)] {
        assert!(
            read_until_closed(&mut stream, Duration::from_secs(30)).is_some(),
            "the {name} connection is still open"
        );
    }
    // The relay still serves everyone else.
    assert!(served_within(&relay, Duration::from_secs(10)));
}

#[test]
fn connections_over_the_per_ip_cap_are_refused_with_json_and_the_place_frees_on_close() {
    let relay = Relay::start(
        &[],
        &[
            ("COURIER_HTTP_CONNECTIONS_PER_IP_MAX", "4"),
            ("COURIER_HTTP_HEADER_READ_TIMEOUT_MS", "120000"),
        ],
    );
    let mut held: Vec<TcpStream> = (0..4)
        .map(|_| TcpStream::connect(addr(&relay)).unwrap())
        .collect();
    // Accepted in order: the fifth finds four open from 127.0.0.1.
    let mut extra = TcpStream::connect(addr(&relay)).unwrap();
    let got = read_until_closed(&mut extra, Duration::from_secs(30)).expect("not closed");
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 429 "), "{text}");
    assert_eq!(
        error_code(text.split("\r\n\r\n").nth(1).unwrap()),
        "rate_limited"
    );

    // The held ones are served.
    held[0]
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: relay\r\nConnection: close\r\n\r\n")
        .unwrap();
    let got = read_until_closed(&mut held[0], Duration::from_secs(30)).unwrap();
    assert!(got.starts_with(b"HTTP/1.1 200"));
    held.remove(0);
    held.pop();
    assert!(served_within(&relay, Duration::from_secs(10)));
}

#[test]
fn connections_over_the_global_cap_are_refused_with_json() {
    let relay = Relay::start(
        &[],
        &[
            ("COURIER_HTTP_CONNECTIONS_MAX", "3"),
            ("COURIER_HTTP_HEADER_READ_TIMEOUT_MS", "120000"),
        ],
    );
    let held: Vec<TcpStream> = (0..3)
        .map(|_| TcpStream::connect(addr(&relay)).unwrap())
        .collect();
    let mut extra = TcpStream::connect(addr(&relay)).unwrap();
    let got = read_until_closed(&mut extra, Duration::from_secs(30)).expect("not closed");
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 503 "), "{text}");
    assert_eq!(
        error_code(text.split("\r\n\r\n").nth(1).unwrap()),
        "unavailable"
    );
    drop(held);
    assert!(served_within(&relay, Duration::from_secs(10)));
}

// ----------------------------------------------------------------- item 19

#[test]
fn too_long_uris_and_too_large_heads_get_json_414_and_431() {
    let relay = Relay::start(&[], &[]);
    let long_query = "a".repeat(10 * 1024);
    let (status, body) = raw_request(
        &relay,
        &format!(
            "GET /healthz?x={long_query} HTTP/1.1\r\nHost: relay\r\nConnection: close\r\n\r\n"
        ),
    );
    assert_eq!(status, 414, "{body}");
    assert_eq!(error_code(&body), "uri_too_long");

    let big = "b".repeat(20 * 1024);
    let (status, body) = raw_request(
        &relay,
        &format!(
            "GET /healthz HTTP/1.1\r\nHost: relay\r\nX-Big: {big}\r\nConnection: close\r\n\r\n"
        ),
    );
    assert_eq!(status, 431, "{body}");
    assert_eq!(error_code(&body), "headers_too_large");

    // Far over: the parser itself stops reading (memory per connection
    // stays bounded), answers a bare 431 and closes. The close may reset
    // the connection before the answer is read; then only the close shows.
    let huge = "c".repeat(200 * 1024);
    let mut stream = TcpStream::connect(addr(&relay)).unwrap();
    let _ = stream.write_all(
        format!("GET /healthz HTTP/1.1\r\nHost: relay\r\nX-Huge: {huge}\r\n\r\n").as_bytes(),
    );
    let got = read_until_closed(&mut stream, Duration::from_secs(30)).expect("still open");
    assert!(
        got.is_empty() || got.starts_with(b"HTTP/1.1 431 "),
        "{}",
        String::from_utf8_lossy(&got)
    );

    // Just under the limits is served.
    let (status, _) = raw_request(
        &relay,
        &format!(
            "GET /healthz?x={} HTTP/1.1\r\nHost: relay\r\nX-Ok: {}\r\nConnection: close\r\n\r\n",
            "a".repeat(4096),
            "b".repeat(8192)
        ),
    );
    assert_eq!(status, 200);
}

// ----------------------------------------------------------------- item 10

async fn healthz_from(relay: &Relay, forwarded_for: &str) -> reqwest::Response {
    relay
        .req(reqwest::Method::GET, "/healthz")
        .header("x-forwarded-for", forwarded_for)
        .send()
        .await
        .unwrap()
}

const TIGHT_IP_LIMIT: [(&str, &str); 2] = [
    ("COURIER_RATE_LIMIT_IP_BURST", "5"),
    ("COURIER_RATE_LIMIT_IP_PER_SECOND", "0.01"),
];

#[tokio::test]
async fn behind_a_trusted_proxy_each_forwarded_client_has_its_own_bucket() {
    let mut envs = TIGHT_IP_LIMIT.to_vec();
    envs.push(("COURIER_HTTP_TRUSTED_PROXIES", "[\"127.0.0.1\"]"));
    let relay = Relay::start(&[], &envs);
    for _ in 0..5 {
        assert_eq!(healthz_from(&relay, "198.51.100.1").await.status(), 200);
    }
    expect_error(
        healthz_from(&relay, "198.51.100.1").await,
        429,
        "rate_limited",
    )
    .await;
    // Another client behind the same proxy is not limited by the first.
    assert_eq!(healthz_from(&relay, "198.51.100.2").await.status(), 200);
    // The first client cannot get out by prepending a made-up hop: the
    // rightmost untrusted hop (the one our proxy saw) counts.
    expect_error(
        healthz_from(&relay, "203.0.113.77, 198.51.100.1").await,
        429,
        "rate_limited",
    )
    .await;
    // IPv6 clients are one client per /64.
    for n in 0..5 {
        let ip = format!("2001:db8:5:6::{n:x}");
        assert_eq!(healthz_from(&relay, &ip).await.status(), 200, "{ip}");
    }
    expect_error(
        healthz_from(&relay, "2001:db8:5:6:ffff::1").await,
        429,
        "rate_limited",
    )
    .await;
}

#[tokio::test]
async fn without_trusted_proxies_a_spoofed_forwarded_for_does_not_escape_the_limit() {
    let relay = Relay::start(&[], &TIGHT_IP_LIMIT);
    for n in 0..5 {
        let spoof = format!("198.51.100.{n}");
        assert_eq!(healthz_from(&relay, &spoof).await.status(), 200);
    }
    expect_error(
        healthz_from(&relay, "198.51.100.99").await,
        429,
        "rate_limited",
    )
    .await;
    let forwarded = relay
        .req(reqwest::Method::GET, "/healthz")
        .header("forwarded", "for=192.0.2.99")
        .send()
        .await
        .unwrap();
    expect_error(forwarded, 429, "rate_limited").await;
}

// ----------------------------------------------------------------- item 16

fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test]
async fn concurrent_metrics_and_readyz_requests_cost_one_store_read_per_interval() {
    let relay = Relay::start(&[], &[("COURIER_HTTP_STATS_CACHE_MS", "600000")]);
    let scrapes = (0..200).map(|i| {
        let path = if i % 4 == 0 { "/readyz" } else { "/metrics" };
        relay.req(reqwest::Method::GET, path).send()
    });
    for response in futures::future::join_all(scrapes).await {
        assert_eq!(response.unwrap().status(), 200);
    }
    let text = relay.metrics().await;
    assert_eq!(
        metric(&text, "courier_store_stats_reads_total"),
        Some(1.0),
        "{text}"
    );
    assert!(metric(&text, "courier_mailbox_depth").is_some(), "{text}");
}

// ----------------------------------------------------------------- item 15

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[cfg(unix)]
#[tokio::test]
async fn relay_files_are_private_and_an_open_data_dir_is_warned_about() {
    let relay = Relay::start(&[], &[]);
    // Writes, so the database has its WAL and shared-memory files.
    let alice = relay.user("alice").await;
    alice.upload_keys(2).await.unwrap();
    assert_eq!(mode(&relay.data_dir), 0o700);
    let mut names = Vec::new();
    for entry in std::fs::read_dir(&relay.data_dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        assert_eq!(mode(&path) & 0o077, 0, "{name} is {:04o}", mode(&path));
        names.push(name);
    }
    for expected in [
        "courier.toml",
        "relay.key",
        "courier.db",
        "courier.db-wal",
        "courier.db-shm",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} not in {names:?}"
        );
    }
    drop(relay);

    // An operator-made 0755 directory: one warning naming it.
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = tmp.path().join("open");
    std::fs::create_dir(&data_dir).unwrap();
    std::fs::set_permissions(&data_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut relay = Relay::start_in(&data_dir, &[], &[], true);
    relay.terminate();
    let logs = relay.stderr_text();
    let warnings: Vec<_> = logs
        .lines()
        .filter(|l| l.contains("data directory is accessible to other users"))
        .collect();
    assert_eq!(warnings.len(), 1, "{logs}");
    assert!(warnings[0].contains("0755"), "{logs}");
    assert!(
        warnings[0].contains(&data_dir.display().to_string()),
        "{logs}"
    );
    // Its files are private all the same.
    assert_eq!(mode(&data_dir.join("courier.toml")) & 0o077, 0);
}

// ----------------------------------------------------------------- item 20

/// A tmpfs of `size` mounted on a fresh directory, unmounted on drop.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> Option<SmallDisk> {
        let dir = tempfile::tempdir().ok()?;
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .stderr(std::process::Stdio::null())
            .status()
            .ok()?;
        status.success().then_some(SmallDisk { dir })
    }

    fn path(&self) -> PathBuf {
        self.dir.path().to_owned()
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

#[tokio::test]
async fn a_full_disk_refuses_sends_with_507_keeps_every_accepted_message_and_recovers() {
    let Some(disk) = SmallDisk::mount("8m") else {
        eprintln!("SKIPPED: cannot mount a tmpfs here (needs root)");
        return;
    };
    let data_dir = disk.path().join("data");
    let mut relay = Relay::start_in(&data_dir, &[], &[], false);
    let alice = relay.user("alice").await;
    let bob = relay.user("bob").await;
    // Space to give back later.
    let filler = disk.path().join("filler");
    std::fs::write(&filler, vec![0u8; 2 * 1024 * 1024]).unwrap();

    let to = [(bob.address.clone(), DeviceId(1))];
    let mut accepted: Vec<EnvelopeId> = Vec::new();
    let mut refused = 0;
    for n in 0..2000u32 {
        let id = envelope_id();
        match alice
            .send_with_status(id, vec![(n % 251) as u8; 16 * 1024], &to)
            .await
        {
            Ok(_) => accepted.push(id),
            Err((status, error)) => {
                assert_eq!(status, 507, "{error}");
                assert_eq!(error.code.as_str(), "insufficient_storage", "{error}");
                refused += 1;
                if refused == 5 {
                    break;
                }
            }
        }
    }
    assert_eq!(refused, 5, "the disk never filled");
    assert!(accepted.len() > 10, "only {} accepted", accepted.len());

    // Everything accepted is there (reads work on a full disk).
    let fetched = fetch_all(&bob).await;
    for id in &accepted {
        assert!(fetched.contains(id), "accepted {id:?} is missing");
    }

    // Space comes back: sends work again without a restart.
    std::fs::remove_file(&filler).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let again = loop {
        let id = envelope_id();
        match alice.send(id, vec![7; 1024], &to).await {
            Ok(_) => break id,
            Err(e) => {
                assert!(Instant::now() < deadline, "still failing: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    assert!(fetch_all(&bob).await.contains(&again));

    relay.terminate();
    let check = std::process::Command::new("sqlite3")
        .arg(data_dir.join("courier.db"))
        .arg("PRAGMA integrity_check;")
        .output();
    match check {
        Ok(out) => assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "ok",
            "{}",
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => eprintln!("integrity_check SKIPPED: no sqlite3 ({e})"),
    }
    // And after a restart, still everything.
    relay.restart();
    let mut bob = bob;
    bob.base = relay.url.clone();
    bob.login().await.unwrap();
    let fetched = fetch_all(&bob).await;
    for id in accepted.iter().chain([&again]) {
        assert!(fetched.contains(id), "{id:?} lost across the restart");
    }
    drop(relay);
}

async fn fetch_all(device: &crate::common::device::Device) -> Vec<EnvelopeId> {
    let mut ids = Vec::new();
    let mut after = 0;
    loop {
        let page = device.fetch(after, 100).await.unwrap();
        let Some(last) = page.envelopes.last() else {
            return ids;
        };
        after = last.seq;
        ids.extend(page.envelopes.iter().map(|e| e.id));
    }
}
