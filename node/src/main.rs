//! `courier`: the relay daemon and its admin commands. See `--help` and
//! `docs/operator.md`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use courier_node::config::{self, Config, LogFormat, Registration};
use courier_node::{admin, identity, logging, serve};

/// mimalloc instead of glibc's malloc: the relay allocates and frees small
/// buffers (frames, JSON, envelopes) on every message from several threads,
/// where glibc's arenas showed up as the top symbols of the profile.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The Courier relay: serves clients over HTTP/WebSocket and federates with
/// other relays over libp2p/QUIC.
#[derive(Debug, Parser)]
#[command(name = "courier", version, about)]
struct Cli {
    /// Log format; overrides `[log] format`.
    #[arg(long, global = true, value_enum)]
    log_format: Option<LogFormat>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Args)]
struct DataDir {
    /// The relay's data directory (config, key, SQLite database).
    #[arg(long, env = "COURIER_DATA_DIR", default_value = config::DATA_DIR_DEFAULT)]
    data_dir: PathBuf,
}

/// Settings every relay-starting command accepts; each overrides the config
/// file and `COURIER_*` variables.
#[derive(Debug, clap::Args)]
struct Overrides {
    /// Relay name (the part after `@` in addresses).
    #[arg(long)]
    name: Option<String>,
    /// HTTP listen address, ADDR:PORT (port 0 picks a free port).
    #[arg(long, value_name = "ADDR:PORT")]
    http: Option<String>,
    /// Federation listen multiaddr, e.g. /ip4/0.0.0.0/udp/4433/quic-v1.
    #[arg(long, value_name = "MULTIADDR")]
    p2p: Option<String>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the relay (creates the data directory, key and config on first start).
    Serve {
        #[command(flatten)]
        data_dir: DataDir,
        #[command(flatten)]
        overrides: Overrides,
        /// sqlite://PATH or postgres://USER@HOST/DB; default SQLite in the data dir.
        #[arg(long, value_name = "URL")]
        database_url: Option<String>,
        /// Config file; default DATA_DIR/courier.toml.
        #[arg(long, env = "COURIER_CONFIG", value_name = "FILE")]
        config: Option<PathBuf>,
        /// Registration policy: open or invite.
        #[arg(long, value_enum)]
        registration: Option<RegistrationArg>,
    },
    /// Create a data directory: config file and relay key. Prints the PeerId
    /// and multiaddrs.
    Init {
        #[command(flatten)]
        data_dir: DataDir,
        #[command(flatten)]
        overrides: Overrides,
    },
    /// Print the relay's PeerId and full multiaddrs (…/p2p/PeerId).
    Id {
        #[command(flatten)]
        data_dir: DataDir,
        /// One JSON object instead of lines.
        #[arg(long)]
        json: bool,
    },
    /// Print a one-time registration code.
    Invite {
        #[command(flatten)]
        data_dir: DataDir,
        /// How long the code stays valid, in hours.
        #[arg(long, default_value_t = 7 * 24)]
        valid_hours: u64,
    },
    /// Users, devices, mailbox and outbox depth, peers.
    Status {
        #[command(flatten)]
        data_dir: DataDir,
        /// One JSON object instead of lines.
        #[arg(long)]
        json: bool,
    },
    /// Manage federation peers.
    #[command(subcommand)]
    Peer(PeerCommand),
}

#[derive(Debug, Subcommand)]
enum PeerCommand {
    /// Dial a relay and remember it; MULTIADDR ends in /p2p/PeerId.
    Add {
        #[command(flatten)]
        data_dir: DataDir,
        /// The peer's multiaddr.
        multiaddr: String,
    },
    /// List known peers.
    List {
        #[command(flatten)]
        data_dir: DataDir,
        /// One JSON object instead of lines.
        #[arg(long)]
        json: bool,
    },
    /// Stop federating with a peer: disconnect, stop redialling, refuse it
    /// until added again.
    Remove {
        #[command(flatten)]
        data_dir: DataDir,
        /// The peer's PeerId.
        peer_id: String,
    },
    /// Accept PEER_ID as the key of relay NAME from now on (after a
    /// legitimate key change; the first key seen for a name is pinned).
    Pin {
        #[command(flatten)]
        data_dir: DataDir,
        /// The relay name.
        name: String,
        /// Its new PeerId.
        peer_id: String,
    },
}

/// `courier peer …`: through the running relay's control socket, or on
/// `peers.json` when none runs (see `docs/federation.md`).
async fn peer(command: PeerCommand) -> anyhow::Result<()> {
    use courier_node::federation::control;
    match command {
        PeerCommand::Add {
            data_dir,
            multiaddr,
        } => println!(
            "{}",
            control::peer_add(&data_dir.data_dir, &multiaddr).await?
        ),
        PeerCommand::Remove { data_dir, peer_id } => {
            println!(
                "{}",
                control::peer_remove(&data_dir.data_dir, &peer_id).await?
            )
        }
        PeerCommand::Pin {
            data_dir,
            name,
            peer_id,
        } => println!(
            "{}",
            control::peer_pin(&data_dir.data_dir, &name, &peer_id).await?
        ),
        PeerCommand::List { data_dir, json } => {
            let config = admin::existing_config(&data_dir.data_dir)?;
            let peers = admin::peers(&data_dir.data_dir, &config).await?;
            if json {
                println!("{}", serde_json::to_string(&peers)?);
            } else {
                print!("{}", control::table(&peers, now_ms()));
            }
        }
    }
    Ok(())
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum RegistrationArg {
    Open,
    Invite,
}

/// Loads the config (file, then environment), then applies flags.
fn effective_config(
    data_dir: &std::path::Path,
    file: Option<PathBuf>,
    overrides: &Overrides,
    log_format: Option<LogFormat>,
) -> anyhow::Result<Config> {
    let (path, required) = match file {
        Some(path) => (path, true),
        None => (data_dir.join(config::CONFIG_FILE), false),
    };
    let mut config = Config::load(&path, required)?;
    config.apply_env(std::env::vars())?;
    if let Some(name) = &overrides.name {
        config.name = name.clone();
    }
    if let Some(http) = &overrides.http {
        config.http_listen = http.clone();
    }
    if let Some(p2p) = &overrides.p2p {
        config.federation.p2p = p2p.clone();
    }
    if let Some(format) = log_format {
        config.log.format = format;
    }
    config.validate()?;
    Ok(config)
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve {
            data_dir,
            overrides,
            database_url,
            config,
            registration,
        } => {
            let mut config =
                effective_config(&data_dir.data_dir, config, &overrides, cli.log_format)?;
            if let Some(url) = database_url {
                config.database_url = Some(url);
            }
            if let Some(r) = registration {
                config.registration = Some(match r {
                    RegistrationArg::Open => Registration::Open,
                    RegistrationArg::Invite => Registration::Invite,
                });
            }
            logging::init(&config.log);
            serve::run(&data_dir.data_dir, config).await
        }
        Command::Init {
            data_dir,
            overrides,
        } => {
            let config = effective_config(&data_dir.data_dir, None, &overrides, cli.log_format)?;
            let report = admin::init(&data_dir.data_dir, &config)?;
            println!("{}", report.peer_id);
            for addr in report.multiaddrs {
                println!("{addr}");
            }
            Ok(())
        }
        Command::Id { data_dir, json } => {
            let config = effective_config(
                &data_dir.data_dir,
                None,
                &Overrides {
                    name: None,
                    http: None,
                    p2p: None,
                },
                cli.log_format,
            )?;
            let key = identity::load(&data_dir.data_dir)?;
            let peer = identity::peer_id(&key);
            let addrs = identity::full_multiaddrs(&admin::p2p_addresses(&config), &peer);
            if json {
                println!(
                    "{}",
                    serde_json::json!({"peer_id": peer.to_string(), "multiaddrs": addrs, "name": config.name})
                );
            } else {
                println!("{peer}");
                for addr in addrs {
                    println!("{addr}");
                }
            }
            Ok(())
        }
        Command::Invite {
            data_dir,
            valid_hours,
        } => {
            let config = admin::existing_config(&data_dir.data_dir)?;
            let code = admin::invite(&data_dir.data_dir, &config, valid_hours).await?;
            println!("{code}");
            Ok(())
        }
        Command::Status { data_dir, json } => {
            let config = admin::existing_config(&data_dir.data_dir)?;
            let status = admin::status(&data_dir.data_dir, &config).await?;
            if json {
                println!("{}", serde_json::to_string(&status)?);
            } else {
                print!("{status}");
            }
            Ok(())
        }
        Command::Peer(command) => peer(command).await,
    }
}

fn main() -> ExitCode {
    // Before anything creates a file (or a thread that could).
    admin::private_files();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
