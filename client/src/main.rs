//! `courier-client`: a user's command-line client (contract in `shared/CLI.md`).
//!
//! Exit codes: 0 success, 1 other failure, 2 usage or bad input, 3 not
//! registered, 4 unknown recipient, 5 relay unreachable, 6 identity changed.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use courier_client::{
    Client, ClientConfig, ClientParts, Error, HttpTransport, Message, SqliteStore, SystemClock,
};
use courier_protocol::Address;

/// Courier end-to-end encrypted messaging client.
#[derive(Debug, Parser)]
#[command(name = "courier-client", version, about)]
struct Cli {
    /// State directory: this device's keys, sessions and messages (created 0700).
    #[arg(
        long,
        env = "COURIER_CLIENT_STATE",
        global = true,
        default_value = "./courier-client-state"
    )]
    state: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create an account and this device; prints the full address USER@RELAYNAME.
    Register {
        /// The username (or USER@RELAYNAME to name the relay explicitly).
        user: String,
        /// The relay's HTTP URL, e.g. http://127.0.0.1:8080.
        #[arg(long)]
        relay: String,
        /// Invite code, for relays with invite-only registration.
        #[arg(long)]
        invite: Option<String>,
    },
    /// Print this device's address and device id.
    Whoami,
    /// Send TEXT to ADDRESS; exits 0 once the home relay stored it.
    Send {
        /// Recipient, e.g. bob@relay-b.example.
        address: String,
        /// The message.
        text: String,
    },
    /// Print and acknowledge new messages ("SENDER: TEXT", or JSON lines).
    Recv {
        /// Keep listening on the WebSocket for this many seconds.
        #[arg(long)]
        wait: Option<u64>,
        /// One JSON object per line: from, text, group, sent_at (and more).
        #[arg(long)]
        json: bool,
    },
    /// Manage and message groups.
    Group {
        #[command(subcommand)]
        command: GroupCommand,
    },
    /// On a new device: request to join ADDRESS's account; prints a code and
    /// waits until an existing device approves it.
    Link {
        /// The existing account, e.g. alice@relay-a.example.
        address: String,
        /// The account's home relay HTTP URL.
        #[arg(long)]
        relay: String,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 600)]
        timeout: u64,
    },
    /// On an existing device: approve the new device that shows CODE.
    Approve {
        /// The code the new device printed.
        code: String,
    },
    /// List this account's devices.
    Devices,
    /// Show the safety number shared with ADDRESS (compare it out of band).
    SafetyNumber {
        /// The contact.
        address: String,
    },
    /// Accept ADDRESS's new identity keys after an identity change.
    Trust {
        /// The contact.
        address: String,
    },
    /// Print the stored message history.
    History {
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum GroupCommand {
    /// Create group NAME with the given members.
    Create {
        /// Local name of the group.
        name: String,
        /// Members (besides you).
        #[arg(required = true)]
        addresses: Vec<String>,
    },
    /// Add members.
    Add {
        /// The group.
        name: String,
        /// Members to add.
        #[arg(required = true)]
        addresses: Vec<String>,
    },
    /// Remove members; they cannot read later messages.
    Remove {
        /// The group.
        name: String,
        /// Members to remove.
        #[arg(required = true)]
        addresses: Vec<String>,
    },
    /// Send TEXT to every member.
    Send {
        /// The group.
        name: String,
        /// The message.
        text: String,
    },
    /// List groups and members.
    List,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("COURIER_CLIENT_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// Help and version print as clap renders them; a usage error is one line
/// on stderr and exit code 2, like every other failure.
fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    match e.kind() {
        ErrorKind::DisplayHelp
        | ErrorKind::DisplayVersion
        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => e.exit(),
        _ => {
            // The reason is the first paragraph; usage and tips follow it.
            let text = e.render().to_string();
            let reason: Vec<&str> = text
                .lines()
                .take_while(|l| !l.trim().is_empty())
                .map(str::trim)
                .collect();
            eprintln!("{} (see --help)", reason.join(" "));
            ExitCode::from(2)
        }
    }
}

fn parse_address(text: &str) -> Result<Address, Error> {
    Address::parse(text).map_err(|e| Error::Invalid(format!("bad address {text:?}: {e}")))
}

fn parse_addresses(texts: &[String]) -> Result<Vec<Address>, Error> {
    texts.iter().map(|t| parse_address(t)).collect()
}

fn create_state_dir(dir: &Path) -> Result<(), Error> {
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::Invalid(format!("cannot create state dir {}: {e}", dir.display())))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| Error::Invalid(format!("cannot restrict {}: {e}", dir.display())))?;
    }
    Ok(())
}

fn config() -> Result<ClientConfig, Error> {
    let mut config = ClientConfig {
        // Fault injection for crash tests (docs/client.md): persist, then stop before acking.
        fail_before_ack: std::env::var("COURIER_CLIENT_FAULT").as_deref() == Ok("exit-before-ack"),
        ..ClientConfig::default()
    };
    if let Ok(ms) = std::env::var("COURIER_CLIENT_DEVICE_LIST_REFRESH_MS") {
        config.device_list_refresh_ms = ms.parse().map_err(|_| {
            Error::Invalid("COURIER_CLIENT_DEVICE_LIST_REFRESH_MS must be a number".into())
        })?;
    }
    Ok(config)
}

async fn open(state: &Path, relay_url: Option<&str>) -> Result<(Client, Arc<SqliteStore>), Error> {
    create_state_dir(state)?;
    let store = Arc::new(SqliteStore::open(&state.join("client.db")).await?);
    let url = match relay_url {
        Some(url) => url.to_owned(),
        None => match Client::stored_account(store.as_ref()).await? {
            Some(a) => a.relay_url,
            None => return Err(Error::NotRegistered),
        },
    };
    let transport = Arc::new(HttpTransport::new(&url)?);
    let client = Client::open(ClientParts {
        transport,
        store: store.clone(),
        clock: Arc::new(SystemClock),
        rng_seed: None,
        config: config()?,
    })
    .await?;
    Ok((client, store))
}

/// Names the relay might have, for registration: the part after `@` of the
/// USER argument, then the URL's host, then "localhost" (the default name).
fn relay_name_candidates(user: &str, url: &str) -> Vec<String> {
    let mut out = Vec::new();
    if let Some((_, relay)) = user.split_once('@') {
        out.push(relay.to_owned());
        return out;
    }
    let host = url
        .split("://")
        .nth(1)
        .unwrap_or(url)
        .split(['/', ':'])
        .next()
        .unwrap_or("");
    if !host.is_empty() {
        out.push(host.to_owned());
    }
    out.push("localhost".to_owned());
    out
}

fn print_message(m: &Message, as_json: bool) -> Result<(), Error> {
    let mut out = std::io::stdout().lock();
    let line = if as_json {
        serde_json::json!({
            "from": m.from.to_string(),
            "text": m.text,
            "group": m.group,
            "sent_at": m.sent_ms,
            "to": m.to.as_ref().map(|a| a.to_string()),
            "id": m.id,
            "device": m.from_device.0,
            "outgoing": m.outgoing,
        })
        .to_string()
    } else {
        let mut who = m.from.to_string();
        if let Some(g) = &m.group {
            who = format!("{who} [{g}]");
        } else if let Some(to) = &m.to {
            who = format!("{who} -> {to}");
        }
        format!("{who}: {}", m.text)
    };
    writeln!(out, "{line}")
        .and_then(|_| out.flush())
        .map_err(|e| Error::Invalid(format!("cannot write output: {e}")))
}

async fn run(cli: Cli) -> Result<(), Error> {
    match cli.command {
        Command::Register {
            user,
            relay,
            invite,
        } => {
            let (client, _) = open(&cli.state, Some(&relay)).await?;
            let username = user.split('@').next().unwrap_or(&user).to_owned();
            let candidates = relay_name_candidates(&user, &relay);
            let address = client
                .register(&username, invite.as_deref(), &relay, &candidates)
                .await?;
            println!("{address}");
        }
        Command::Whoami => {
            let (client, _) = open(&cli.state, None).await?;
            let account = client.account().await.ok_or(Error::NotRegistered)?;
            println!("{} (device {})", account.address, account.device);
        }
        Command::Send { address, text } => {
            let to = parse_address(&address)?;
            let (client, _) = open(&cli.state, None).await?;
            client.send(&to, &text).await?;
        }
        Command::Recv { wait, json } => {
            let (client, _) = open(&cli.state, None).await?;
            client.account().await.ok_or(Error::NotRegistered)?;
            // First whatever an earlier run stored but did not show.
            for m in client.take_inbox().await? {
                print_message(&m, json)?;
            }
            match wait {
                Some(secs) => {
                    let mut failed = None;
                    client
                        .listen(Duration::from_secs(secs), |m| {
                            if let Err(e) = print_message(&m, json) {
                                failed = Some(e);
                            }
                        })
                        .await?;
                    if let Some(e) = failed {
                        return Err(e);
                    }
                }
                None => {
                    for m in client.recv().await? {
                        print_message(&m, json)?;
                    }
                }
            }
        }
        Command::Group { command } => {
            let (client, _) = open(&cli.state, None).await?;
            match command {
                GroupCommand::Create { name, addresses } => {
                    client
                        .group_create(&name, &parse_addresses(&addresses)?)
                        .await?;
                }
                GroupCommand::Add { name, addresses } => {
                    client
                        .group_add(&name, &parse_addresses(&addresses)?)
                        .await?;
                }
                GroupCommand::Remove { name, addresses } => {
                    client
                        .group_remove(&name, &parse_addresses(&addresses)?)
                        .await?;
                }
                GroupCommand::Send { name, text } => {
                    client.group_send(&name, &text).await?;
                }
                GroupCommand::List => {
                    for (name, members) in client.groups().await? {
                        let members: Vec<String> = members.iter().map(|a| a.to_string()).collect();
                        println!("{name}: {}", members.join(" "));
                    }
                }
            }
        }
        Command::Link {
            address,
            relay,
            timeout,
        } => {
            let address = parse_address(&address)?;
            let (client, _) = open(&cli.state, Some(&relay)).await?;
            let pending = client.link_start(&address).await?;
            println!("{}", pending.code);
            eprintln!(
                "run `courier-client approve {}` on an existing device of {address}",
                pending.code
            );
            let finish = client.link_finish(pending, &relay, Duration::from_millis(300));
            let account = tokio::time::timeout(Duration::from_secs(timeout), finish)
                .await
                .map_err(|_| Error::LinkExpired)??;
            println!("{} (device {})", account.address, account.device);
        }
        Command::Approve { code } => {
            let (client, _) = open(&cli.state, None).await?;
            let device = client.approve(&code).await?;
            println!("approved device {device}");
        }
        Command::Devices => {
            let (client, _) = open(&cli.state, None).await?;
            for d in client.devices().await? {
                let this = if d.this_device { " (this device)" } else { "" };
                println!("{} {}{this}", d.device, d.fingerprint);
            }
        }
        Command::SafetyNumber { address } => {
            let address = parse_address(&address)?;
            let (client, _) = open(&cli.state, None).await?;
            println!("{}", client.safety_number(&address).await?);
        }
        Command::Trust { address } => {
            let address = parse_address(&address)?;
            let (client, _) = open(&cli.state, None).await?;
            client.trust(&address).await?;
            println!("now trusting the current keys of {address}");
        }
        Command::History { json } => {
            let (client, _) = open(&cli.state, None).await?;
            for m in client.history().await? {
                print_message(&m, json)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_name_candidates_prefer_an_explicit_name() {
        assert_eq!(
            relay_name_candidates("alice@relay-a.example", "http://127.0.0.1:9"),
            ["relay-a.example"]
        );
        assert_eq!(
            relay_name_candidates("alice", "http://relay.example:8080/"),
            ["relay.example", "localhost"]
        );
    }

    #[test]
    fn cli_parses_the_contract() {
        Cli::try_parse_from([
            "courier-client",
            "--state",
            "d",
            "recv",
            "--wait",
            "3",
            "--json",
        ])
        .unwrap();
        Cli::try_parse_from([
            "courier-client",
            "--state",
            "d",
            "group",
            "create",
            "g",
            "a@b",
        ])
        .unwrap();
        assert!(
            Cli::try_parse_from(["courier-client", "--state", "d", "group", "create", "g"])
                .is_err()
        );
    }
}
