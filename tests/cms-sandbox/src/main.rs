//! `cms-sandbox`: the CMS Blue Button 2.0 sandbox emulator (v2 and v3) as a process (see the
//! `cms_sandbox` library).
//! Prints `listening on http://ADDR` once it accepts connections, then serves until killed.

use clap::Parser;
use cms_sandbox::{CmsSandbox, Options};
use std::io::Write;
use std::net::SocketAddr;

#[derive(Parser, Debug)]
#[command(
    name = "cms-sandbox",
    about = "CMS Blue Button 2.0 sandbox emulator, v2 and v3 (loopback only)"
)]
struct Args {
    /// Loopback address to listen on (port 0 picks a free port).
    #[arg(long)]
    listen: SocketAddr,
    #[arg(long)]
    client_id: String,
    #[arg(long)]
    client_secret: String,
    /// The registered redirect URI (matched exactly).
    #[arg(long)]
    redirect_uri: String,
    /// Access-token lifetime and `expires_in`, in seconds.
    #[arg(long, default_value_t = 3600)]
    token_ttl: u64,
    /// Delay before every FHIR and token response, in milliseconds.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Probability (0.0..=1.0) that a FHIR data request fails with 500/502/503/429.
    #[arg(long, default_value_t = 0.0)]
    fault_rate: f64,
    /// Seed of the fault RNG.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Grow BBUser29999's patient to this many ExplanationOfBenefit resources.
    #[arg(long)]
    eob_count: Option<usize>,
    /// `Retry-After` seconds on injected 429s.
    #[arg(long, default_value_t = 1)]
    retry_after: u64,
    /// Enforce BB2's non-local client-id format (`[a-zA-Z0-9]{40}`).
    #[arg(long)]
    require_cms_client_id_format: bool,
    /// Register the app as ONE_TIME (no refresh tokens).
    #[arg(long)]
    one_time_app: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // Test infrastructure must never be reachable from the network.
    anyhow::ensure!(
        args.listen.ip().is_loopback(),
        "refusing to listen on non-loopback address {}",
        args.listen
    );
    anyhow::ensure!(
        (0.0..=1.0).contains(&args.fault_rate),
        "--fault-rate must be within 0.0..=1.0"
    );
    let opts = Options {
        client_id: args.client_id,
        client_secret: args.client_secret,
        redirect_uri: args.redirect_uri,
        token_ttl_secs: args.token_ttl,
        latency_ms: args.latency_ms,
        fault_rate: args.fault_rate,
        seed: args.seed,
        eob_count: args.eob_count,
        retry_after_secs: args.retry_after,
        require_cms_client_id_format: args.require_cms_client_id_format,
        one_time_app: args.one_time_app,
        // As BB2 does: a new authorization replaces the beneficiary's earlier tokens.
        ..Options::default()
    };
    let sandbox = CmsSandbox::start(args.listen, opts).await?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening on {}", sandbox.base_url())?;
        out.flush()?;
    }
    tokio::signal::ctrl_c().await?;
    sandbox.stop().await;
    Ok(())
}
