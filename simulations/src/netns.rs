//! The network loopback mode puts between real relays: one Linux network
//! namespace per relay, joined by veth pairs to a bridge in a namespace of
//! the run's own, with one more veth from the bridge to the host so the
//! driver's `courier-client` calls reach every relay.
//!
//! Faults become kernel state: a partition is a blackhole route in each
//! relay's namespace for every relay on the other side (the host stays
//! reachable, so clients keep talking to their home relay), healed by
//! deleting the routes; a link model becomes a `netem` qdisc on each relay's
//! interface when the kernel has netem. Traffic between relays is bridged,
//! never routed, so no namespace needs `ip_forward`.
//!
//! Everything is made with `ip` and `tc` (iproute2) and needs root. Names
//! carry the creating process id (`csim<pid>x<k>-…`), so a later run sweeps
//! what a killed run left behind without touching a live run's namespaces.
//! What is created is removed again when the [`Network`] drops.

use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::scenario::{Jitter, Link};

/// Prefix of every namespace and host interface a run creates.
const PREFIX: &str = "csim";
/// Host interface names start with this (interface names have at most 15
/// bytes, so they cannot carry the whole namespace prefix).
const HOST_IF_PREFIX: &str = "cs";
/// Second octet of the private /24s the runs use (10.213.S.0/24).
const SUBNET_OCTET: u8 = 213;
/// The host's address in the run's /24.
const HOST_OCTET: u8 = 254;
/// Most relays one network holds (addresses .1 ..= .200).
pub const RELAYS_MAX: usize = 200;

/// Runs in this process so far, to tell concurrent runs' names apart.
static RUNS: AtomicU32 = AtomicU32::new(0);

/// Why the network could not be set up or changed.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// An `ip` or `tc` command failed.
    #[error("`{command}` failed: {detail}")]
    Command {
        /// The command line.
        command: String,
        /// Its stderr or the spawn error.
        detail: String,
    },
    /// No free 10.213.S.0/24 on this host.
    #[error("no free 10.{SUBNET_OCTET}.x.0/24 subnet on this host")]
    NoSubnet,
    /// More relays than addresses.
    #[error("at most {RELAYS_MAX} relays in namespaces (asked for {0})")]
    TooMany(usize),
}

fn run(program: &str, args: &[&str]) -> Result<String, NetnsError> {
    let command = format!("{program} {}", args.join(" "));
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| NetnsError::Command {
            command: command.clone(),
            detail: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(NetnsError::Command {
            command,
            detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ip(args: &[&str]) -> Result<String, NetnsError> {
    run("ip", args)
}

/// `Ok` when this process can create network namespaces; otherwise why not
/// (not root, no `ip`, no namespace support).
pub fn available() -> Result<(), String> {
    let root = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|e| e == "0"))
        })
        .unwrap_or(false);
    if !root {
        return Err("not running as root (network namespaces need CAP_SYS_ADMIN)".into());
    }
    ip(&["netns", "list"])
        .map(|_| ())
        .map_err(|e| format!("`ip netns` is unavailable: {e}"))
}

/// Deletes namespaces and host interfaces left by runs whose process is
/// gone (a run killed before its `Network` dropped). Returns their names.
pub fn sweep_stale() -> Vec<String> {
    let alive = |pid: &str| std::path::Path::new("/proc").join(pid).exists();
    let mut swept = Vec::new();
    if let Ok(list) = ip(&["netns", "list"]) {
        for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
            if let Some(pid) = owner(name, PREFIX)
                && !alive(pid)
                && ip(&["netns", "del", name]).is_ok()
            {
                swept.push(name.to_string());
            }
        }
    }
    if let Ok(list) = ip(&["-o", "link", "show"]) {
        for line in list.lines() {
            let Some(name) = line
                .split(": ")
                .nth(1)
                .map(|n| n.split('@').next().unwrap_or(n))
            else {
                continue;
            };
            if let Some(pid) = owner(name, HOST_IF_PREFIX)
                && !alive(pid)
                && ip(&["link", "del", name]).is_ok()
            {
                swept.push(name.to_string());
            }
        }
    }
    swept
}

/// The pid in a name `<prefix><pid>x<k>…`, if it is one of ours.
fn owner<'a>(name: &'a str, prefix: &str) -> Option<&'a str> {
    let rest = name.strip_prefix(prefix)?;
    let (pid, tail) = rest.split_once('x')?;
    let k_ok = tail
        .split('-')
        .next()
        .is_some_and(|k| !k.is_empty() && k.bytes().all(|b| b.is_ascii_digit()));
    (!pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()) && k_ok).then_some(pid)
}

/// The namespaces of one run (removed on drop).
#[derive(Debug)]
pub struct Network {
    tag: String,
    host_if: String,
    subnet: u8,
    relays: usize,
    /// Namespaces created so far (relays, then the hub last).
    created: Vec<String>,
    /// Blackhole routes in place: (in relay, towards relay).
    blackholes: Vec<(usize, usize)>,
}

impl Network {
    /// Creates the hub, the host link and one namespace per relay.
    pub fn create(relays: usize) -> Result<Network, NetnsError> {
        if relays > RELAYS_MAX {
            return Err(NetnsError::TooMany(relays));
        }
        let pid = std::process::id();
        let k = RUNS.fetch_add(1, Ordering::Relaxed);
        let subnet = free_subnet(pid.wrapping_mul(7).wrapping_add(k))?;
        let mut net = Network {
            tag: format!("{PREFIX}{pid}x{k}"),
            host_if: format!("{HOST_IF_PREFIX}{pid}x{k}"),
            subnet,
            relays,
            created: Vec::new(),
            blackholes: Vec::new(),
        };
        // On an error `net` drops and removes what was made so far.
        net.build()?;
        Ok(net)
    }

    fn build(&mut self) -> Result<(), NetnsError> {
        let hub = self.hub();
        ip(&["netns", "add", &hub])?;
        self.created.push(hub.clone());
        ip(&["-n", &hub, "link", "set", "lo", "up"])?;
        ip(&["-n", &hub, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &hub, "link", "set", "br0", "up"])?;
        let host_if = self.host_if.clone();
        ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", "host", "netns", &hub,
        ])?;
        ip(&["-n", &hub, "link", "set", "host", "master", "br0", "up"])?;
        let host_cidr = format!("{}/24", self.host_ip());
        ip(&["addr", "add", &host_cidr, "dev", &host_if])?;
        ip(&["link", "set", &host_if, "up"])?;
        for i in 0..self.relays {
            let ns = self.namespace(i);
            ip(&["netns", "add", &ns])?;
            // Relays first in `created`, so drop deletes them before the hub.
            self.created.insert(0, ns.clone());
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            let port = format!("r{i}");
            ip(&[
                "-n", &hub, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns",
                &ns,
            ])?;
            ip(&["-n", &hub, "link", "set", &port, "master", "br0", "up"])?;
            let cidr = format!("{}/24", self.relay_ip(i));
            ip(&["-n", &ns, "addr", "add", &cidr, "dev", "eth0"])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
        }
        Ok(())
    }

    fn hub(&self) -> String {
        format!("{}-hub", self.tag)
    }

    /// The namespace relay `i` runs in.
    pub fn namespace(&self, i: usize) -> String {
        format!("{}-r{i}", self.tag)
    }

    /// Relay `i`'s address.
    pub fn relay_ip(&self, i: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, SUBNET_OCTET, self.subnet, (i + 1) as u8)
    }

    /// The host's address on the bridge (where clients come from).
    pub fn host_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, SUBNET_OCTET, self.subnet, HOST_OCTET)
    }

    /// A command that runs `program` inside relay `i`'s namespace.
    pub fn command_in(&self, i: usize, program: &std::path::Path) -> Command {
        let mut c = Command::new("ip");
        // `ip netns exec` execs the program in place, so the child's pid is
        // the program's and killing the child kills the program.
        c.args(["netns", "exec", &self.namespace(i)]).arg(program);
        c
    }

    /// Separates relays in different `sets` (relays in no set form one
    /// more set) until [`heal`](Self::heal). Replaces a partition in force.
    pub fn partition(&mut self, sets: &[Vec<u32>]) -> Result<(), NetnsError> {
        self.heal()?;
        let side = |r: usize| {
            sets.iter()
                .position(|s| s.contains(&(r as u32)))
                .unwrap_or(sets.len())
        };
        for a in 0..self.relays {
            for b in 0..self.relays {
                if a != b && side(a) != side(b) {
                    let to = format!("{}/32", self.relay_ip(b));
                    ip(&["-n", &self.namespace(a), "route", "add", "blackhole", &to])?;
                    self.blackholes.push((a, b));
                }
            }
        }
        Ok(())
    }

    /// Removes every partition route.
    pub fn heal(&mut self) -> Result<(), NetnsError> {
        while let Some((a, b)) = self.blackholes.pop() {
            let to = format!("{}/32", self.relay_ip(b));
            ip(&["-n", &self.namespace(a), "route", "del", "blackhole", &to])?;
        }
        Ok(())
    }

    /// True when the kernel has the netem qdisc (tried on relay 0's
    /// interface and removed again).
    pub fn netem_available(&self) -> bool {
        if self.relays == 0 {
            return false;
        }
        let ns = self.namespace(0);
        let added = tc(
            &ns,
            &[
                "qdisc", "add", "dev", "eth0", "root", "netem", "delay", "1ms",
            ],
        );
        if added.is_ok() {
            let _ = tc(&ns, &["qdisc", "del", "dev", "eth0", "root"]);
        }
        added.is_ok()
    }

    /// Puts `link` on every relay's interface with netem (all of a relay's
    /// outgoing traffic, its answers to clients included: netem has no
    /// per-destination rules and this kernel may lack the classful qdiscs
    /// that would add them). Returns what was applied.
    pub fn apply_link(&self, link: &Link) -> Result<String, NetnsError> {
        let args = netem_args(link);
        for i in 0..self.relays {
            let mut full = vec!["qdisc", "add", "dev", "eth0", "root", "netem"];
            full.extend(args.iter().map(String::as_str));
            tc(&self.namespace(i), &full)?;
        }
        Ok(format!("netem {}", args.join(" ")))
    }
}

fn tc(ns: &str, args: &[&str]) -> Result<String, NetnsError> {
    let mut full = vec!["netns", "exec", ns, "tc"];
    full.extend_from_slice(args);
    ip(&full)
}

/// netem arguments for a link model. Jitter maps to netem's own jitter
/// (uniform: centred on latency + max/2; normal: netem's normal table;
/// exponential: its mean as a normal spread, an approximation).
pub fn netem_args(link: &Link) -> Vec<String> {
    let mut a = Vec::new();
    let (delay, jitter, dist) = match &link.jitter {
        Jitter::None => (link.latency_ms, 0, None),
        Jitter::Uniform { max_ms } => (link.latency_ms + max_ms / 2, max_ms / 2, None),
        Jitter::Normal { stddev_ms, .. } => {
            (link.latency_ms, stddev_ms.round() as u64, Some("normal"))
        }
        Jitter::Exponential { mean_ms, .. } => {
            (link.latency_ms, mean_ms.round() as u64, Some("normal"))
        }
    };
    a.push("delay".into());
    a.push(format!("{delay}ms"));
    if jitter > 0 {
        a.push(format!("{jitter}ms"));
        if let Some(d) = dist {
            a.push("distribution".into());
            a.push(d.into());
        }
    }
    if link.loss > 0.0 {
        a.push("loss".into());
        a.push(format!("{}%", link.loss * 100.0));
    }
    if link.duplicate > 0.0 {
        a.push("duplicate".into());
        a.push(format!("{}%", link.duplicate * 100.0));
    }
    if link.reorder > 0.0 {
        a.push("reorder".into());
        a.push(format!("{}%", link.reorder * 100.0));
    }
    a
}

/// A third octet no address on this host uses yet, starting at `hint`.
fn free_subnet(hint: u32) -> Result<u8, NetnsError> {
    let used = ip(&["-o", "-4", "addr", "show"])?;
    (0..256u32)
        .map(|d| ((hint + d) % 256) as u8)
        .find(|s| !used.contains(&format!("10.{SUBNET_OCTET}.{s}.")))
        .ok_or(NetnsError::NoSubnet)
}

impl Drop for Network {
    fn drop(&mut self) {
        // Deleting a namespace destroys the veths in it and so their peers,
        // the host's interface included.
        for ns in self.created.drain(..) {
            if let Err(e) = ip(&["netns", "del", &ns]) {
                eprintln!("courier-sim: could not delete network namespace {ns}: {e}");
            }
        }
        // The kernel frees a deleted namespace's interfaces asynchronously;
        // delete the host end directly so the name is gone on return.
        let _ = ip(&["link", "del", &self.host_if]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_reads_only_our_names() {
        assert_eq!(owner("csim123x4-r0", PREFIX), Some("123"));
        assert_eq!(owner("csim123x4-hub", PREFIX), Some("123"));
        assert_eq!(owner("cs123x4", HOST_IF_PREFIX), Some("123"));
        assert_eq!(owner("csimfoo", PREFIX), None);
        assert_eq!(owner("cs0", HOST_IF_PREFIX), None);
        assert_eq!(owner("csimx1-r0", PREFIX), None);
    }

    #[test]
    fn netem_arguments_follow_the_link_model() {
        let link = Link {
            latency_ms: 20,
            jitter: Jitter::Uniform { max_ms: 10 },
            loss: 0.01,
            ..Link::default()
        };
        assert_eq!(netem_args(&link).join(" "), "delay 25ms 5ms loss 1%");
    }
}
