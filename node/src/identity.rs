//! The relay's Ed25519 key: `<data-dir>/relay.key`, in libp2p's protobuf
//! keypair encoding so the federation swarm uses it as its PeerId.

use std::io::Write;
use std::path::{Path, PathBuf};

use libp2p_identity::{Keypair, PeerId};

/// Name of the key file inside the data directory.
pub const KEY_FILE: &str = "relay.key";

/// Why the relay key could not be loaded or created.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Reading or writing the file failed.
    #[error("{path}: {source}")]
    Io {
        /// The key file.
        path: PathBuf,
        /// The IO error.
        source: std::io::Error,
    },
    /// The file is not a libp2p protobuf-encoded keypair.
    #[error("{path}: not a relay key (libp2p protobuf keypair): {message}")]
    Decode {
        /// The key file.
        path: PathBuf,
        /// What the decoder said.
        message: String,
    },
}

/// Loads `<data-dir>/relay.key`.
pub fn load(data_dir: &Path) -> Result<Keypair, KeyError> {
    let path = data_dir.join(KEY_FILE);
    let bytes = std::fs::read(&path).map_err(|source| KeyError::Io {
        path: path.clone(),
        source,
    })?;
    Keypair::from_protobuf_encoding(&bytes).map_err(|e| KeyError::Decode {
        path,
        message: e.to_string(),
    })
}

/// Loads the key, or creates a new Ed25519 key (file mode 0600) if there
/// is none. Returns the key and whether it was created.
pub fn load_or_create(data_dir: &Path) -> Result<(Keypair, bool), KeyError> {
    let path = data_dir.join(KEY_FILE);
    if path.exists() {
        return load(data_dir).map(|k| (k, false));
    }
    let key = Keypair::generate_ed25519();
    let bytes = key.to_protobuf_encoding().map_err(|e| KeyError::Decode {
        path: path.clone(),
        message: e.to_string(),
    })?;
    let io = |source| KeyError::Io {
        path: path.clone(),
        source,
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(&path).map_err(io)?;
    file.write_all(&bytes).map_err(io)?;
    file.sync_all().map_err(io)?;
    Ok((key, true))
}

/// The relay's PeerId.
pub fn peer_id(key: &Keypair) -> PeerId {
    key.public().to_peer_id()
}

/// Full multiaddrs other relays dial: each listen or external address with
/// `/p2p/<PeerId>` appended. An unspecified IP (`0.0.0.0`, `::`) is shown
/// as loopback, since that is the one address known to reach it.
pub fn full_multiaddrs(addresses: &[String], peer: &PeerId) -> Vec<String> {
    addresses
        .iter()
        .map(|a| {
            let a = a
                .replace("/ip4/0.0.0.0/", "/ip4/127.0.0.1/")
                .replace("/ip6/::/", "/ip6/::1/");
            format!("{}/p2p/{peer}", a.trim_end_matches('/'))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_is_created_once_with_owner_only_permissions() {
        let dir = tempfile::tempdir().unwrap();
        let (a, created) = load_or_create(dir.path()).unwrap();
        assert!(created);
        let (b, created) = load_or_create(dir.path()).unwrap();
        assert!(!created);
        assert_eq!(peer_id(&a), peer_id(&b));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn garbage_key_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(KEY_FILE), b"not a key").unwrap();
        let err = load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("not a relay key"), "{err}");
    }

    #[test]
    fn multiaddrs_end_in_the_peer_id() {
        let key = Keypair::generate_ed25519();
        let peer = peer_id(&key);
        let addrs = full_multiaddrs(&["/ip4/0.0.0.0/udp/4433/quic-v1".into()], &peer);
        assert_eq!(
            addrs,
            vec![format!("/ip4/127.0.0.1/udp/4433/quic-v1/p2p/{peer}")]
        );
    }
}
