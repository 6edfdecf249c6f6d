//! Shared by the client's integration tests that run a real `courier serve`.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

pub const CLIENT: &str = env!("CARGO_BIN_EXE_courier-client");

/// Path of the `courier` relay binary, building it once if needed.
pub fn relay_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let dir = Path::new(CLIENT).parent().unwrap();
        let bin = dir.join("courier");
        if !bin.exists() {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let status = Command::new(cargo)
                .args(["build", "-p", "courier-node", "--bin", "courier"])
                .status()
                .expect("run cargo build for the relay");
            assert!(status.success(), "building the courier relay failed");
        }
        assert!(bin.exists(), "no relay binary at {}", bin.display());
        bin
    })
    .clone()
}
