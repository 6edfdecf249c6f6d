//! End-to-end: the `courier-client` binary against real `courier serve`
//! processes on 127.0.0.1 (one relay, and federated relays).
//!
//! Relays peer with `courier peer add` or, where a test restarts them, with
//! `COURIER_FEDERATION_BOOTSTRAP`.
//! The relay binary is found next to this crate's binary (`target/debug/courier`);
//! if it is missing, `cargo build -p courier-node --bin courier` runs once.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read};
use std::net::{TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::{CLIENT, relay_bin};

fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `courier serve` process with a fixed HTTP port and QUIC port, so a
/// restart keeps its addresses.
struct Relay {
    child: Option<Child>,
    /// `open` or `invite`.
    registration: &'static str,
    /// `COURIER_FEDERATION_BOOTSTRAP`: multiaddrs dialled at start.
    bootstrap: String,
    name: String,
    url: String,
    data_dir: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Relay {
    fn start(name: &str) -> Relay {
        Relay::start_peered(name, &[])
    }

    /// A relay that dials `peers` at start (federation bootstrap).
    fn start_peered(name: &str, peers: &[&Relay]) -> Relay {
        let tmp = tempfile::tempdir().unwrap();
        let data_dir = tmp.path().join("relay");
        let http = format!("127.0.0.1:{}", free_tcp_port());
        let p2p = format!("/ip4/127.0.0.1/udp/{}/quic-v1", free_udp_port());
        let out = Command::new(relay_bin())
            .args(["init", "--data-dir"])
            .arg(&data_dir)
            .args(["--name", name, "--http", &http, "--p2p", &p2p])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "init: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let addrs: Vec<String> = peers
            .iter()
            .map(|p| format!("\"{}\"", p.multiaddr()))
            .collect();
        let mut relay = Relay {
            child: None,
            registration: "open",
            bootstrap: format!("[{}]", addrs.join(",")),
            name: name.to_owned(),
            url: format!("http://{http}"),
            data_dir,
            _tmp: tmp,
        };
        relay.spawn();
        relay
    }

    fn spawn(&mut self) {
        let mut child = Command::new(relay_bin())
            .args(["serve", "--registration", self.registration, "--data-dir"])
            .arg(&self.data_dir)
            .env("RUST_LOG", "warn")
            .env("COURIER_FEDERATION_BOOTSTRAP", &self.bootstrap)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line.starts_with("listening http=") {
                    let _ = tx.send(());
                }
            }
        });
        // Own the child before anything can panic, so drop kills it.
        let started = rx.recv_timeout(Duration::from_secs(60));
        self.child = Some(child);
        started.expect("relay started");
    }

    /// SIGTERM and wait: the relay flushes and exits.
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(20);
            while child.try_wait().unwrap().is_none() {
                if Instant::now() > deadline {
                    let _ = child.kill();
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// Restarts the relay with invite-only registration.
    fn invite_only(&mut self) {
        self.stop();
        self.registration = "invite";
        self.spawn();
    }

    /// A one-time registration code from `courier invite`.
    fn invite(&self) -> String {
        let out = Command::new(relay_bin())
            .args(["invite", "--data-dir"])
            .arg(&self.data_dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "invite: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }

    /// The multiaddr other relays dial, from `courier id`.
    fn multiaddr(&self) -> String {
        let out = Command::new(relay_bin())
            .args(["id", "--data-dir"])
            .arg(&self.data_dir)
            .output()
            .unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .find(|l| l.contains("/p2p/"))
            .expect("a full multiaddr")
            .to_owned()
    }

    /// `courier peer add` on this (running) relay for `other`.
    fn peer_add(&self, other: &Relay) {
        let out = Command::new(relay_bin())
            .args(["peer", "add", "--data-dir"])
            .arg(&self.data_dir)
            .arg(other.multiaddr())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "peer add: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Every byte of the relay's database files (main file and WAL).
    fn database_bytes(&self) -> Vec<u8> {
        let mut all = Vec::new();
        for entry in std::fs::read_dir(&self.data_dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            if name.starts_with("courier.db") {
                std::fs::File::open(&path)
                    .unwrap()
                    .read_to_end(&mut all)
                    .unwrap();
            }
        }
        all
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A user's client state directory.
struct User {
    state: PathBuf,
    address: String,
    _tmp: tempfile::TempDir,
}

fn client(state: &Path, args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(CLIENT);
    cmd.arg("--state").arg(state).args(args);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

impl User {
    fn register(relay: &Relay, name: &str) -> User {
        let tmp = tempfile::tempdir().unwrap();
        let state = tmp.path().join("state");
        let user = format!("{name}@{}", relay.name);
        let address = ok(client(
            &state,
            &["register", &user, "--relay", &relay.url],
            &[],
        ))
        .trim()
        .to_owned();
        assert_eq!(address, user);
        User {
            state,
            address,
            _tmp: tmp,
        }
    }

    fn run(&self, args: &[&str]) -> Output {
        client(
            &self.state,
            args,
            &[("COURIER_CLIENT_DEVICE_LIST_REFRESH_MS", "0")],
        )
    }

    fn send(&self, to: &User, text: &str) {
        ok(self.run(&["send", &to.address, text]));
    }

    /// Sends, retrying while the relays are still peering (the bootstrap
    /// dial runs in the background).
    fn send_when_peered(&self, to: &User, text: &str) {
        self.run_when_peered(&["send", &to.address, text]);
    }

    fn run_when_peered(&self, args: &[&str]) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = self.run(args);
            if out.status.success() || Instant::now() > deadline {
                return ok(out);
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    fn recv(&self) -> Vec<String> {
        ok(self.run(&["recv"])).lines().map(str::to_owned).collect()
    }

    /// Receives until `n` lines arrived (federation delivers asynchronously).
    fn recv_n(&self, n: usize) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut got = Vec::new();
        while got.len() < n && Instant::now() < deadline {
            got.extend(self.recv());
            if got.len() < n {
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        got
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).trim().to_owned()
}

#[test]
fn two_users_on_one_relay_and_the_cli_contract() {
    let relay = Relay::start("relay-a.test");
    let alice = User::register(&relay, "alice");
    let bob = User::register(&relay, "bob");
    assert_eq!(
        ok(alice.run(&["whoami"])).trim(),
        "alice@relay-a.test (device 1)"
    );
    alice.send(&bob, "hello bob");
    alice.send(&bob, "second");
    assert_eq!(
        bob.recv(),
        [
            "alice@relay-a.test: hello bob",
            "alice@relay-a.test: second"
        ]
    );
    assert!(bob.recv().is_empty(), "shown once");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&alice.state), 0o700);
        assert_eq!(mode(&alice.state.join("client.db")), 0o600);
    }
    bob.send(&alice, "hi alice");
    let line = ok(alice.run(&["recv", "--json"]));
    let v: serde_json::Value = serde_json::from_str(line.trim()).unwrap();
    assert_eq!(v["from"], "bob@relay-a.test");
    assert_eq!(v["text"], "hi alice");
    assert!(v["group"].is_null());
    assert!(v["sent_at"].as_u64().unwrap() > 1_600_000_000_000);

    // A bare USER: the relay tells its name (`GET /v1/relay`).
    let tmp = tempfile::tempdir().unwrap();
    let out = ok(client(
        &tmp.path().join("s"),
        &["register", "dave", "--relay", &relay.url],
        &[],
    ));
    assert_eq!(out.trim(), "dave@relay-a.test");

    // One-line errors and exit codes.
    let out = alice.run(&["send", "nobody@relay-a.test", "x"]);
    assert_eq!(out.status.code(), Some(4));
    assert_eq!(stderr(&out), "error: unknown recipient nobody@relay-a.test");
    let out = alice.run(&["send", "bob@no-such-relay.test", "x"]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    let out = client(&tmp.path().join("empty"), &["send", &bob.address, "x"], &[]);
    assert_eq!(out.status.code(), Some(3));
    assert!(
        stderr(&out).starts_with("error: not registered"),
        "{}",
        stderr(&out)
    );
    let out = alice.run(&["send", "not-an-address", "x"]);
    assert_eq!(out.status.code(), Some(2));
    let out = alice.run(&["send", "bob@relay-a.test"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(stderr(&out).lines().count(), 1, "{}", stderr(&out));
    assert!(stderr(&out).starts_with("error: "), "{}", stderr(&out));
    let out = alice.run(&["group", "send", "nope", "x"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(stderr(&out), "error: unknown group nope");
    let again = client(
        &alice.state,
        &["register", "alice2", "--relay", &relay.url],
        &[],
    );
    assert!(!again.status.success());

    let mut relay = relay;
    relay.stop();
    let out = alice.run(&["send", &bob.address, "x"]);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert!(
        stderr(&out).starts_with("error: relay unreachable"),
        "{}",
        stderr(&out)
    );
    assert_eq!(stderr(&out).lines().count(), 1);
}

#[test]
fn recv_wait_prints_messages_pushed_over_the_websocket() {
    let relay = Relay::start("relay-a.test");
    let alice = User::register(&relay, "alice");
    let bob = User::register(&relay, "bob");
    let listener = Command::new(CLIENT)
        .arg("--state")
        .arg(&bob.state)
        .args(["recv", "--wait", "4"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let sent = Instant::now();
    alice.send(&bob, "pushed");
    let out = listener.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout).unwrap().trim(),
        "alice@relay-a.test: pushed"
    );
    assert!(sent.elapsed() < Duration::from_secs(10));
    assert!(bob.recv().is_empty());
}

#[test]
fn a_client_killed_between_receiving_and_acking_gets_the_message_once_after_restart() {
    let relay = Relay::start("relay-a.test");
    let alice = User::register(&relay, "alice");
    let bob = User::register(&relay, "bob");
    alice.send(&bob, "exactly once");
    // The client stores the message, then stops before it acks.
    let out = client(
        &bob.state,
        &["recv"],
        &[("COURIER_CLIENT_FAULT", "exit-before-ack")],
    );
    assert!(!out.status.success());
    assert!(out.stdout.is_empty(), "nothing shown before the crash");
    // Restarted: shown once; the relay's redelivery is recognised and acked.
    assert_eq!(bob.recv(), ["alice@relay-a.test: exactly once"]);
    assert!(bob.recv().is_empty());
    assert!(bob.recv().is_empty());
}

#[test]
fn a_linked_second_device_receives_new_messages_and_its_accounts_sent_ones() {
    let relay = Relay::start("relay-a.test");
    let alice = User::register(&relay, "alice");
    let bob = User::register(&relay, "bob");
    bob.send(&alice, "before the link");
    let tmp = tempfile::tempdir().unwrap();
    let phone_state = tmp.path().join("phone");
    let mut link = Command::new(CLIENT)
        .arg("--state")
        .arg(&phone_state)
        .args([
            "link",
            &alice.address,
            "--relay",
            &relay.url,
            "--timeout",
            "60",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(link.stdout.take().unwrap()).lines();
    let code = lines.next().unwrap().unwrap();
    assert!(!code.is_empty());
    assert_eq!(
        ok(alice.run(&["approve", &code])).trim(),
        "approved device 2"
    );
    let status = link.wait().unwrap();
    assert!(status.success());
    assert_eq!(
        lines.next().unwrap().unwrap(),
        "alice@relay-a.test (device 2)"
    );
    let phone = User {
        state: phone_state,
        address: alice.address.clone(),
        _tmp: tmp,
    };
    let devices = ok(alice.run(&["devices"]));
    assert_eq!(devices.lines().count(), 2, "{devices}");
    assert!(devices.contains("(this device)"));

    bob.send(&alice, "after the link");
    assert_eq!(
        alice.recv(),
        [
            "bob@relay-a.test: before the link",
            "bob@relay-a.test: after the link"
        ]
    );
    assert_eq!(phone.recv(), ["bob@relay-a.test: after the link"]);
    alice.send(&bob, "from the laptop");
    assert_eq!(
        phone.recv(),
        ["alice@relay-a.test -> bob@relay-a.test: from the laptop"]
    );
    phone.send(&bob, "from the phone");
    assert_eq!(
        bob.recv(),
        [
            "alice@relay-a.test: from the laptop",
            "alice@relay-a.test: from the phone"
        ]
    );
    assert_eq!(
        alice.recv(),
        ["alice@relay-a.test -> bob@relay-a.test: from the phone"]
    );
}

/// Bytes of the rows that hold messages: bodies, per-recipient headers and
/// outbox recipient lists.
async fn message_rows(relay: &Relay) -> Vec<u8> {
    use sqlx::Row;
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(relay.data_dir.join("courier.db"))
        .read_only(true);
    let pool = sqlx::SqlitePool::connect_with(options).await.unwrap();
    let mut all = Vec::new();
    for sql in [
        "SELECT id, origin, body FROM messages",
        "SELECT message_id, header FROM mailbox",
        "SELECT relay, recipients FROM outbox",
    ] {
        for row in sqlx::query(sql).fetch_all(&pool).await.unwrap() {
            for i in 0..row.len() {
                if let Ok(Some(b)) = row.try_get::<Option<Vec<u8>>, _>(i) {
                    all.extend(b);
                } else if let Ok(s) = row.try_get::<String, _>(i) {
                    all.extend(s.into_bytes());
                }
            }
        }
    }
    pool.close().await;
    all
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_relay_database_holds_no_plaintext_and_no_sender_of_a_sealed_message() {
    let relay = Relay::start("relay-a.test");
    let alice = User::register(&relay, "alice");
    let bob = User::register(&relay, "bob");
    let carol = User::register(&relay, "carol");
    alice.send(&bob, "plaintext-direct-7731");
    ok(alice.run(&["group", "create", "g", &bob.address, &carol.address]));
    ok(alice.run(&["group", "send", "g", "plaintext-group-9912"]));
    // Undelivered, so everything is still in the mailboxes.
    let rows = message_rows(&relay).await;
    assert!(!rows.is_empty());
    for needle in ["plaintext-direct-7731", "plaintext-group-9912", "alice"] {
        assert!(
            !contains(&rows, needle),
            "{needle} in the relay's message rows"
        );
    }
    let mut relay = relay;
    relay.stop();
    let all = relay.database_bytes();
    for needle in ["plaintext-direct-7731", "plaintext-group-9912"] {
        assert!(
            !contains(&all, needle),
            "{needle} anywhere in the relay database"
        );
    }
}

#[test]
fn two_users_on_two_relays() {
    let a = Relay::start("relay-a.test");
    let b = Relay::start_peered("relay-b.test", &[&a]);
    let alice = User::register(&a, "alice");
    let bob = User::register(&b, "bob");
    alice.send_when_peered(&bob, "across relays");
    assert_eq!(bob.recv_n(1), ["alice@relay-a.test: across relays"]);
    // The recipient's relay never learned the sender, nor the text.
    let mut b = b;
    b.stop();
    let all = b.database_bytes();
    assert!(!all.is_empty());
    for needle in ["across relays", "alice"] {
        assert!(!contains(&all, needle), "{needle} in relay-b's database");
    }
    b.spawn();
    bob.send_when_peered(&alice, "and back");
    assert_eq!(alice.recv_n(1), ["bob@relay-b.test: and back"]);
}

#[test]
fn a_group_across_three_relays_and_a_removed_member_stops_decrypting() {
    // Peered the operator's way: A adds B and C; B and C learn each other
    // from the descriptors A shares.
    let a = Relay::start("relay-a.test");
    let b = Relay::start("relay-b.test");
    let c = Relay::start("relay-c.test");
    a.peer_add(&b);
    a.peer_add(&c);
    let alice = User::register(&a, "alice");
    let bob = User::register(&b, "bob");
    let carol = User::register(&c, "carol");
    alice.run_when_peered(&["group", "create", "team", &bob.address, &carol.address]);
    ok(alice.run(&["group", "send", "team", "hello team"]));
    assert_eq!(bob.recv_n(1), ["alice@relay-a.test [team]: hello team"]);
    assert_eq!(carol.recv_n(1), ["alice@relay-a.test [team]: hello team"]);
    bob.run_when_peered(&["group", "send", "team", "bob here"]);
    assert_eq!(alice.recv_n(1), ["bob@relay-b.test [team]: bob here"]);
    assert_eq!(carol.recv_n(1), ["bob@relay-b.test [team]: bob here"]);

    ok(alice.run(&["group", "remove", "team", &carol.address]));
    ok(alice.run(&["group", "send", "team", "without carol"]));
    assert_eq!(bob.recv_n(1), ["alice@relay-a.test [team]: without carol"]);
    ok(bob.run(&["group", "send", "team", "bye carol"]));
    assert_eq!(alice.recv_n(1), ["bob@relay-b.test [team]: bye carol"]);
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        carol.recv().is_empty(),
        "a removed member reads nothing new"
    );
}

#[test]
fn a_contact_re_registering_with_a_new_identity_raises_the_identity_change_error() {
    let a = Relay::start("relay-a.test");
    let mut b = Relay::start_peered("relay-b.test", &[&a]);
    let alice = User::register(&a, "alice");
    let bob = User::register(&b, "bob");
    alice.send_when_peered(&bob, "before");
    assert_eq!(bob.recv_n(1), ["alice@relay-a.test: before"]);
    // Relay B loses its database (same name and key); "bob" registers anew.
    b.stop();
    for entry in std::fs::read_dir(&b.data_dir).unwrap() {
        let path = entry.unwrap().path();
        if path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("courier.db")
        {
            std::fs::remove_file(path).unwrap();
        }
    }
    b.spawn();
    let new_bob = User::register(&b, "bob");
    let deadline = Instant::now() + Duration::from_secs(30);
    let out = loop {
        let out = alice.run(&["send", &new_bob.address, "after"]);
        if out.status.code() != Some(5) || Instant::now() > deadline {
            break out;
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    assert!(stderr(&out).starts_with("error: identity changed for bob@relay-b.test"));
    alice.run_when_peered(&["trust", &new_bob.address]);
    alice.send_when_peered(&new_bob, "after trust");
    assert_eq!(new_bob.recv_n(1), ["alice@relay-a.test: after trust"]);
}

#[test]
fn invite_only_relays_need_a_code_to_register() {
    let mut relay = Relay::start("relay-a.test");
    relay.invite_only();
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("s");
    let user = "erin@relay-a.test";
    let out = client(&state, &["register", user, "--relay", &relay.url], &[]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("invite"), "{}", stderr(&out));
    let code = relay.invite();
    let out = client(
        &state,
        &["register", user, "--relay", &relay.url, "--invite", &code],
        &[],
    );
    assert_eq!(ok(out).trim(), user);
    // A used code does not register a second account.
    let out = client(
        &tmp.path().join("t"),
        &[
            "register",
            "frank@relay-a.test",
            "--relay",
            &relay.url,
            "--invite",
            &code,
        ],
        &[],
    );
    assert!(!out.status.success());
}

#[test]
fn a_bare_user_registers_under_the_name_the_relay_reports() {
    // The URL's host (127.0.0.1) and `localhost` are both wrong here: only
    // `GET /v1/relay` can tell the client this relay's name.
    let relay = Relay::start("relay-named.test");
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let address = ok(client(
        &state,
        &["register", "alice", "--relay", &relay.url],
        &[],
    ));
    assert_eq!(address.trim(), "alice@relay-named.test");
    let info: serde_json::Value = serde_json::from_str(&http_get(&relay.url, "/v1/relay")).unwrap();
    assert_eq!(info["name"], "relay-named.test");
    assert_eq!(info["registration"], "open");
    assert!(info["version"].as_str().is_some_and(|v| !v.is_empty()));
}

/// The body of a plain HTTP/1.1 GET (no client library needed for one call).
fn http_get(url: &str, path: &str) -> String {
    use std::io::Write;
    let host = url.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(host).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    text.split_once("\r\n\r\n").unwrap().1.to_owned()
}

#[test]
fn a_relay_without_the_info_endpoint_makes_the_client_guess_names() {
    // An older relay: `GET /v1/relay` is `not_found` and every registration
    // is refused as naming another relay. The client must fall back to its
    // guesses (URL host, then `localhost`) and end with the hint.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (seen_tx, seen_rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { break };
            let seen = seen_tx.clone();
            std::thread::spawn(move || old_relay_connection(conn, seen));
        }
    });
    let tmp = tempfile::tempdir().unwrap();
    let out = client(
        &tmp.path().join("state"),
        &["register", "alice", "--relay", &url],
        &[],
    );
    assert!(!out.status.success());
    assert!(stderr(&out).contains("USER@RELAYNAME"), "{}", stderr(&out));
    let seen: Vec<String> = seen_rx.try_iter().collect();
    assert_eq!(seen.first().map(String::as_str), Some("GET /v1/relay"));
    let posts = seen.iter().filter(|r| *r == "POST /v1/accounts").count();
    assert!(posts >= 1, "no guessed registration: {seen:?}");
}

/// Serves one keep-alive connection of a relay that predates `/v1/relay`.
fn old_relay_connection(conn: std::net::TcpStream, seen: std::sync::mpsc::Sender<String>) {
    use std::io::Write;
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut conn = conn;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut length = 0usize;
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 {
                return;
            }
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((k, v)) = header.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                length = v.trim().parse().unwrap();
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).unwrap();
        let request: String = line.split(' ').take(2).collect::<Vec<_>>().join(" ");
        let (status, code) = if request == "GET /v1/relay" {
            ("404 Not Found", "not_found")
        } else {
            ("400 Bad Request", "bad_request")
        };
        let _ = seen.send(request);
        let body = format!(r#"{{"error":{{"code":"{code}","message":"no"}}}}"#);
        let _ = write!(
            conn,
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
    }
}
