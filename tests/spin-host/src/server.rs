//! The HTTP front door: one hyper HTTP/1.1 server on a loopback address, like `spin up --listen`.

use std::convert::Infallible;
use std::net::SocketAddr;

use anyhow::{Context, Result};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::runtime::App;

/// A running server; stops when dropped.
pub struct RunningHost {
    pub addr: SocketAddr,
    pub app: App,
    task: JoinHandle<()>,
}

impl RunningHost {
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for RunningHost {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub async fn serve(app: App, listen: SocketAddr) -> Result<RunningHost> {
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let addr = listener.local_addr()?;
    let served = app.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, client)) = listener.accept().await else {
                continue;
            };
            let app = served.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let app = app.clone();
                    async move { Ok::<_, Infallible>(app.handle(req, client).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(RunningHost { addr, app, task })
}
