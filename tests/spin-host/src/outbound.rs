//! Outbound HTTP from components to the network, with TLS always verified: against the public web roots
//! and/or the private CAs that runtime config's `[[client_tls]]` names for a component and host (the Spin way
//! to trust, say, LinuxForHealth connect's mkcert root).

use std::sync::Arc;

use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::time::timeout;
use wasmtime_wasi_http::bindings::http::types::ErrorCode;
use wasmtime_wasi_http::body::HyperOutgoingBody;
use wasmtime_wasi_http::types::{IncomingResponse, OutgoingRequestConfig};
use wasmtime_wasi_http::{hyper_request_error, hyper_response_error};

pub async fn send(
    mut request: hyper::Request<HyperOutgoingBody>,
    config: OutgoingRequestConfig,
    tls: Arc<rustls::ClientConfig>,
) -> Result<IncomingResponse, ErrorCode> {
    let uri = request.uri().clone();
    let host = uri.host().ok_or(ErrorCode::HttpRequestUriInvalid)?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = uri
        .port_u16()
        .unwrap_or(if config.use_tls { 443 } else { 80 });
    let tcp = timeout(config.connect_timeout, TcpStream::connect((host, port)))
        .await
        .map_err(|_| ErrorCode::ConnectionTimeout)?
        .map_err(|_| ErrorCode::ConnectionRefused)?;
    // Spin speaks HTTP/1.1 to upstreams; so do we.
    let (mut sender, worker) = if config.use_tls {
        let name =
            ServerName::try_from(host.to_string()).map_err(|_| ErrorCode::HttpRequestUriInvalid)?;
        let stream = tokio_rustls::TlsConnector::from(tls)
            .connect(name, tcp)
            .await
            .map_err(|_| ErrorCode::TlsCertificateError)?;
        handshake(TokioIo::new(stream), &config).await?
    } else {
        handshake(TokioIo::new(tcp), &config).await?
    };
    // The request line carries only the path, as for any request not sent to a proxy.
    *request.uri_mut() = hyper::Uri::builder()
        .path_and_query(uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"))
        .build()
        .map_err(|_| ErrorCode::HttpRequestUriInvalid)?;
    if !request.headers().contains_key(hyper::header::HOST) {
        let authority = uri.authority().map(|a| a.as_str()).unwrap_or(host);
        if let Ok(value) = hyper::header::HeaderValue::from_str(authority) {
            request.headers_mut().insert(hyper::header::HOST, value);
        }
    }
    let resp = timeout(config.first_byte_timeout, sender.send_request(request))
        .await
        .map_err(|_| ErrorCode::ConnectionReadTimeout)?
        .map_err(hyper_request_error)?
        .map(|body| body.map_err(hyper_response_error).boxed_unsync());
    Ok(IncomingResponse {
        resp,
        worker: Some(worker),
        between_bytes_timeout: config.between_bytes_timeout,
    })
}

type Handshake = (
    hyper::client::conn::http1::SendRequest<HyperOutgoingBody>,
    wasmtime_wasi::runtime::AbortOnDropJoinHandle<()>,
);

async fn handshake<T>(io: T, config: &OutgoingRequestConfig) -> Result<Handshake, ErrorCode>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (sender, conn) = timeout(
        config.connect_timeout,
        hyper::client::conn::http1::handshake(io),
    )
    .await
    .map_err(|_| ErrorCode::ConnectionTimeout)?
    .map_err(hyper_request_error)?;
    let worker = wasmtime_wasi::runtime::spawn(async move {
        let _ = conn.await;
    });
    Ok((sender, worker))
}

/// A client configuration trusting the web roots (unless told not to) and the given PEM CA certificates.
pub fn tls_config(
    use_web_roots: bool,
    extra_ca_pem: &[Vec<u8>],
) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    if use_web_roots {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    }
    for pem in extra_ca_pem {
        for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
            roots.add(cert?)?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}
