//! `spin-host up [--from spin.toml] [--listen 127.0.0.1:3000] [--variable name=value]...
//! [--runtime-config-file FILE] [--state-dir DIR] [--quiet]`: runs the app as `spin up` would, for tests
//! and local use where the Spin CLI is not available. Its options are a subset of `spin up`'s, with the
//! same meanings, so one command line drives either.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};
use spin_host::{serve, App, HostOptions, Output, StateDir};

#[derive(Parser)]
#[command(
    name = "spin-host",
    about = "Runs a Spin HTTP app from its spin.toml (a test host)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start the app.
    Up {
        /// The manifest, or a folder holding `spin.toml`.
        #[arg(long = "from", short = 'f', default_value = "spin.toml")]
        from: PathBuf,
        #[arg(long, default_value = "127.0.0.1:3000")]
        listen: SocketAddr,
        /// An application variable, `name=value` or `name=@file` (repeatable); overrides
        /// SPIN_VARIABLE_<NAME> and `.env` in the current directory.
        #[arg(long = "variable")]
        variables: Vec<String>,
        /// Spin runtime config (key_value_store of type "spin", client_tls, state_dir, log_dir); as in
        /// Spin, the environment variable RUNTIME_CONFIG_FILE when not given.
        #[arg(long)]
        runtime_config_file: Option<PathBuf>,
        /// Where the `default` key-value store (sqlite_key_value.db) and component logs (logs/) live;
        /// default `.spin/` beside the manifest; an empty value keeps the store in memory and no logs.
        #[arg(long)]
        state_dir: Option<String>,
        /// Do not show component output (it still goes to the log files).
        #[arg(long, short = 'q')]
        quiet: bool,
    },
}

#[tokio::main]
async fn main() {
    if let Err(err) = run(Cli::parse()).await {
        eprintln!("Error: {err:#}");
        std::process::exit(1);
    }
}

async fn run(cli: Cli) -> Result<()> {
    let Command::Up {
        from,
        listen,
        variables,
        runtime_config_file,
        state_dir,
        quiet,
    } = cli.command;
    let manifest = if from.is_dir() {
        from.join("spin.toml")
    } else {
        from
    };
    let app = App::load(&HostOptions {
        manifest,
        variables,
        state_dir: match state_dir {
            None => StateDir::BesideManifest,
            Some(dir) if dir.is_empty() => StateDir::Unset,
            Some(dir) => StateDir::Dir(dir.into()),
        },
        runtime_config: runtime_config_file.or_else(|| {
            std::env::var_os("RUNTIME_CONFIG_FILE")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        }),
        env: None,
        // As Spin 3: `.env` in the current directory.
        dotenv: Some(PathBuf::from(".env")),
        output: if quiet {
            Output::Quiet
        } else {
            Output::Inherit
        },
    })?;
    // The same start-up lines as `spin up`.
    if let Some(dir) = &app.state().log_dir {
        eprintln!("Logging component stdio to \"{}\"", dir.join("").display());
    }
    let default_store = app.kv_store("default");
    match &app.state().default_store {
        _ if default_store.as_ref().is_some_and(|s| s.kind() == "redis") => println!(
            "Storing default key-value data to {}.",
            default_store.and_then(|s| s.summary()).unwrap_or_default()
        ),
        Some(file) => println!("Storing default key-value data to \"{}\".", file.display()),
        None => println!("Storing default key-value data to a temporary in-memory store."),
    }
    let host = serve(app, listen).await?;
    println!();
    println!("Serving http://{}", host.addr);
    println!("Available Routes:");
    for route in host.app.routes() {
        let base = route.base();
        let wildcard = if route.raw.ends_with("...") {
            " (wildcard)"
        } else {
            ""
        };
        println!(
            "  {}: http://{}{base}{wildcard}",
            route.component, host.addr
        );
    }
    use std::io::Write;
    std::io::stdout().flush()?;
    shutdown_signal().await;
    Ok(())
}

/// Ctrl-C or SIGTERM (a test harness, a service manager): stop serving.
async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
