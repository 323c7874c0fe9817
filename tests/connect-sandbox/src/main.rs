//! The LinuxForHealth connect emulator as a process, for tests and the benchmark that run the app
//! outside the test binary. Prints `listening on http(s)://ADDR` once it accepts connections, and
//! serves until interrupted (SIGINT or SIGTERM).

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Parser, ValueEnum};
use connect_sandbox::{ConnectSandbox, EnvelopeVariant, Options, TlsFiles};

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Envelope {
    #[value(name = "2021")]
    V2021,
    #[value(name = "2022")]
    V2022,
}

#[derive(Debug, Parser)]
#[command(about = "LinuxForHealth connect intake emulator (POST /fhir, GET /data, GET /status)")]
struct Args {
    /// Loopback address to listen on; port 0 picks a free one.
    #[arg(long, default_value = "127.0.0.1:5000")]
    listen: SocketAddr,
    /// Server certificate (PEM) for HTTPS; needs --tls-key.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// Private key (PEM) for HTTPS; needs --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Answer the first N valid POSTs with 500, as when Kafka is unreachable.
    #[arg(long, default_value_t = 0)]
    fail_first: u32,
    /// Largest Kafka message (envelope JSON, base64 data included), in bytes.
    #[arg(long, default_value_t = Options::default().max_message_bytes)]
    max_message_bytes: usize,
    /// Requests per second per client address and route (slowapi); 0 turns the limit off.
    #[arg(long, default_value_t = Options::default().rate_limit_per_sec)]
    rate_limit: u32,
    /// Envelope shape: 2021 (data_format FHIR-R4_<TYPE>, base64 attributes) or 2022 (connect 0.42).
    #[arg(long, value_enum, default_value = "2022")]
    envelope: Envelope,
    /// Fraction (0..=1) of successful POSTs answered with a null data_record_location.
    #[arg(long, default_value_t = 0.0)]
    null_location_rate: f64,
    /// Seed for the null-location draws.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // Tests and benchmarks must only ever be reachable from this machine.
    if !args.listen.ip().is_loopback() {
        bail!(
            "refusing to listen on {}: only loopback addresses are allowed",
            args.listen
        );
    }
    let tls = match (args.tls_cert, args.tls_key) {
        (Some(cert), Some(key)) => Some(TlsFiles::from_paths(cert, key)),
        _ => None,
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let opts = Options {
        fail_first: args.fail_first,
        max_message_bytes: args.max_message_bytes,
        rate_limit_per_sec: args.rate_limit,
        null_location_rate: args.null_location_rate,
        envelope_variant: match args.envelope {
            Envelope::V2021 => EnvelopeVariant::V2021,
            Envelope::V2022 => EnvelopeVariant::V2022,
        },
        tls,
        seed: args.seed,
    };
    let sandbox = ConnectSandbox::start(args.listen, opts)
        .await
        .context("starting the connect emulator")?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening on {scheme}://{}", sandbox.addr)?;
        out.flush()?;
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    sandbox.shutdown().await;
    Ok(())
}
