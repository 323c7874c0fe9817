//! `spin-host up --from spin.toml --listen 127.0.0.1:3000 [--variable name=value]... [--kv-file PATH]`:
//! runs the app as `spin up` would, for tests and local use where the Spin CLI is not available.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};
use spin_host::{serve, App, HostOptions};

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
        /// The manifest.
        #[arg(long = "from", short = 'f', default_value = "spin.toml")]
        from: PathBuf,
        #[arg(long, default_value = "127.0.0.1:3000")]
        listen: SocketAddr,
        /// An application variable, `name=value` (repeatable); overrides SPIN_VARIABLE_<NAME>.
        #[arg(long = "variable")]
        variables: Vec<String>,
        /// SQLite file that keeps the `default` key-value store across restarts.
        #[arg(long)]
        kv_file: Option<PathBuf>,
        /// Spin runtime config (key_value_store, client_tls).
        #[arg(long)]
        runtime_config_file: Option<PathBuf>,
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
        kv_file,
        runtime_config_file,
    } = cli.command;
    let app = App::load(&HostOptions {
        manifest: from,
        variables,
        kv_file,
        runtime_config: runtime_config_file,
        env: None,
    })?;
    let host = serve(app, listen).await?;
    println!("Serving http://{}", host.addr);
    println!("Available Routes:");
    for route in host.app.routes() {
        println!("  {}: http://{}{}", route.component, host.addr, route.raw);
    }
    use std::io::Write;
    std::io::stdout().flush()?;
    tokio::signal::ctrl_c().await?;
    Ok(())
}
