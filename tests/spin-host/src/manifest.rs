//! `spin.toml` (manifest version 2): the parts a Spin HTTP app uses.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub spin_manifest_version: u32,
    pub application: Application,
    #[serde(default)]
    pub variables: BTreeMap<String, VariableDecl>,
    #[serde(default)]
    pub trigger: Triggers,
    #[serde(default)]
    pub component: BTreeMap<String, ComponentDecl>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Application {
    pub name: String,
    pub version: Option<String>,
    pub description: Option<String>,
    #[serde(default)]
    pub authors: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VariableDecl {
    pub default: Option<String>,
    #[serde(default)]
    pub required: bool,
    #[serde(default)]
    pub secret: bool,
    pub description: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Triggers {
    #[serde(default)]
    pub http: Vec<HttpTrigger>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct HttpTrigger {
    pub route: RouteDecl,
    pub component: String,
    pub id: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum RouteDecl {
    Path(String),
    Private { private: bool },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComponentDecl {
    pub source: String,
    pub description: Option<String>,
    #[serde(default)]
    pub allowed_outbound_hosts: Vec<String>,
    #[serde(default)]
    pub key_value_stores: Vec<String>,
    #[serde(default)]
    pub variables: BTreeMap<String, String>,
    pub build: Option<BuildDecl>,
    #[serde(default)]
    pub files: Vec<toml::Value>,
    #[serde(default)]
    pub environment: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuildDecl {
    pub command: String,
    pub workdir: Option<String>,
    #[serde(default)]
    pub watch: Vec<String>,
}

impl Manifest {
    pub fn load(path: &Path) -> Result<(Manifest, PathBuf)> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read manifest {}", path.display()))?;
        let manifest = Manifest::parse(&text)
            .with_context(|| format!("invalid manifest {}", path.display()))?;
        let dir = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        Ok((manifest, dir))
    }

    /// Parses and applies the checks `spin up` makes before it starts anything.
    pub fn parse(text: &str) -> Result<Manifest> {
        let manifest: Manifest = toml::from_str(text)?;
        ensure!(
            manifest.spin_manifest_version == 2,
            "spin_manifest_version must be 2"
        );
        for (name, decl) in &manifest.variables {
            ensure!(
                is_variable_name(name),
                "variable name {name:?} must be lower_snake_case"
            );
            match (decl.required, &decl.default) {
                (true, Some(_)) => bail!("variable {name:?} cannot be both required and defaulted"),
                (false, None) => bail!("variable {name:?} must be required or have a default"),
                _ => {}
            }
        }
        for trigger in &manifest.trigger.http {
            ensure!(
                manifest.component.contains_key(&trigger.component),
                "trigger references unknown component {:?}",
                trigger.component
            );
            if let RouteDecl::Path(route) = &trigger.route {
                ensure!(route.starts_with('/'), "route {route:?} must start with /");
            }
        }
        for (id, component) in &manifest.component {
            for name in component.variables.keys() {
                ensure!(
                    is_variable_name(name),
                    "component {id}: variable name {name:?} must be lower_snake_case"
                );
            }
        }
        Ok(manifest)
    }
}

fn is_variable_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some('a'..='z'))
        && chars.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '_'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn required_and_default_are_exclusive() {
        let text = r#"
            spin_manifest_version = 2
            [application]
            name = "x"
            [variables]
            a = { required = true, default = "1" }
        "#;
        assert!(Manifest::parse(text).is_err());
    }

    #[test]
    fn private_routes_parse() {
        let text = r#"
            spin_manifest_version = 2
            [application]
            name = "x"
            [[trigger.http]]
            route = { private = true }
            component = "c"
            [component.c]
            source = "c.wasm"
        "#;
        let manifest = Manifest::parse(text).unwrap();
        assert!(matches!(
            manifest.trigger.http[0].route,
            RouteDecl::Private { private: true }
        ));
    }
}
