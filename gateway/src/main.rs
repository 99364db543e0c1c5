//! The `causeway` command: run the gateway, or check a config file.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use causeway::config::{Config, ConfigError};

// Frames are read into fresh buffers while earlier ones are still on their way
// out; glibc's malloc returns such large blocks to the kernel and faults them in
// again, a page at a time, on the next request. jemalloc keeps and reuses them.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(name = "causeway", version, about = "A Kafka-protocol gateway")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway, from a config file or from flags for one backend cluster.
    Run {
        /// TOML config file; the flags below are for a config-free start.
        #[arg(long, conflicts_with_all = ["listen", "backend"])]
        config: Option<PathBuf>,
        /// Address clients connect to, IP:PORT.
        #[arg(long, requires = "backend")]
        listen: Option<String>,
        /// A bootstrap broker of the backend cluster, HOST:PORT (repeatable).
        #[arg(long)]
        backend: Vec<String>,
        /// Address clients are told to connect to (defaults to --listen).
        #[arg(long)]
        advertised: Option<String>,
        /// Address of the admin HTTP endpoint (metrics, health).
        #[arg(long)]
        admin: Option<String>,
    },
    /// Validate a config file: print every problem with its field path; exit 1 if any.
    Check {
        #[arg(long)]
        config: PathBuf,
    },
    /// Make a user's entry for the SASL credentials file, reading the
    /// password from standard input (one line): salted SCRAM keys, never the
    /// password itself.
    SaslUser {
        /// The user name.
        user: String,
        /// PBKDF2 iterations (4096 or more).
        #[arg(long, default_value_t = 8192)]
        iterations: u32,
    },
    /// Cluster links: create, list, describe, delete (through the admin API).
    Link {
        #[command(flatten)]
        admin: AdminArgs,
        #[command(subcommand)]
        command: LinkCommand,
    },
    /// Mirror topics: create, list, describe, pause, resume, promote, failover.
    Mirror {
        #[command(flatten)]
        admin: AdminArgs,
        #[command(subcommand)]
        command: MirrorCommand,
    },
    /// The hybrid bridge: `tunnel status` lists peers, connections and their state.
    Tunnel {
        #[command(flatten)]
        admin: AdminArgs,
        #[command(subcommand)]
        command: TunnelCommand,
    },
}

#[derive(Subcommand)]
enum TunnelCommand {
    /// Peers, connections, state, round-trip time, losses, streams, reconnects.
    Status,
}

#[derive(clap::Args)]
struct AdminArgs {
    /// The gateway's admin endpoint, HOST:PORT.
    #[arg(long, global = true, env = "CAUSEWAY_ADMIN", default_value = "127.0.0.1:9644")]
    admin: String,
    /// Print the admin API's JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Subcommand)]
enum LinkCommand {
    /// Link a source cluster to a destination cluster (names from the config).
    Create {
        name: String,
        #[arg(long)]
        source: String,
        #[arg(long)]
        destination: String,
        /// A link option, KEY=VALUE (repeatable): cluster.link.prefix,
        /// mirror.start.offset.spec (earliest, latest).
        #[arg(long = "config", value_name = "KEY=VALUE")]
        config: Vec<String>,
    },
    List,
    Describe { name: String },
    /// Delete a link whose mirrors are all promoted, failed over or failed.
    Delete { name: String },
}

#[derive(Subcommand)]
enum MirrorCommand {
    /// Mirror a source topic over a link (named with the link's prefix unless --name).
    Create {
        topic: String,
        #[arg(long)]
        link: String,
        #[arg(long)]
        name: Option<String>,
    },
    List {
        #[arg(long)]
        link: Option<String>,
    },
    /// State and per-partition lag.
    Describe { name: String },
    /// Stop copying; resume picks up where it stopped.
    Pause { name: String },
    Resume { name: String },
    /// Make the mirror a normal topic once it has no lag.
    Promote {
        name: String,
        /// Also route the source topic's name to the mirror, so clients carry on
        /// through Causeway unchanged.
        #[arg(long)]
        switch_route: bool,
    },
    /// Make the mirror a normal topic now, whatever its lag.
    Failover {
        name: String,
        /// Also route the source topic's name to the mirror.
        #[arg(long)]
        switch_route: bool,
    },
}

/// Runs one admin API call and prints its answer; exit 1 on an error answer.
fn admin_call(
    admin: &AdminArgs,
    method: hyper::Method,
    path: &str,
    body: Option<serde_json::Value>,
    show: fn(&serde_json::Value) -> String,
) -> ExitCode {
    let target = causeway::cli::Target {
        admin: admin.admin.clone(),
        token: std::env::var("CAUSEWAY_ADMIN_TOKEN").ok().filter(|t| !t.is_empty()),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(causeway::cli::call(&target, method, path, body)) {
        Ok((status, v)) if (200..300).contains(&status) => {
            if admin.json {
                println!("{v}");
            } else {
                print!("{}", show(&v));
            }
            ExitCode::SUCCESS
        }
        Ok((status, v)) => {
            eprintln!("causeway: {}", causeway::cli::error_of(status, &v));
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("causeway: {e}");
            ExitCode::FAILURE
        }
    }
}

fn link_command(admin: &AdminArgs, command: LinkCommand) -> ExitCode {
    use causeway::cli::{link_text, links_table};
    use hyper::Method;
    match command {
        LinkCommand::Create { name, source, destination, config } => {
            let mut options = serde_json::Map::new();
            for kv in config {
                let Some((k, v)) = kv.split_once('=') else {
                    eprintln!("causeway: --config {kv}: expected KEY=VALUE");
                    return ExitCode::from(2);
                };
                options.insert(k.trim().to_string(), serde_json::Value::String(v.trim().to_string()));
            }
            let body = serde_json::json!({"name": name, "source": source, "destination": destination, "config": options});
            admin_call(admin, Method::POST, "/links", Some(body), link_text)
        }
        LinkCommand::List => admin_call(admin, Method::GET, "/links", None, links_table),
        LinkCommand::Describe { name } => admin_call(admin, Method::GET, &format!("/links/{name}"), None, link_text),
        LinkCommand::Delete { name } => {
            admin_call(admin, Method::DELETE, &format!("/links/{name}"), None, |v| format!("deleted link {}\n", v["deleted"].as_str().unwrap_or("?")))
        }
    }
}

fn mirror_command(admin: &AdminArgs, command: MirrorCommand) -> ExitCode {
    use causeway::cli::{mirror_text, mirrors_table};
    use hyper::Method;
    let op = |name: &str, op: &str| admin_call(admin, Method::POST, &format!("/mirrors/{name}/{op}"), None, mirror_text);
    let stop = |name: &str, op: &str, switch_route: bool| {
        let body = switch_route.then(|| serde_json::json!({"switch_route": true}));
        admin_call(admin, Method::POST, &format!("/mirrors/{name}/{op}"), body, mirror_text)
    };
    match command {
        MirrorCommand::Create { topic, link, name } => {
            let body = serde_json::json!({"topic": topic, "link": link, "name": name});
            admin_call(admin, Method::POST, "/mirrors", Some(body), mirror_text)
        }
        MirrorCommand::List { link } => {
            let path = match link {
                Some(l) => format!("/mirrors?link={l}"),
                None => "/mirrors".into(),
            };
            admin_call(admin, Method::GET, &path, None, mirrors_table)
        }
        MirrorCommand::Describe { name } => admin_call(admin, Method::GET, &format!("/mirrors/{name}"), None, mirror_text),
        MirrorCommand::Pause { name } => op(&name, "pause"),
        MirrorCommand::Resume { name } => op(&name, "resume"),
        MirrorCommand::Promote { name, switch_route } => stop(&name, "promote", switch_route),
        MirrorCommand::Failover { name, switch_route } => stop(&name, "failover", switch_route),
    }
}

/// `[users.NAME]` with SCRAM-SHA-256 and -512 keys for the password on stdin.
fn sasl_user(user: &str, iterations: u32) -> Result<String, String> {
    use causeway::sasl::{Hash, ScramCredential, MAX_ITERATIONS, MIN_ITERATIONS};
    if !(MIN_ITERATIONS..=MAX_ITERATIONS).contains(&iterations) {
        return Err(format!("--iterations {iterations} is outside {MIN_ITERATIONS}..={MAX_ITERATIONS}"));
    }
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).map_err(|e| format!("cannot read the password: {e}"))?;
    let password = line.trim_end_matches(['\r', '\n']);
    if password.is_empty() {
        return Err("no password on standard input".into());
    }
    let sha256 = ScramCredential::new(Hash::Sha256, password, iterations)?;
    let sha512 = ScramCredential::new(Hash::Sha512, password, iterations)?;
    Ok(format!(
        "[users.{}]\nscram-sha-256 = \"{}\"\nscram-sha-512 = \"{}\"\n",
        toml_key(user),
        sha256.to_text(),
        sha512.to_text()
    ))
}

/// A TOML key: bare if it can be, quoted otherwise.
fn toml_key(name: &str) -> String {
    if !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
        name.to_string()
    } else {
        format!("{name:?}")
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Link { admin, command } => link_command(&admin, command),
        Command::Mirror { admin, command } => mirror_command(&admin, command),
        Command::Tunnel { admin, command: TunnelCommand::Status } => {
            admin_call(&admin, hyper::Method::GET, "/tunnel", None, causeway::cli::tunnel_table)
        }
        Command::SaslUser { user, iterations } => match sasl_user(&user, iterations) {
            Ok(entry) => {
                print!("{entry}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("causeway sasl-user: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Check { config } => match Config::load(&config) {
            Ok(_) => {
                println!("{}: ok", config.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        },
        Command::Run {
            config,
            listen,
            backend,
            advertised,
            admin,
        } => {
            init_tracing();
            let config_path = config.clone();
            let config = match config {
                Some(path) => Config::load(&path),
                None => {
                    let Some(listen) = listen else {
                        eprintln!("causeway run: give --config FILE, or --listen IP:PORT with --backend HOST:PORT");
                        return ExitCode::from(2);
                    };
                    let mut c = Config::single(listen, backend, admin.clone());
                    c.gateway.advertised = advertised.clone();
                    let problems = c.validate();
                    if problems.is_empty() {
                        Ok(c)
                    } else {
                        Err(ConfigError::Invalid {
                            path: "command line".into(),
                            problems,
                        })
                    }
                }
            };
            let config = match config {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::FAILURE;
                }
            };
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            if let Some(n) = config.gateway.worker_threads {
                builder.worker_threads(n);
            }
            let runtime = match builder.enable_all().build() {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            runtime.block_on(async move {
                let (running, serving) = match causeway::start(config, config_path).await {
                    Ok(x) => x,
                    Err(e) => {
                        eprintln!("causeway: {e}");
                        return ExitCode::FAILURE;
                    }
                };
                tokio::spawn(reload_on_hangup(running.routes.clone()));
                let tunnel = running.tunnel.clone();
                let code = tokio::select! {
                    _ = serving => ExitCode::FAILURE,
                    _ = shutdown_signal() => {
                        tracing::info!("shutting down");
                        ExitCode::SUCCESS
                    }
                };
                if let Some(tunnel) = tunnel {
                    tunnel.drain().await;
                }
                code
            })
        }
    }
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

/// SIGHUP re-reads the config file and applies its routes.
async fn reload_on_hangup(routes: std::sync::Arc<causeway::routing::RouteControl>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hup) = signal(SignalKind::hangup()) else { return };
        while hup.recv().await.is_some() {
            match routes.reload() {
                Ok(r) => tracing::info!(routes = r.len(), "config re-read on SIGHUP"),
                Err(causeway::routing::RouteChangeError::Invalid(problems)) => {
                    for p in problems {
                        tracing::error!(field = %p.field, "config not reloaded: {}", p.message);
                    }
                }
                Err(causeway::routing::RouteChangeError::NoConfigFile) => {
                    tracing::warn!("SIGHUP ignored: started without --config");
                }
            }
        }
    }
    #[cfg(not(unix))]
    let _ = routes;
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("CAUSEWAY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour only on a terminal: a log file or journal gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    tracing_subscriber::fmt().with_env_filter(filter).with_target(false).with_ansi(ansi).init();
}
