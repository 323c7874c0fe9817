//! Server-side TLS, as connect serves it (uvicorn with a certificate and key, no client certificates).

use std::io::BufReader;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use super::{PemSource, TlsFiles};

/// A client that connects and never finishes its handshake must not hold a slot for ever.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

fn read_pem(source: &PemSource, what: &str) -> anyhow::Result<Vec<u8>> {
    match source {
        PemSource::Path(p) => {
            std::fs::read(p).with_context(|| format!("reading the TLS {what} {}", p.display()))
        }
        PemSource::Pem(bytes) => Ok(bytes.clone()),
    }
}

pub(super) fn acceptor(files: &TlsFiles) -> anyhow::Result<TlsAcceptor> {
    let cert_pem = read_pem(&files.cert, "certificate")?;
    let key_pem = read_pem(&files.key, "key")?;
    let certs = rustls_pemfile::certs(&mut BufReader::new(cert_pem.as_slice()))
        .collect::<Result<Vec<_>, _>>()
        .context("parsing the TLS certificate PEM")?;
    if certs.is_empty() {
        bail!("the TLS certificate PEM holds no certificate");
    }
    let key = rustls_pemfile::private_key(&mut BufReader::new(key_pem.as_slice()))
        .context("parsing the TLS key PEM")?
        .context("the TLS key PEM holds no private key")?;
    // An explicit provider: the process-wide default is ambiguous when several crates enable one.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("the TLS certificate and key do not make a server identity")?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Accepts TCP connections and hands over those whose TLS handshake succeeded. Handshakes run in
/// their own tasks so that one slow or failing client does not hold up the others.
pub(super) struct TlsListener {
    local: SocketAddr,
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    acceptor_task: tokio::task::JoinHandle<()>,
}

impl TlsListener {
    pub(super) fn new(tcp: TcpListener, acceptor: TlsAcceptor) -> std::io::Result<TlsListener> {
        let local = tcp.local_addr()?;
        let (tx, ready) = mpsc::channel(64);
        let acceptor_task = tokio::spawn(async move {
            loop {
                let (stream, peer) = match tcp.accept().await {
                    Ok(conn) => conn,
                    Err(_) => {
                        // Out of file descriptors and the like: back off as axum's own listener does.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    if let Ok(Ok(tls)) =
                        tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await
                    {
                        let _ = tx.send((tls, peer)).await;
                    }
                });
            }
        });
        Ok(TlsListener {
            local,
            ready,
            acceptor_task,
        })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.acceptor_task.abort();
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(conn) => conn,
            // The accept loop only ends when aborted, that is, when this listener is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}
