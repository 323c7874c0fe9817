//! The engine: loads the app from its manifest, and serves each request from a fresh instance of the routed
//! component, with the Spin host interfaces (`fermyon:spin/key-value`, `fermyon:spin/variables`) and
//! `wasi:http` outbound limited to what the manifest allows.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use wasmtime::component::{Component, HasSelf, Linker, Resource, ResourceTable};
use wasmtime::{Config, Engine, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_http::bindings::http::types::{ErrorCode, Scheme};
use wasmtime_wasi_http::bindings::ProxyPre;
use wasmtime_wasi_http::body::HyperOutgoingBody;
use wasmtime_wasi_http::types::{
    HostFutureIncomingResponse, IncomingResponse, OutgoingRequestConfig,
};
use wasmtime_wasi_http::{HttpResult, WasiHttpCtx, WasiHttpView};

use super::allowed_hosts::AllowedHosts;
use super::kv::{KvStore, KvStores};
use super::manifest::{Manifest, RouteDecl};
use super::outbound;
use super::routes::{Route, RouteMatch, Router};
use super::runtime_config::RuntimeConfig;
use super::stdio::{ComponentStdio, Output};
use super::variables::{VariableSources, Variables};

mod bindings {
    wasmtime::component::bindgen!({
        path: "wit",
        world: "fermyon:spin/spin-host-imports",
        // Async: a Redis store answers over the network.
        imports: { default: async | trappable },
        with: {
            "fermyon:spin/key-value.store": crate::kv::KvStore,
            "wasi:keyvalue/store.bucket": crate::kv::KvStore,
            "wasi:keyvalue/atomics.cas": crate::kv::Cas,
        },
    });
}

mod wasi_kv;
use bindings::fermyon::spin::{key_value, variables};

/// How to start the app: what `spin up` takes on its command line.
#[derive(Debug, Clone, Default)]
pub struct HostOptions {
    pub manifest: PathBuf,
    /// `name=value` pairs, as `spin up --variable`.
    pub variables: Vec<String>,
    /// `--state-dir`: where the `default` key-value store (`sqlite_key_value.db`) and the component logs
    /// (`logs/`) live.
    pub state_dir: StateDir,
    pub runtime_config: Option<PathBuf>,
    /// Extra environment to consult for `SPIN_VARIABLE_*` instead of the process environment.
    pub env: Option<HashMap<String, String>>,
    /// The dotenv file consulted for `SPIN_VARIABLE_*` after the environment. `spin up` reads `.env` in
    /// its current directory (not beside the manifest); `None` reads none.
    pub dotenv: Option<PathBuf>,
    /// What to do with component output (and, when captured, the host's own error lines).
    pub output: Output,
}

/// The state directory, as `spin up --state-dir` takes it.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum StateDir {
    /// No state directory (`--state-dir ""`): the `default` store in memory, no log files.
    #[default]
    Unset,
    /// Spin's default for a local app: `.spin/` beside the manifest.
    BesideManifest,
    /// This directory (made absolute against the current directory, as Spin does).
    Dir(PathBuf),
}

/// Where an app keeps its state, resolved at start-up.
#[derive(Debug, Clone, Default)]
pub struct StatePaths {
    /// The `default` store's SQLite file; `None`: in memory.
    pub default_store: Option<PathBuf>,
    /// Where component logs go; `None`: no log files.
    pub log_dir: Option<PathBuf>,
}

/// The file name of the `default` store in the state directory (Spin's).
pub const DEFAULT_STORE_FILE: &str = "sqlite_key_value.db";

/// A loaded app. Cheap to clone; every clone serves the same components and stores.
#[derive(Clone)]
pub struct App {
    inner: Arc<AppInner>,
}

struct AppInner {
    engine: Engine,
    router: Router,
    components: HashMap<String, LoadedComponent>,
    stores: KvStores,
    instantiations: AtomicU64,
    name: String,
    state: StatePaths,
    output: Output,
}

struct LoadedComponent {
    pre: ProxyPre<Ctx>,
    config: Arc<ComponentConfig>,
}

struct ComponentConfig {
    id: String,
    allowed: AllowedHosts,
    kv_labels: Vec<String>,
    variables: HashMap<String, String>,
    stores: KvStores,
    tls: super::runtime_config::ClientTls,
    output: Output,
}

impl App {
    pub fn load(options: &HostOptions) -> Result<App> {
        let (manifest, app_dir) = Manifest::load(&options.manifest)?;
        let mut sources = VariableSources::gather(&options.variables, options.dotenv.as_deref())?;
        if let Some(env) = &options.env {
            sources.env = env.clone();
        }
        let variables = Variables::resolve(&manifest.variables, &sources)?;
        let runtime_config = match &options.runtime_config {
            Some(path) => RuntimeConfig::load(path)?,
            None => RuntimeConfig::default(),
        };
        let state = state_paths(options, &app_dir, &runtime_config)?;
        if let Some(dir) = &state.log_dir {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("Failed to create log dir {}", dir.display()))?;
        }
        let mut stores = KvStores::default();
        for (label, path) in &runtime_config.kv_stores {
            stores.insert(KvStore::open(label, path.as_deref())?);
        }
        for (label, url) in &runtime_config.redis_stores {
            stores.insert(KvStore::redis(label, url)?);
        }
        // Spin's own `default` (SQLite in the state directory) only when the runtime config has none: a
        // `default` on Redis leaves no SQLite file behind.
        if stores.get("default").is_none() {
            stores.insert(KvStore::open("default", state.default_store.as_deref())?);
        }

        let engine = engine()?;
        let mut linker: Linker<Ctx> = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        wasmtime_wasi_http::add_only_http_to_linker_async(&mut linker)?;
        bindings::SpinHostImports::add_to_linker::<Ctx, HasSelf<Ctx>>(&mut linker, |c| c)?;

        let mut components = HashMap::new();
        for (id, decl) in &manifest.component {
            let source = app_dir.join(&decl.source);
            let component = compile(&engine, &source)
                .with_context(|| format!("component {id}: cannot load {}", source.display()))?;
            let pre = ProxyPre::new(linker.instantiate_pre(&component).with_context(|| {
                format!("component {id} imports something this host does not provide")
            })?)?;
            let allowed = decl
                .allowed_outbound_hosts
                .iter()
                .map(|h| variables.expand(h))
                .collect::<Result<Vec<_>>>()?;
            for label in &decl.key_value_stores {
                if stores.get(label).is_none() {
                    bail!("component {id} uses key-value store {label:?}, which is not defined");
                }
            }
            let component_variables = decl
                .variables
                .iter()
                .map(|(name, template)| Ok((name.clone(), variables.expand(template)?)))
                .collect::<Result<_>>()
                .with_context(|| format!("component {id}: variables"))?;
            let config = ComponentConfig {
                id: id.clone(),
                allowed: AllowedHosts::parse(&allowed)
                    .with_context(|| format!("component {id}"))?,
                kv_labels: decl.key_value_stores.clone(),
                variables: component_variables,
                stores: stores.clone(),
                tls: runtime_config.client_tls(id)?,
                output: options.output.clone(),
            };
            components.insert(
                id.clone(),
                LoadedComponent {
                    pre,
                    config: Arc::new(config),
                },
            );
        }
        let routes = manifest
            .trigger
            .http
            .iter()
            .filter_map(|t| match &t.route {
                RouteDecl::Path(route) => Some(Route::parse(route, &t.component)),
                RouteDecl::Private { .. } => None,
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(App {
            inner: Arc::new(AppInner {
                engine,
                router: Router::new(routes)?,
                components,
                stores,
                instantiations: AtomicU64::new(0),
                name: manifest.application.name,
                state,
                output: options.output.clone(),
            }),
        })
    }

    /// Where this app keeps its `default` store and component logs.
    pub fn state(&self) -> &StatePaths {
        &self.inner.state
    }

    pub fn name(&self) -> &str {
        &self.inner.name
    }

    pub fn routes(&self) -> &[Route] {
        self.inner.router.routes()
    }

    /// How many component instances have been created: one per request served, chained ones included.
    pub fn instantiations(&self) -> u64 {
        self.inner.instantiations.load(Ordering::Relaxed)
    }

    /// The key-value store of a label, for tests that inspect what is at rest.
    pub fn kv_store(&self, label: &str) -> Option<KvStore> {
        self.inner.stores.get(label).cloned()
    }

    /// Serves one request from outside the app.
    pub async fn handle<B>(
        &self,
        req: hyper::Request<B>,
        client: SocketAddr,
    ) -> hyper::Response<HyperOutgoingBody>
    where
        B: hyper::body::Body<Data = Bytes, Error = hyper::Error> + Send + 'static,
    {
        let path = req.uri().path().to_string();
        // Spin answers both of these with an empty body.
        let Some(matched) = self.inner.router.route(&path) else {
            return empty(404);
        };
        match self.inner.dispatch(req, &matched, client).await {
            Ok(resp) => resp,
            Err(err) => {
                self.inner.output.host_line(&format!(
                    "spin-host: component {} failed: {err:#}",
                    matched.route.component
                ));
                empty(500)
            }
        }
    }
}

/// The state directory and log directory as Spin resolves them: `--state-dir` first, then runtime
/// config's `state_dir` (empty: unset), then `.spin/` beside the manifest only when asked for; the log
/// directory is runtime config's `log_dir`, else `<state dir>/logs`.
fn state_paths(
    options: &HostOptions,
    app_dir: &Path,
    runtime_config: &RuntimeConfig,
) -> Result<StatePaths> {
    let absolute = |p: &Path| std::path::absolute(p).context("the current directory");
    let state_dir = match (&options.state_dir, &runtime_config.state_dir) {
        (StateDir::Dir(dir), _) => Some(absolute(dir)?),
        (StateDir::Unset, _) => None,
        (StateDir::BesideManifest, Some(dir)) if dir.as_os_str().is_empty() => None,
        (StateDir::BesideManifest, Some(dir)) => Some(absolute(dir)?),
        (StateDir::BesideManifest, None) => Some(absolute(&app_dir.join(".spin"))?),
    };
    let log_dir = match &runtime_config.log_dir {
        Some(dir) if dir.as_os_str().is_empty() => None,
        Some(dir) => Some(absolute(dir)?),
        None => state_dir.as_ref().map(|d| d.join("logs")),
    };
    Ok(StatePaths {
        default_store: state_dir.map(|d| d.join(DEFAULT_STORE_FILE)),
        log_dir,
    })
}

fn engine() -> Result<Engine> {
    let mut config = Config::new();
    config.async_support(true);
    // Compiled components are cached on disk, so starting the host again (every test does) is fast: in
    // wasmtime's default cache folder (~/.cache/wasmtime), as Spin does by default.
    config.cache(Some(wasmtime::Cache::new(wasmtime::CacheConfig::new())?));
    Engine::new(&config)
}

fn compile(engine: &Engine, source: &Path) -> Result<Component> {
    let bytes = std::fs::read(source)?;
    Component::new(engine, bytes)
}

fn empty(status: u16) -> hyper::Response<HyperOutgoingBody> {
    let mut resp = hyper::Response::new(
        Full::new(Bytes::new())
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *resp.status_mut() = hyper::StatusCode::from_u16(status).expect("valid status");
    resp
}

impl AppInner {
    async fn dispatch<B>(
        self: &Arc<Self>,
        mut req: hyper::Request<B>,
        matched: &RouteMatch<'_>,
        client: SocketAddr,
    ) -> Result<hyper::Response<HyperOutgoingBody>>
    where
        B: hyper::body::Body<Data = Bytes, Error = hyper::Error> + Send + 'static,
    {
        let component = self
            .components
            .get(&matched.route.component)
            .context("routed to an unknown component")?;
        add_spin_headers(&mut req, matched, client);
        // As Spin does, per instance: the log files are opened (created) when a component first runs.
        let stdio = ComponentStdio::open(
            &component.config.id,
            self.state.log_dir.as_deref(),
            &self.output,
        )?;
        let mut store = Store::new(
            &self.engine,
            Ctx {
                table: ResourceTable::new(),
                wasi: WasiCtxBuilder::new()
                    .stdout(stdio.stdout)
                    .stderr(stdio.stderr)
                    .build(),
                http: WasiHttpCtx::new(),
                component: component.config.clone(),
                app: Arc::downgrade(self),
            },
        );
        let incoming = store.data_mut().new_incoming_request(Scheme::Http, req)?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let outparam = store.data_mut().new_response_outparam(tx)?;
        let proxy = component.pre.instantiate_async(&mut store).await?;
        self.instantiations.fetch_add(1, Ordering::Relaxed);
        // The guest keeps running after it sets the response, to stream the body.
        let task = tokio::spawn(async move {
            proxy
                .wasi_http_incoming_handler()
                .call_handle(&mut store, incoming, outparam)
                .await
        });
        match rx.await {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(code)) => bail!("guest answered with error code {code:?}"),
            Err(_) => match task.await {
                Ok(Ok(())) => bail!("guest returned without setting a response"),
                Ok(Err(trap)) => Err(trap.context("guest trapped")),
                Err(join) => bail!("guest task failed: {join}"),
            },
        }
    }

    /// Spin's local service chaining: `http://<component>.spin.internal/...` reaches a component directly.
    async fn chain(
        self: Arc<Self>,
        target: String,
        req: hyper::Request<HyperOutgoingBody>,
        between_bytes_timeout: std::time::Duration,
    ) -> Result<IncomingResponse, ErrorCode> {
        let (mut parts, body) = req.into_parts();
        // Spin's `spin-full-url` of a chained request is `http://localhost/<path>`: no Host carried over.
        parts.headers.remove(hyper::header::HOST);
        let body = body.collect().await?.to_bytes();
        let req =
            hyper::Request::from_parts(parts, Full::new(body).map_err(|never| match never {}));
        // As Spin does, the target is reached on a synthetic `/...` route whatever its triggers say: the
        // whole path is `spin-path-info`, `spin-component-route` is empty, the client is `0.0.0.0:0`.
        let path = req.uri().path().to_string();
        let route = Route::parse("/...", &target).expect("valid route");
        let matched = RouteMatch {
            route: &route,
            path_info: path,
            params: HashMap::new(),
        };
        let client: SocketAddr = ([0, 0, 0, 0], 0).into();
        let resp = self
            .dispatch(req, &matched, client)
            .await
            .map_err(|e| ErrorCode::InternalError(Some(format!("{e:#}"))))?;
        Ok(IncomingResponse {
            resp,
            worker: None,
            between_bytes_timeout,
        })
    }
}

fn add_spin_headers<B>(req: &mut hyper::Request<B>, matched: &RouteMatch<'_>, client: SocketAddr) {
    let host = req
        .headers()
        .get(hyper::header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost")
        .to_string();
    let full_url = format!(
        "http://{host}{}",
        req.uri()
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/")
    );
    let base = matched.route.base();
    let mut headers = vec![
        ("spin-full-url", full_url),
        ("spin-path-info", matched.path_info.clone()),
        ("spin-matched-route", matched.route.raw.clone()),
        ("spin-raw-component-route", matched.route.raw.clone()),
        ("spin-component-route", base),
        ("spin-base-path", "/".to_string()),
        ("spin-client-addr", client.to_string()),
    ];
    for (name, value) in &matched.params {
        headers.push((
            Box::leak(format!("spin-path-match-{name}").into_boxed_str()),
            value.clone(),
        ));
    }
    for (name, value) in headers {
        if let Ok(value) = hyper::header::HeaderValue::from_str(&value) {
            req.headers_mut().insert(name, value);
        }
    }
}

/// Per-instance state: what one component instance may reach.
pub struct Ctx {
    table: ResourceTable,
    wasi: WasiCtx,
    http: WasiHttpCtx,
    component: Arc<ComponentConfig>,
    app: Weak<AppInner>,
}

impl WasiView for Ctx {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for Ctx {
    fn ctx(&mut self) -> &mut WasiHttpCtx {
        &mut self.http
    }

    fn table(&mut self) -> &mut ResourceTable {
        &mut self.table
    }

    fn send_request(
        &mut self,
        request: hyper::Request<HyperOutgoingBody>,
        config: OutgoingRequestConfig,
    ) -> HttpResult<HostFutureIncomingResponse> {
        let uri = request.uri();
        let scheme = uri.scheme_str().unwrap_or("http").to_string();
        let host = uri.host().unwrap_or_default().to_ascii_lowercase();
        let port = uri.port_u16();
        let component = &self.component;
        if !component.allowed.allows(&scheme, &host, port) {
            component.output.host_line(&format!(
                "spin-host: component {} may not call {scheme}://{host}{}: not in allowed_outbound_hosts",
                component.id,
                port.map(|p| format!(":{p}")).unwrap_or_default()
            ));
            return Err(ErrorCode::HttpRequestDenied.into());
        }
        if let Some(target) = host.strip_suffix(".spin.internal") {
            let app = self.app.upgrade().ok_or(ErrorCode::InternalError(None))?;
            if !app.components.contains_key(target) {
                return Err(ErrorCode::DestinationNotFound.into());
            }
            let target = target.to_string();
            let timeout = config.between_bytes_timeout;
            let handle = wasmtime_wasi::runtime::spawn(async move {
                Ok(app.chain(target, request, timeout).await)
            });
            return Ok(HostFutureIncomingResponse::pending(handle));
        }
        let tls = component.tls.for_host(&host, port);
        let handle =
            wasmtime_wasi::runtime::spawn(
                async move { Ok(outbound::send(request, config, tls).await) },
            );
        Ok(HostFutureIncomingResponse::pending(handle))
    }
}

fn kv_error(err: anyhow::Error) -> key_value::Error {
    key_value::Error::Other(format!("{err:#}"))
}

impl key_value::Host for Ctx {}

impl key_value::HostStore for Ctx {
    async fn open(&mut self, label: String) -> Result<Result<Resource<KvStore>, key_value::Error>> {
        if !self.component.kv_labels.contains(&label) {
            return Ok(Err(key_value::Error::AccessDenied));
        }
        let Some(store) = self.component.stores.get(&label).cloned() else {
            return Ok(Err(key_value::Error::NoSuchStore));
        };
        if let Err(err) = store.connect().await {
            return Ok(Err(kv_error(err)));
        }
        Ok(Ok(self.table.push(store)?))
    }

    async fn get(
        &mut self,
        store: Resource<KvStore>,
        key: String,
    ) -> Result<Result<Option<Vec<u8>>, key_value::Error>> {
        let store = self.table.get(&store)?.clone();
        Ok(store.get(&key).await.map_err(kv_error))
    }

    async fn set(
        &mut self,
        store: Resource<KvStore>,
        key: String,
        value: Vec<u8>,
    ) -> Result<Result<(), key_value::Error>> {
        let store = self.table.get(&store)?.clone();
        Ok(store.set(&key, &value).await.map_err(kv_error))
    }

    async fn delete(
        &mut self,
        store: Resource<KvStore>,
        key: String,
    ) -> Result<Result<(), key_value::Error>> {
        let store = self.table.get(&store)?.clone();
        Ok(store.delete(&key).await.map_err(kv_error))
    }

    async fn exists(
        &mut self,
        store: Resource<KvStore>,
        key: String,
    ) -> Result<Result<bool, key_value::Error>> {
        let store = self.table.get(&store)?.clone();
        Ok(store.exists(&key).await.map_err(kv_error))
    }

    async fn get_keys(
        &mut self,
        store: Resource<KvStore>,
    ) -> Result<Result<Vec<String>, key_value::Error>> {
        let store = self.table.get(&store)?.clone();
        Ok(store.keys().await.map_err(kv_error))
    }

    async fn drop(&mut self, store: Resource<KvStore>) -> Result<()> {
        self.table.delete(store)?;
        Ok(())
    }
}

impl variables::Host for Ctx {
    async fn get(&mut self, name: String) -> Result<Result<String, variables::Error>> {
        // Spin's wording, e.g. `"Bad-Name": invalid character 'B'. Variable names may contain only ...`.
        let invalid = name
            .chars()
            .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_'));
        if let Some(c) = invalid {
            return Ok(Err(variables::Error::InvalidName(format!(
                "{name:?}: invalid character {c:?}. Variable names may contain only lower-case \
                 letters, numbers, and underscores."
            ))));
        }
        if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
            return Ok(Err(variables::Error::InvalidName(format!(
                "{name:?}: must start with a letter"
            ))));
        }
        Ok(match self.component.variables.get(&name) {
            Some(value) => Ok(value.clone()),
            None => Err(variables::Error::Undefined(format!(
                "no variable for {:?}.{name:?}",
                self.component.id
            ))),
        })
    }
}
