//! Application variables as Spin resolves them: `--variable` first, then `SPIN_VARIABLE_<NAME>` in the
//! environment, then a `.env` file (Spin 3 reads `.env` in its current directory, not beside the
//! manifest, and not in a parent folder), then the manifest's `default`.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use anyhow::{bail, Context, Result};

use super::manifest::VariableDecl;

/// Resolved application variables: every declared name has a value (required ones were provided).
#[derive(Debug, Clone, Default)]
pub struct Variables {
    values: HashMap<String, String>,
    secret: Vec<String>,
}

/// Where values come from, highest precedence first.
#[derive(Debug, Clone, Default)]
pub struct VariableSources {
    pub cli: Vec<(String, String)>,
    pub env: HashMap<String, String>,
    pub dotenv: HashMap<String, String>,
}

impl VariableSources {
    /// Values from the process environment and from the dotenv file (if given and present), plus explicit
    /// `name=value` pairs (`name=@file`: the file's text, as `spin up --variable` reads it).
    pub fn gather(cli: &[String], dotenv: Option<&Path>) -> Result<VariableSources> {
        let cli = cli
            .iter()
            .map(|pair| {
                let (name, value) = pair
                    .split_once('=')
                    .with_context(|| format!("--variable {pair:?} must be name=value"))?;
                let value = match value.strip_prefix('@') {
                    Some(file) => std::fs::read_to_string(file)
                        .with_context(|| format!("--variable {name}: cannot read {file}"))?,
                    None => value.to_string(),
                };
                Ok((name.trim().to_string(), value))
            })
            .collect::<Result<_>>()?;
        let env = std::env::vars().collect();
        let dotenv = match dotenv.map(std::fs::read_to_string) {
            Some(Ok(text)) => parse_dotenv(&text),
            _ => HashMap::new(),
        };
        Ok(VariableSources { cli, env, dotenv })
    }

    fn lookup(&self, name: &str) -> Option<String> {
        let env_name = format!("SPIN_VARIABLE_{}", name.to_ascii_uppercase());
        self.cli
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .or_else(|| self.env.get(&env_name).cloned())
            .or_else(|| self.dotenv.get(&env_name).cloned())
    }
}

fn parse_dotenv(text: &str) -> HashMap<String, String> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .filter_map(|line| {
            let line = line.strip_prefix("export ").unwrap_or(line);
            let (name, value) = line.split_once('=')?;
            let value = value.trim();
            let unquoted = value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .or_else(|| value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
                .unwrap_or(value);
            Some((name.trim().to_string(), unquoted.to_string()))
        })
        .collect()
}

impl Variables {
    pub fn resolve(
        decls: &BTreeMap<String, VariableDecl>,
        sources: &VariableSources,
    ) -> Result<Variables> {
        let mut values = HashMap::new();
        let mut missing = Vec::new();
        for (name, decl) in decls {
            match sources.lookup(name).or_else(|| decl.default.clone()) {
                Some(value) => {
                    values.insert(name.clone(), value);
                }
                None => missing.push(name.as_str()),
            }
        }
        if !missing.is_empty() {
            // Spin says `no provider resolved required variable(s): [Key("name"), ...]`.
            bail!(
                "no provider resolved required variable(s): {}; provide each with --variable \
                 NAME=VALUE, the environment variable SPIN_VARIABLE_<NAME>, or a .env file in the \
                 current directory",
                missing.join(", ")
            );
        }
        for (name, _) in &sources.cli {
            if !decls.contains_key(name) {
                bail!("--variable {name}: the manifest declares no such variable");
            }
        }
        let secret = decls
            .iter()
            .filter(|(_, d)| d.secret)
            .map(|(n, _)| n.clone())
            .collect();
        Ok(Variables { values, secret })
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }

    pub fn is_secret(&self, name: &str) -> bool {
        self.secret.iter().any(|s| s == name)
    }

    /// Expands `{{ name }}` references to application variables, as Spin does for component variables and
    /// `allowed_outbound_hosts`.
    pub fn expand(&self, template: &str) -> Result<String> {
        let mut out = String::with_capacity(template.len());
        let mut rest = template;
        while let Some(start) = rest.find("{{") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            let end = after
                .find("}}")
                .with_context(|| format!("unterminated template in {template:?}"))?;
            let name = after[..end].trim();
            let value = self.get(name).with_context(|| {
                format!("template {template:?} references undeclared variable {name:?}")
            })?;
            out.push_str(value);
            rest = &after[end + 2..];
        }
        out.push_str(rest);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decls() -> BTreeMap<String, VariableDecl> {
        BTreeMap::from([
            (
                "base".to_string(),
                VariableDecl {
                    default: Some("https://example.org".into()),
                    ..Default::default()
                },
            ),
            (
                "secret_key".to_string(),
                VariableDecl {
                    required: true,
                    secret: true,
                    ..Default::default()
                },
            ),
        ])
    }

    #[test]
    fn missing_required_variable_is_named() {
        let err = Variables::resolve(&decls(), &VariableSources::default()).unwrap_err();
        assert!(err.to_string().contains("secret_key"), "{err}");
    }

    #[test]
    fn precedence_cli_env_dotenv_default() {
        let mut sources = VariableSources {
            dotenv: HashMap::from([("SPIN_VARIABLE_SECRET_KEY".into(), "dotenv".into())]),
            ..Default::default()
        };
        let vars = Variables::resolve(&decls(), &sources).unwrap();
        assert_eq!(vars.get("secret_key"), Some("dotenv"));
        assert_eq!(vars.get("base"), Some("https://example.org"));
        sources
            .env
            .insert("SPIN_VARIABLE_SECRET_KEY".into(), "env".into());
        assert_eq!(
            Variables::resolve(&decls(), &sources)
                .unwrap()
                .get("secret_key"),
            Some("env")
        );
        sources.cli.push(("secret_key".into(), "cli".into()));
        let vars = Variables::resolve(&decls(), &sources).unwrap();
        assert_eq!(vars.get("secret_key"), Some("cli"));
        assert!(vars.is_secret("secret_key"));
    }

    #[test]
    fn templates_expand_and_reject_unknown_names() {
        let sources = VariableSources {
            cli: vec![("secret_key".into(), "k".into())],
            ..Default::default()
        };
        let vars = Variables::resolve(&decls(), &sources).unwrap();
        assert_eq!(
            vars.expand("{{ base }}/x").unwrap(),
            "https://example.org/x"
        );
        assert_eq!(vars.expand("{{base}}").unwrap(), "https://example.org");
        assert!(vars.expand("{{ nope }}").is_err());
    }

    #[test]
    fn dotenv_parsing() {
        let parsed = parse_dotenv("# c\nexport A=\"1\"\nB='2'\nC=3\n\n");
        assert_eq!(parsed["A"], "1");
        assert_eq!(parsed["B"], "2");
        assert_eq!(parsed["C"], "3");
    }
}
