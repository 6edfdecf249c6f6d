//! Spawns real `courier serve` processes on free ports for end-to-end tests.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use courier_protocol::RelayName;
use device::{self as client, Device};

pub mod device;

pub const BIN: &str = env!("CARGO_BIN_EXE_courier");

/// A running relay process and its data directory.
pub struct Relay {
    pub child: Child,
    pub url: String,
    pub name: RelayName,
    pub data_dir: PathBuf,
    pub http: reqwest::Client,
    args: Vec<String>,
    envs: Vec<(String, String)>,
    stderr: Option<PathBuf>,
    _tmp: Option<tempfile::TempDir>,
}

impl Relay {
    /// `courier serve` on a fresh data dir with `args` and `envs`.
    pub fn start(args: &[&str], envs: &[(&str, &str)]) -> Relay {
        Relay::start_inner(args, envs, false)
    }

    /// Like [`Relay::start`], capturing stderr (the logs) to a file.
    pub fn start_with_stderr(args: &[&str], envs: &[(&str, &str)]) -> Relay {
        Relay::start_inner(args, envs, true)
    }

    fn start_inner(args: &[&str], envs: &[(&str, &str)], capture: bool) -> Relay {
        let tmp = tempfile::tempdir().unwrap();
        let data_dir = tmp.path().join("data");
        let stderr = capture.then(|| tmp.path().join("stderr.log"));
        let mut relay = Relay::spawn_in(
            &data_dir,
            args.iter().map(|s| s.to_string()).collect(),
            envs.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            stderr,
        );
        relay._tmp = Some(tmp);
        relay
    }

    /// The captured logs (see [`Relay::start_with_stderr`]).
    pub fn stderr_text(&self) -> String {
        self.stderr
            .as_ref()
            .map(|p| std::fs::read_to_string(p).unwrap())
            .unwrap_or_default()
    }

    fn spawn_in(
        data_dir: &Path,
        args: Vec<String>,
        envs: Vec<(String, String)>,
        stderr: Option<PathBuf>,
    ) -> Relay {
        let mut command = Command::new(BIN);
        command
            .arg("serve")
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--http", "127.0.0.1:0"])
            .args(&args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(match &stderr {
                Some(path) => Stdio::from(std::fs::File::create(path).unwrap()),
                None => Stdio::inherit(),
            });
        if !args.iter().any(|a| a == "--p2p") {
            command.args(["--p2p", "/ip4/127.0.0.1/udp/0/quic-v1"]);
        }
        for (k, v) in &envs {
            command.env(k, v);
        }
        // Everything that can fail before the child is owned by a `Relay`
        // (whose drop kills it) happens first or kills it itself, so a failed
        // test never leaves a relay running behind it.
        let http = client::http_client();
        let mut child = command.spawn().expect("spawn courier serve");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(addr) = line.strip_prefix("listening http=") {
                    let _ = tx.send(addr.to_owned());
                }
            }
        });
        let Ok(addr) = rx.recv_timeout(Duration::from_secs(60)) else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("relay did not print its address");
        };
        let name = args
            .iter()
            .position(|a| a == "--name")
            .map(|i| args[i + 1].clone())
            .unwrap_or_else(|| "localhost".to_owned());
        Relay {
            child,
            url: format!("http://{addr}"),
            name: RelayName::parse(&name).unwrap(),
            data_dir: data_dir.to_owned(),
            http,
            args,
            envs,
            stderr,
            _tmp: None,
        }
    }

    /// SIGKILL, no goodbye.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "relay did not exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A new process on the same data dir (after `kill9` or `terminate`).
    pub fn restart(&mut self) {
        let tmp = self._tmp.take();
        let mut next = Relay::spawn_in(
            &self.data_dir,
            self.args.clone(),
            self.envs.clone(),
            self.stderr.clone(),
        );
        next._tmp = tmp;
        let old = std::mem::replace(self, next);
        drop(old);
    }

    /// Registers `name` (open registration) and logs in.
    pub async fn user(&self, name: &str) -> Device {
        let mut device = Device::register(&self.http, &self.url, &self.name, name, None)
            .await
            .unwrap();
        device.login().await.unwrap();
        device
    }

    /// Runs `courier ARGS --data-dir <this relay's dir>`.
    pub fn admin(&self, args: &[&str]) -> std::process::Output {
        Command::new(BIN)
            .args(args)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .output()
            .unwrap()
    }

    /// Raw request helper.
    pub fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http.request(method, format!("{}{path}", self.url))
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Asserts an error response's status and code; returns the body.
pub async fn expect_error(
    response: reqwest::Response,
    status: u16,
    code: &str,
) -> serde_json::Value {
    let got = response.status().as_u16();
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(got, status, "status for {body}");
    assert_eq!(body["error"]["code"], code, "code in {body}");
    assert!(body["error"]["message"].is_string(), "{body}");
    body
}

/// A fresh envelope id.
pub fn envelope_id() -> courier_protocol::EnvelopeId {
    courier_protocol::EnvelopeId::new(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64,
        rand::random(),
    )
}

// Spawning into a directory the test prepared (its mode, its filesystem).
impl Relay {
    /// `courier serve --data-dir DATA_DIR` on a directory the test made
    /// (e.g. with a chosen mode, or on a small filesystem), capturing
    /// stderr if `capture` is set. The caller keeps `data_dir` alive.
    pub fn start_in(data_dir: &Path, args: &[&str], envs: &[(&str, &str)], capture: bool) -> Relay {
        let stderr = capture.then(|| {
            let name = format!("courier-stderr-{}.log", rand::random::<u64>());
            std::env::temp_dir().join(name)
        });
        Relay::spawn_in(
            data_dir,
            args.iter().map(|s| s.to_string()).collect(),
            envs.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            stderr,
        )
    }
}

/// A UDP port free on 127.0.0.1 right now (for a relay's `--p2p` QUIC
/// listener, whose address other relays must know in advance).
pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Relay {
    /// `courier serve --name NAME --registration open` listening for
    /// federation over QUIC on a free, known UDP port.
    pub fn start_federating(name: &str, envs: &[(&str, &str)]) -> Relay {
        let p2p = format!("/ip4/127.0.0.1/udp/{}/quic-v1", free_udp_port());
        Relay::start(
            &["--name", name, "--registration", "open", "--p2p", &p2p],
            envs,
        )
    }

    /// The relay's full `/p2p/` multiaddr: the second line of `courier id`.
    pub fn full_address(&self) -> String {
        let id = self.admin(&["id"]);
        let text = String::from_utf8(id.stdout).unwrap();
        text.lines().nth(1).unwrap().to_owned()
    }

    /// The body of `GET /metrics`.
    pub async fn metrics(&self) -> String {
        self.req(reqwest::Method::GET, "/metrics")
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

/// Links a second device to `first`'s account; returns it logged in.
pub async fn link_second_device(relay: &Relay, first: &Device) -> Device {
    use courier_protocol::DeviceId;
    use courier_protocol::api::{
        ApproveLinkResponse, DeviceList, DeviceListEntry, LinkInfo, LinkResponse, LinkStatus,
        SignedDeviceList,
    };
    use serde_json::json;

    let key = client::new_key();
    let keys = courier_client::wire::device_keys(&key);
    let link: LinkResponse = client::decode(
        relay
            .req(reqwest::Method::POST, "/v1/links")
            .json(&json!({"username": first.address.user, "device": keys}))
            .send()
            .await
            .unwrap(),
    )
    .await
    .unwrap();
    let info: LinkInfo = first
        .get(&format!("/v1/links/{}", link.code))
        .await
        .unwrap();
    assert_eq!(info.device, keys);
    let current: SignedDeviceList = first
        .get(&format!("/v1/devices/{}", first.address.user))
        .await
        .unwrap();
    let mut devices = current.list.devices.clone();
    devices.push(DeviceListEntry {
        device: DeviceId(2),
        identity_key: keys.identity_key.clone(),
    });
    let list = DeviceList {
        address: first.address.clone(),
        version: current.list.version + 1,
        devices,
    };
    let approved: ApproveLinkResponse = first
        .post(
            &format!("/v1/links/{}/approve", link.code),
            &json!({"device_list": courier_client::wire::sign_list(&first.key, list, first.device)}),
        )
        .await
        .unwrap();
    let status: LinkStatus = client::decode(
        relay
            .req(
                reqwest::Method::GET,
                &format!("/v1/links/{}/status?secret={}", link.code, link.secret),
            )
            .send()
            .await
            .unwrap(),
    )
    .await
    .unwrap();
    assert!(status.approved);
    assert_eq!(status.device, Some(approved.device));
    let mut second = Device::from_parts(
        relay.http.clone(),
        &relay.url,
        first.address.clone(),
        approved.device,
        key,
    );
    second.login().await.unwrap();
    second
}
