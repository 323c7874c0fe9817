//! The deployment files agree with `spin.toml`: the runtime configs (`runtime-config/*.toml`) have the
//! shape Spin expects and name only components that exist; the SpinKube manifests (`deploy/spinkube/`)
//! give exactly the variables `spin.toml` declares, take every secret from a Secret key that the
//! example Secret defines, and call routes that `spin.toml` serves.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_yaml::Value as Yaml;
use spin_host::runtime_config::RuntimeConfig;

const SPINAPP: &str = "deploy/spinkube/spinapp.yaml";
const SECRETS: &str = "deploy/spinkube/secret.example.yaml";
const CRONJOB: &str = "deploy/spinkube/cronjob.yaml";
const HEALTH_PATH: &str = "/bluebutton/healthz";
const SYNC_PATH: &str = "/bluebutton/sync";

fn root() -> PathBuf {
    e2e::workspace_root()
}

fn read(rel: &str) -> String {
    let path = root().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn toml_file(rel: &str) -> toml::Table {
    read(rel)
        .parse()
        .unwrap_or_else(|e| panic!("{rel} is not valid TOML: {e}"))
}

/// Every document of a (possibly multi-document) YAML file.
fn yaml_docs(rel: &str) -> Vec<Yaml> {
    let text = read(rel);
    let docs: Vec<Yaml> = serde_yaml::Deserializer::from_str(&text)
        .map(|doc| {
            Yaml::deserialize(doc).unwrap_or_else(|e| panic!("{rel} is not valid YAML: {e}"))
        })
        .filter(|doc| !doc.is_null())
        .collect();
    assert!(!docs.is_empty(), "{rel} holds no YAML document");
    docs
}

fn only_doc(rel: &str) -> Yaml {
    let mut docs = yaml_docs(rel);
    assert_eq!(docs.len(), 1, "{rel} should hold exactly one document");
    docs.remove(0)
}

/// A string at a path of mapping keys, or a panic naming the path.
fn str_at<'a>(doc: &'a Yaml, path: &[&str], file: &str) -> &'a str {
    let mut node = doc;
    for key in path {
        node = node
            .get(key)
            .unwrap_or_else(|| panic!("{file}: missing `{}`", path.join(".")));
    }
    node.as_str()
        .unwrap_or_else(|| panic!("{file}: `{}` is not a string", path.join(".")))
}

/// What the deployment files are checked against.
struct Manifest {
    app_name: String,
    /// variable → (required, secret)
    variables: BTreeMap<String, (bool, bool)>,
    /// (route, component)
    routes: Vec<(String, String)>,
    components: toml::Table,
}

impl Manifest {
    fn load() -> Manifest {
        let doc = toml_file("spin.toml");
        let app_name = doc["application"]["name"]
            .as_str()
            .expect("application.name")
            .to_string();
        let variables = doc["variables"]
            .as_table()
            .expect("spin.toml has [variables]")
            .iter()
            .map(|(name, decl)| {
                let flag = |key| decl.get(key).and_then(toml::Value::as_bool) == Some(true);
                (name.clone(), (flag("required"), flag("secret")))
            })
            .collect();
        let routes = doc["trigger"]["http"]
            .as_array()
            .expect("spin.toml has [[trigger.http]]")
            .iter()
            .map(|t| {
                (
                    t["route"].as_str().expect("route").to_string(),
                    t["component"].as_str().expect("component").to_string(),
                )
            })
            .collect();
        let components = doc["component"].as_table().expect("[component.*]").clone();
        Manifest {
            app_name,
            variables,
            routes,
            components,
        }
    }

    /// The component serving `path`, as Spin routes: exact, or a `/...` wildcard prefix.
    fn component_for(&self, path: &str) -> Option<&str> {
        self.routes
            .iter()
            .find(|(route, _)| match route.strip_suffix("/...") {
                Some(prefix) => path == prefix || path.starts_with(&format!("{prefix}/")),
                None => route == path,
            })
            .map(|(_, component)| component.as_str())
    }

    fn require_route(&self, path: &str, used_by: &str) -> &str {
        self.component_for(path).unwrap_or_else(|| {
            let routes: Vec<&str> = self.routes.iter().map(|(r, _)| r.as_str()).collect();
            panic!("{used_by} calls {path}, but spin.toml serves no route matching it (routes: {routes:?})")
        })
    }

    fn calls_connect(&self, component: &str) -> bool {
        self.components[component]
            .get("allowed_outbound_hosts")
            .and_then(toml::Value::as_array)
            .is_some_and(|hosts| {
                hosts
                    .iter()
                    .any(|h| h.as_str() == Some("{{ connect_url }}"))
            })
    }

    fn default_of(&self, variable: &str) -> String {
        toml_file("spin.toml")["variables"][variable]["default"]
            .as_str()
            .unwrap_or_else(|| panic!("spin.toml: {variable} has no default"))
            .to_string()
    }
}

/// The host of an `https://host[:port]` origin.
fn host_of(origin: &str) -> String {
    let rest = origin
        .split_once("://")
        .map_or(origin, |(_, rest)| rest)
        .split('/')
        .next()
        .unwrap_or_default();
    match rest.rsplit_once(':') {
        Some((host, port)) if port.chars().all(|c| c.is_ascii_digit()) => host.to_string(),
        _ => rest.to_string(),
    }
}

// ---------------------------------------------------------------------------------------------------
// runtime-config/*.toml

fn runtime_config_files() -> Vec<String> {
    let mut files: Vec<String> = std::fs::read_dir(root().join("runtime-config"))
        .expect("runtime-config/ exists")
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".toml"))
        .map(|name| format!("runtime-config/{name}"))
        .collect();
    files.sort();
    files
}

/// `key_value_store.default.type`, checked for the keys its type needs.
fn check_kv_store(rc: &toml::Table, file: &str) -> Option<String> {
    let stores = rc.get("key_value_store")?.as_table().unwrap();
    let labels: Vec<&String> = stores.keys().collect();
    assert_eq!(
        labels,
        ["default"],
        "{file}: the components use only the `default` store"
    );
    let store = stores["default"].as_table().unwrap();
    let kind = store["type"].as_str().expect("type").to_string();
    match kind.as_str() {
        "spin" => assert!(
            store.get("path").and_then(toml::Value::as_str).is_some(),
            "{file}: a `spin` store needs a `path` (without one it lives in memory)"
        ),
        "redis" => {
            let url = store["url"].as_str().expect("url");
            assert!(
                url.starts_with("redis://") || url.starts_with("rediss://"),
                "{file}: url {url:?}"
            );
        }
        other => panic!("{file}: unexpected key_value_store type {other:?}"),
    }
    Some(kind)
}

/// Checks the `[[client_tls]]` entries; returns their hosts.
fn check_client_tls(rc: &toml::Table, file: &str, manifest: &Manifest) -> Option<Vec<String>> {
    let entries = rc.get("client_tls")?.as_array().unwrap();
    assert!(!entries.is_empty(), "{file}: empty client_tls");
    let mut all_hosts = Vec::new();
    for entry in entries {
        let entry = entry.as_table().unwrap();
        let ids: Vec<&str> = entry["component_ids"]
            .as_array()
            .expect("component_ids")
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert!(!ids.is_empty(), "{file}: component_ids may not be empty");
        for id in &ids {
            assert!(
                manifest.components.contains_key(*id),
                "{file}: component {id:?} is not in spin.toml"
            );
            assert!(
                manifest.calls_connect(id),
                "{file}: {id:?} does not call connect, so trusting connect's CA is pointless there"
            );
        }
        let hosts: Vec<String> = entry["hosts"]
            .as_array()
            .expect("hosts")
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect();
        assert!(!hosts.is_empty(), "{file}: hosts may not be empty");
        for host in &hosts {
            assert!(
                !host.contains(':') && !host.contains('/'),
                "{file}: host {host:?} must be a bare host name: Spin refuses ports and matches the URL's host"
            );
        }
        assert!(
            entry
                .get("ca_roots_file")
                .and_then(toml::Value::as_str)
                .is_some(),
            "{file}: ca_roots_file (connect's root CA) is missing"
        );
        assert_eq!(
            entry
                .get("ca_use_webpki_roots")
                .and_then(toml::Value::as_bool),
            Some(false),
            "{file}: only connect's root should vouch for connect"
        );
        all_hosts.extend(hosts);
    }
    Some(all_hosts)
}

#[test]
fn every_runtime_config_parses_and_has_the_expected_shape() {
    let manifest = Manifest::load();
    let files = runtime_config_files();
    for expected in [
        "runtime-config/sqlite.toml",
        "runtime-config/redis.toml",
        "runtime-config/connect-tls.toml",
        "runtime-config/redis-connect-tls.toml",
    ] {
        assert!(files.iter().any(|f| f == expected), "{expected} is missing");
    }
    for file in &files {
        let rc = toml_file(file);
        for key in rc.keys() {
            assert!(
                ["key_value_store", "client_tls"].contains(&key.as_str()),
                "{file}: unexpected section {key:?}"
            );
        }
        let kv = check_kv_store(&rc, file);
        let tls = check_client_tls(&rc, file, &manifest);
        assert!(kv.is_some() || tls.is_some(), "{file} configures nothing");
    }
    let kind = |file| check_kv_store(&toml_file(file), file);
    assert_eq!(kind("runtime-config/sqlite.toml").as_deref(), Some("spin"));
    assert_eq!(kind("runtime-config/redis.toml").as_deref(), Some("redis"));
    assert_eq!(kind("runtime-config/connect-tls.toml"), None);
    assert_eq!(
        kind("runtime-config/redis-connect-tls.toml").as_deref(),
        Some("redis")
    );
}

#[test]
fn connect_tls_covers_the_host_of_the_default_connect_url() {
    let manifest = Manifest::load();
    let file = "runtime-config/connect-tls.toml";
    let hosts = check_client_tls(&toml_file(file), file, &manifest).expect("client_tls");
    let connect = host_of(&manifest.default_of("connect_url"));
    assert!(
        hosts.contains(&connect),
        "{file}: hosts {hosts:?} miss {connect:?}, the host of spin.toml's connect_url"
    );
}

#[test]
fn the_test_host_accepts_sqlite_toml() {
    let path = root().join("runtime-config/sqlite.toml");
    let rc = RuntimeConfig::load(&path).expect("the test host loads runtime-config/sqlite.toml");
    assert_eq!(rc.kv_stores.len(), 1);
    let (label, file) = &rc.kv_stores[0];
    assert_eq!(label, "default");
    let file = file.as_ref().expect("a file, not memory");
    assert!(
        file.ends_with(".spin/sqlite_key_value.db"),
        "resolved from the runtime config's folder to Spin's default file: {}",
        file.display()
    );
}

#[test]
fn the_test_host_accepts_redis_toml_with_its_url() {
    let rel = "runtime-config/redis.toml";
    let url = toml_file(rel)["key_value_store"]["default"]["url"]
        .as_str()
        .expect("a url")
        .to_string();
    let rc = RuntimeConfig::load(&root().join(rel)).expect("the test host loads redis.toml");
    assert!(rc.kv_stores.is_empty(), "no SQLite store beside Redis");
    assert_eq!(rc.redis_stores, vec![("default".to_string(), url)]);
}

#[test]
fn the_test_host_accepts_connect_tls_with_a_ca_beside_it() {
    // A private root like mkcert's, at the place ca_roots_file names relative to the config's folder.
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "deploy test root");
    let ca = params.self_signed(&ca_key).unwrap();

    let dir = std::env::temp_dir().join(format!("bluebutton-deploy-{}", std::process::id()));
    let text = read("runtime-config/connect-tls.toml");
    let rc: toml::Table = text.parse().unwrap();
    let ca_file = rc["client_tls"][0]["ca_roots_file"].as_str().unwrap();
    assert!(
        Path::new(ca_file).is_relative(),
        "local runs keep the CA beside the config"
    );
    std::fs::create_dir_all(dir.join(ca_file).parent().unwrap()).unwrap();
    std::fs::write(dir.join(ca_file), ca.pem()).unwrap();
    let loaded = RuntimeConfig::parse(&text, &dir);
    std::fs::remove_dir_all(&dir).ok();
    let loaded = loaded.expect("the test host loads connect-tls.toml");
    for component in ["fhir-fetch", "connect-push"] {
        loaded.client_tls(component).expect("a TLS config");
    }
}

// ---------------------------------------------------------------------------------------------------
// deploy/spinkube/*.yaml

/// Secret name → its keys (`stringData` and `data`), from secret.example.yaml.
fn example_secrets() -> BTreeMap<String, BTreeMap<String, String>> {
    let mut secrets = BTreeMap::new();
    for doc in yaml_docs(SECRETS) {
        assert_eq!(str_at(&doc, &["kind"], SECRETS), "Secret");
        assert_eq!(str_at(&doc, &["apiVersion"], SECRETS), "v1");
        let name = str_at(&doc, &["metadata", "name"], SECRETS).to_string();
        let mut keys = BTreeMap::new();
        for field in ["stringData", "data"] {
            if let Some(map) = doc.get(field).and_then(Yaml::as_mapping) {
                for (k, v) in map {
                    keys.insert(
                        k.as_str().unwrap().to_string(),
                        v.as_str().unwrap_or_default().to_string(),
                    );
                }
            }
        }
        assert!(!keys.is_empty(), "{SECRETS}: Secret {name} has no keys");
        secrets.insert(name, keys);
    }
    secrets
}

/// Every `secretKeyRef` anywhere in a document, as (secret name, key).
fn secret_key_refs(node: &Yaml, out: &mut Vec<(String, String)>) {
    match node {
        Yaml::Mapping(map) => {
            for (k, v) in map {
                if k.as_str() == Some("secretKeyRef") {
                    out.push((
                        str_at(v, &["name"], "secretKeyRef").to_string(),
                        str_at(v, &["key"], "secretKeyRef").to_string(),
                    ));
                }
                secret_key_refs(v, out);
            }
        }
        Yaml::Sequence(items) => items.iter().for_each(|v| secret_key_refs(v, out)),
        _ => {}
    }
}

fn spinapp() -> Yaml {
    let doc = only_doc(SPINAPP);
    assert_eq!(
        str_at(&doc, &["apiVersion"], SPINAPP),
        "core.spinkube.dev/v1alpha1"
    );
    assert_eq!(str_at(&doc, &["kind"], SPINAPP), "SpinApp");
    doc
}

/// The SpinApp's variables: name → the secretKeyRef it reads, or None for a plain value.
fn spinapp_variables(app: &Yaml) -> BTreeMap<String, Option<(String, String)>> {
    let list = app["spec"]["variables"]
        .as_sequence()
        .expect("spec.variables");
    let mut vars = BTreeMap::new();
    for var in list {
        let name = str_at(var, &["name"], SPINAPP).to_string();
        let source = match (var.get("value"), var.get("valueFrom")) {
            (Some(value), None) => {
                assert!(
                    value.is_string(),
                    "{SPINAPP}: {name}: value must be a string"
                );
                None
            }
            (None, Some(from)) => {
                let mut refs = Vec::new();
                secret_key_refs(from, &mut refs);
                assert_eq!(
                    refs.len(),
                    1,
                    "{SPINAPP}: {name}: valueFrom should be one secretKeyRef"
                );
                refs.pop()
            }
            _ => panic!("{SPINAPP}: {name}: give exactly one of value and valueFrom"),
        };
        assert!(
            vars.insert(name.clone(), source).is_none(),
            "{SPINAPP}: {name} is given twice"
        );
    }
    vars
}

#[test]
fn the_yaml_files_parse() {
    for file in [SPINAPP, SECRETS, CRONJOB] {
        yaml_docs(file);
    }
}

#[test]
fn spinapp_gives_exactly_the_declared_variables_and_every_required_one() {
    let manifest = Manifest::load();
    let app = spinapp();
    assert_eq!(
        str_at(&app, &["metadata", "name"], SPINAPP),
        manifest.app_name
    );
    let vars = spinapp_variables(&app);
    let unknown: Vec<&String> = vars
        .keys()
        .filter(|n| !manifest.variables.contains_key(*n))
        .collect();
    assert!(
        unknown.is_empty(),
        "{SPINAPP} sets variables spin.toml does not declare: {unknown:?}"
    );
    for (name, (required, secret)) in &manifest.variables {
        if *required {
            assert!(
                vars.contains_key(name),
                "{SPINAPP} does not give the required variable {name}"
            );
        }
        if *secret {
            if let Some(source) = vars.get(name) {
                assert!(
                    source.is_some(),
                    "{SPINAPP}: {name} is secret in spin.toml: take it from a Secret, not a plain value"
                );
            }
        }
    }
    for name in ["cms_client_secret", "token_key", "admin_api_key"] {
        assert!(
            matches!(vars.get(name), Some(Some(_))),
            "{SPINAPP}: {name} must come from a secretKeyRef"
        );
    }
}

#[test]
fn spinapp_runs_replicas_on_the_spin_shim_with_redis_from_a_secret() {
    let app = spinapp();
    let spec = &app["spec"];
    assert_eq!(str_at(spec, &["executor"], SPINAPP), "containerd-shim-spin");
    let image = str_at(spec, &["image"], SPINAPP);
    assert!(
        image.contains("bluebutton-spin:"),
        "{SPINAPP}: image {image:?}"
    );
    let replicas = spec["replicas"].as_u64().expect("spec.replicas");
    assert!(replicas >= 2, "{SPINAPP}: replicas {replicas}");

    // Several replicas need a shared store: the runtime config Secret must hold redis.toml's store.
    let secret = str_at(spec, &["runtimeConfig", "loadFromSecret"], SPINAPP);
    let secrets = example_secrets();
    let keys = secrets.get(secret).unwrap_or_else(|| {
        panic!("{SECRETS} does not define the Secret {secret} that loadFromSecret names")
    });
    let text = keys
        .get("runtime-config.toml")
        .unwrap_or_else(|| panic!("{SECRETS}: Secret {secret} lacks the key runtime-config.toml"));
    let rc: toml::Table = text
        .parse()
        .unwrap_or_else(|e| panic!("{SECRETS}: runtime-config.toml is not TOML: {e}"));
    let file = format!("{SECRETS} runtime-config.toml");
    assert_eq!(check_kv_store(&rc, &file).as_deref(), Some("redis"));
    assert_eq!(
        rc["key_value_store"],
        toml_file("runtime-config/redis.toml")["key_value_store"],
        "{SECRETS}: runtime-config.toml should match runtime-config/redis.toml"
    );
}

#[test]
fn every_secret_key_ref_names_a_key_of_the_example_secret() {
    let secrets = example_secrets();
    for file in [SPINAPP, CRONJOB] {
        let mut refs = Vec::new();
        for doc in yaml_docs(file) {
            secret_key_refs(&doc, &mut refs);
        }
        assert!(!refs.is_empty(), "{file} reads no Secret");
        for (name, key) in refs {
            let keys = secrets.get(&name).unwrap_or_else(|| {
                panic!("{file} reads Secret {name}, which {SECRETS} does not define")
            });
            assert!(
                keys.contains_key(&key),
                "{file} reads key {key} of Secret {name}, which {SECRETS} does not define"
            );
        }
    }
}

#[test]
fn the_example_secret_holds_placeholders_only() {
    for (name, keys) in example_secrets() {
        for (key, value) in keys {
            if key == "runtime-config.toml" {
                continue;
            }
            assert!(
                value.starts_with("REPLACE_"),
                "{SECRETS}: {name}.{key} should be a REPLACE_ placeholder, not a value"
            );
        }
    }
}

#[test]
fn the_health_checks_use_a_route_spin_toml_serves() {
    let manifest = Manifest::load();
    let app = spinapp();
    for probe in ["readiness", "liveness"] {
        let path = str_at(&app, &["spec", "checks", probe, "httpGet", "path"], SPINAPP);
        assert_eq!(path, HEALTH_PATH, "{SPINAPP}: {probe} check");
        manifest.require_route(path, &format!("{SPINAPP} ({probe} check)"));
    }
}

#[test]
fn the_cronjob_posts_to_sync_with_the_admin_key() {
    let manifest = Manifest::load();
    let job = only_doc(CRONJOB);
    assert_eq!(str_at(&job, &["apiVersion"], CRONJOB), "batch/v1");
    assert_eq!(str_at(&job, &["kind"], CRONJOB), "CronJob");
    let spec = &job["spec"];
    assert_eq!(str_at(spec, &["concurrencyPolicy"], CRONJOB), "Forbid");
    let schedule: Vec<&str> = str_at(spec, &["schedule"], CRONJOB)
        .split_whitespace()
        .collect();
    assert_eq!(schedule.len(), 5, "{CRONJOB}: schedule {schedule:?}");
    assert!(
        schedule[0].parse::<u8>().is_ok() && schedule[1..].iter().all(|f| *f == "*"),
        "{CRONJOB}: schedule {schedule:?} should be hourly"
    );

    let pod = &spec["jobTemplate"]["spec"]["template"]["spec"];
    let containers = pod["containers"].as_sequence().expect("containers");
    assert_eq!(containers.len(), 1);
    let container = &containers[0];
    let argv: Vec<&str> = ["command", "args"]
        .iter()
        .filter_map(|k| container.get(k).and_then(Yaml::as_sequence))
        .flatten()
        .map(|v| v.as_str().expect("string arguments"))
        .collect();
    assert!(
        argv.contains(&"--fail-with-body"),
        "{CRONJOB}: a non-2xx must fail the job: {argv:?}"
    );
    let method = argv
        .windows(2)
        .find(|w| w[0] == "--request" || w[0] == "-X")
        .map(|w| w[1]);
    assert_eq!(method, Some("POST"), "{CRONJOB}: {argv:?}");

    // The URL: the operator's Service for the SpinApp (same name), a route the app serves.
    let service = str_at(&spinapp(), &["metadata", "name"], SPINAPP).to_string();
    let url = argv
        .iter()
        .find(|a| a.starts_with("http://") || a.starts_with("https://"))
        .expect("a URL argument");
    let (_, rest) = url.split_once("://").unwrap();
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    assert_eq!(
        host_of(authority),
        service,
        "{CRONJOB}: call the SpinApp's Service"
    );
    assert_eq!(path, SYNC_PATH);
    assert_eq!(
        manifest.require_route(path, CRONJOB),
        "fhir-fetch",
        "{SYNC_PATH} is fhir-fetch's"
    );

    // The admin key: a header from an env var that reads the same Secret key the SpinApp gives the app.
    let header = argv
        .windows(2)
        .find(|w| (w[0] == "--header" || w[0] == "-H") && w[1].starts_with("Authorization:"))
        .map(|w| w[1])
        .expect("an Authorization header");
    let var = header
        .strip_prefix("Authorization: Bearer $(")
        .and_then(|rest| rest.strip_suffix(')'))
        .unwrap_or_else(|| panic!("{CRONJOB}: header {header:?} should be `Bearer $(VAR)`"));
    let env = container["env"].as_sequence().expect("env");
    let entry = env
        .iter()
        .find(|e| e["name"].as_str() == Some(var))
        .unwrap_or_else(|| panic!("{CRONJOB}: no env var {var}"));
    let mut refs = Vec::new();
    secret_key_refs(entry, &mut refs);
    let app_vars = spinapp_variables(&spinapp());
    let admin = app_vars
        .get("admin_api_key")
        .cloned()
        .flatten()
        .expect("the SpinApp takes admin_api_key from a Secret");
    assert_eq!(
        refs,
        vec![admin],
        "{CRONJOB}: {var} must read the Secret key the app's admin_api_key reads"
    );
}

#[test]
fn the_combined_runtime_config_trusts_the_spinapp_connect_host() {
    let manifest = Manifest::load();
    let file = "runtime-config/redis-connect-tls.toml";
    let hosts = check_client_tls(&toml_file(file), file, &manifest).expect("client_tls");
    let app = spinapp();
    let connect_url = app["spec"]["variables"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|v| v["name"].as_str() == Some("connect_url"))
        .and_then(|v| v["value"].as_str())
        .map_or_else(|| manifest.default_of("connect_url"), str::to_string);
    let connect = host_of(&connect_url);
    assert!(
        hosts.contains(&connect),
        "{file}: hosts {hosts:?} miss {connect:?}, the host of the SpinApp's connect_url"
    );
}
