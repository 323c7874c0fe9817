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
        let dotenv = match dotenv.map(|p| (p, std::fs::read_to_string(p))) {
            Some((path, Ok(text))) => parse_dotenv(&text).unwrap_or_else(|err| {
                // Spin then takes nothing from the file (silently); say why.
                eprintln!(
                    "Warning: {} is not a valid dotenv file ({err}): none of it is used",
                    path.display()
                );
                HashMap::new()
            }),
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

/// A `.env` file read as Spin reads it (the `dotenvy` crate's rules, single-line values): `NAME=value`,
/// optionally after `export `, no space around `=`; a value is unquoted (ends at whitespace, after which
/// only a `#` comment may follow), `'single'` (literal) or `"double"` quoted (with `\` escapes), and may
/// use `$NAME` / `${NAME}` of the environment or an earlier line. One malformed line and Spin takes
/// nothing from the file, e.g. for `NAME=two words`: so does this.
fn parse_dotenv(text: &str) -> Result<HashMap<String, String>, String> {
    let mut values = HashMap::new();
    for line in text.lines() {
        let line = line.trim_start();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = match line.strip_prefix("export") {
            Some(rest) if rest.starts_with([' ', '\t']) => rest.trim_start(),
            _ => line,
        };
        let (name, value) = line
            .split_once('=')
            .ok_or_else(|| format!("no `=` in {line:?}"))?;
        let valid_name = name
            .starts_with(|c: char| c.is_ascii_alphabetic() || c == '_' || c == '.')
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.');
        if !valid_name {
            return Err(format!("bad name {name:?}"));
        }
        let value =
            parse_dotenv_value(value, &values).ok_or_else(|| format!("bad value in {line:?}"))?;
        values.insert(name.to_string(), value);
    }
    Ok(values)
}

fn parse_dotenv_value(input: &str, earlier: &HashMap<String, String>) -> Option<String> {
    let substitute = |name: &str, out: &mut String| {
        if let Some(v) = std::env::var(name)
            .ok()
            .or_else(|| earlier.get(name).cloned())
        {
            out.push_str(&v);
        }
    };
    let mut out = String::new();
    let (mut strong, mut weak, mut escaped, mut expecting_end) = (false, false, false, false);
    let mut chars = input.trim_end().chars().peekable();
    while let Some(c) = chars.next() {
        if expecting_end {
            match c {
                ' ' | '\t' => continue,
                '#' => break,
                _ => return None,
            }
        } else if escaped {
            match c {
                '\\' | '\'' | '"' | '$' | ' ' => out.push(c),
                'n' if weak => out.push('\n'),
                _ => return None,
            }
            escaped = false;
        } else if strong {
            if c == '\'' {
                strong = false;
            } else {
                out.push(c);
            }
        } else if c == '$' {
            let mut name = String::new();
            if chars.peek() == Some(&'{') {
                chars.next();
                loop {
                    match chars.next()? {
                        '}' => break,
                        c => name.push(c),
                    }
                }
            } else {
                while let Some(&c) = chars.peek() {
                    if !(c.is_alphanumeric() || c == '_') {
                        break;
                    }
                    name.push(c);
                    chars.next();
                }
            }
            substitute(&name, &mut out);
        } else if weak {
            match c {
                '"' => weak = false,
                '\\' => escaped = true,
                c => out.push(c),
            }
        } else {
            match c {
                '\'' => strong = true,
                '"' => weak = true,
                '\\' => escaped = true,
                ' ' | '\t' => expecting_end = true,
                '#' if out.is_empty() => break,
                c => out.push(c),
            }
        }
    }
    (!strong && !weak && !escaped).then_some(out)
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
        let parsed = parse_dotenv("# c\nexport A=\"1\"\nB='2'\nC=3\n\n").unwrap();
        assert_eq!(parsed["A"], "1");
        assert_eq!(parsed["B"], "2");
        assert_eq!(parsed["C"], "3");
        let parsed =
            parse_dotenv("D=\"two words\"\nE=x # a comment\nF=\nG=a\\ b\nH=${D}!\nI='$D'\n  J=1\n")
                .unwrap();
        assert_eq!(parsed["D"], "two words");
        assert_eq!(parsed["E"], "x");
        assert_eq!(parsed["F"], "");
        assert_eq!(parsed["G"], "a b");
        assert_eq!(parsed["H"], "two words!");
        assert_eq!(parsed["I"], "$D");
        assert_eq!(parsed["J"], "1");
        // As in Spin (dotenvy): one bad line and the file gives nothing.
        for bad in [
            "A=1\nB=two words\n",
            "A =1\n",
            "A= 1\n",
            "A=\"open\n",
            "just words\n",
        ] {
            assert!(parse_dotenv(bad).is_err(), "{bad:?}");
        }
    }
}
