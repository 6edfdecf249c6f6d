//! "Logic without IO", enforced by the crate graph: nothing `courier-relay`
//! pulls in at run time (its normal dependencies, transitively, with the
//! workspace's features as cargo resolves them) is a database driver, an
//! async runtime or a network stack. The stores live in `courier-store-sql`
//! and the swarm in `courier-node`.

use std::collections::{HashMap, HashSet};
use std::process::Command;

use serde_json::Value;

/// Package names the relay must never depend on, by prefix.
const FORBIDDEN: &[&str] = &["sqlx", "tokio", "libp2p"];

/// The host's target triple, as cargo reports it.
fn host() -> String {
    let output = Command::new(env!("CARGO"))
        .arg("-vV")
        .output()
        .expect("cargo -vV runs");
    let version = String::from_utf8(output.stdout).expect("utf-8");
    version
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .expect("cargo -vV names the host")
        .to_owned()
}

#[test]
fn the_relay_pulls_in_no_database_runtime_or_network_crate() {
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
    // This platform's graph only: the other platforms' packages may not
    // be downloaded, and `--offline` keeps the test off the network.
    let output = Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1", "--offline"])
        .args(["--filter-platform", &host()])
        .args(["--manifest-path", manifest])
        .output()
        .expect("cargo metadata runs");
    assert!(
        output.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let metadata: Value = serde_json::from_slice(&output.stdout).expect("metadata is JSON");
    let names: HashMap<&str, &str> = metadata["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .map(|p| {
            (
                p["id"].as_str().expect("id"),
                p["name"].as_str().expect("name"),
            )
        })
        .collect();
    let nodes: HashMap<&str, &Value> = metadata["resolve"]["nodes"]
        .as_array()
        .expect("resolve graph")
        .iter()
        .map(|n| (n["id"].as_str().expect("id"), n))
        .collect();
    let relay = names
        .iter()
        .find(|(_, name)| **name == "courier-relay")
        .map(|(id, _)| *id)
        .expect("courier-relay is in the workspace");

    // Walk normal edges only: dev-dependencies are not in the relay, and
    // build-dependencies run at build time.
    let mut seen = HashSet::from([relay]);
    let mut path_to: HashMap<&str, &str> = HashMap::new();
    let mut queue = vec![relay];
    while let Some(id) = queue.pop() {
        for dep in nodes[id]["deps"].as_array().expect("deps") {
            let normal = dep["dep_kinds"]
                .as_array()
                .expect("dep_kinds")
                .iter()
                .any(|k| k["kind"].is_null());
            let pkg = dep["pkg"].as_str().expect("pkg");
            if normal && seen.insert(pkg) {
                path_to.insert(pkg, id);
                queue.push(pkg);
            }
        }
    }
    assert!(seen.len() > 1, "the walk found the relay's dependencies");
    let mut forbidden: Vec<String> = seen
        .iter()
        .filter(|id| FORBIDDEN.iter().any(|f| names[**id].starts_with(f)))
        .map(|id| {
            // How it got in: the chain of dependents up to the relay.
            let mut chain = vec![names[*id]];
            let mut at = *id;
            while let Some(parent) = path_to.get(at) {
                chain.push(names[*parent]);
                at = parent;
            }
            chain.reverse();
            chain.join(" -> ")
        })
        .collect();
    forbidden.sort();
    assert!(
        forbidden.is_empty(),
        "courier-relay depends on IO crates: {forbidden:#?}"
    );
}
