//! `allowed_outbound_hosts`, enforced the way Spin does (spinframework/spin
//! `crates/outbound-networking-config/src/allowed_hosts.rs`): `scheme://host[:port]`, no path; `*` for the
//! scheme, host or port; `*.example.com` subdomains; `a..b` port ranges; CIDR host ranges. Without a port,
//! only the scheme's default port is allowed.

use std::net::IpAddr;

use anyhow::{bail, ensure, Context, Result};

#[derive(Debug, Clone, PartialEq)]
pub struct AllowedHost {
    scheme: Option<String>,
    host: HostPattern,
    port: PortPattern,
}

#[derive(Debug, Clone, PartialEq)]
enum HostPattern {
    Any,
    Subdomains(String),
    Exact(String),
    Cidr(IpAddr, u8),
}

#[derive(Debug, Clone, PartialEq)]
enum PortPattern {
    Any,
    Range(u16, u16),
}

/// The allow-list of one component.
#[derive(Debug, Clone, Default)]
pub struct AllowedHosts {
    hosts: Vec<AllowedHost>,
}

impl AllowedHosts {
    /// Parses already-expanded entries; empty results of templates are skipped, as in Spin.
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<AllowedHosts> {
        let hosts = entries
            .iter()
            .map(AsRef::as_ref)
            .filter(|e| !e.is_empty() && !e.ends_with("://"))
            .map(|e| AllowedHost::parse(e).with_context(|| format!("allowed_outbound_hosts {e:?}")))
            .collect::<Result<_>>()?;
        Ok(AllowedHosts { hosts })
    }

    pub fn allows(&self, scheme: &str, host: &str, port: Option<u16>) -> bool {
        let Some(port) = port.or_else(|| default_port(scheme)) else {
            return false;
        };
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase();
        self.hosts.iter().any(|h| h.allows(scheme, &host, port))
    }
}

fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" => Some(80),
        "https" => Some(443),
        _ => None,
    }
}

impl AllowedHost {
    pub fn parse(entry: &str) -> Result<AllowedHost> {
        let (scheme, rest) = entry
            .split_once("://")
            .context("an allowed host needs a scheme, e.g. https://example.com")?;
        ensure!(!scheme.is_empty(), "empty scheme");
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        let (host, port) = split_host_port(rest)?;
        // A slash is only allowed as a CIDR prefix length (`10.0.0.0/8`), never as a path.
        let is_cidr = host
            .split_once('/')
            .is_some_and(|(ip, bits)| ip.parse::<IpAddr>().is_ok() && bits.parse::<u8>().is_ok());
        ensure!(
            (!host.contains('/') || is_cidr) && !port.is_some_and(|p| p.contains('/')),
            "an allowed host cannot have a path"
        );
        let port = match port {
            None => match default_port(scheme) {
                Some(p) => PortPattern::Range(p, p),
                None => bail!("scheme {scheme:?} has no default port: give one"),
            },
            Some("*") => PortPattern::Any,
            Some(p) => match p.split_once("..") {
                Some((lo, hi)) => PortPattern::Range(lo.parse()?, hi.parse::<u16>()? - 1),
                None => {
                    let p: u16 = p.parse().with_context(|| format!("bad port {p:?}"))?;
                    PortPattern::Range(p, p)
                }
            },
        };
        let host = if host == "*" {
            HostPattern::Any
        } else if let Some(domain) = host.strip_prefix("*.") {
            HostPattern::Subdomains(domain.to_ascii_lowercase())
        } else if let Some((ip, bits)) = host.split_once('/') {
            HostPattern::Cidr(ip.parse()?, bits.parse()?)
        } else {
            ensure!(!host.is_empty(), "empty host");
            HostPattern::Exact(host.to_ascii_lowercase())
        };
        Ok(AllowedHost {
            scheme: (scheme != "*").then(|| scheme.to_string()),
            host,
            port,
        })
    }

    fn allows(&self, scheme: &str, host: &str, port: u16) -> bool {
        let scheme_ok = self.scheme.as_deref().is_none_or(|s| s == scheme);
        let host_ok = match &self.host {
            HostPattern::Any => true,
            HostPattern::Exact(h) => h == host,
            HostPattern::Subdomains(d) => host
                .strip_suffix(d.as_str())
                .is_some_and(|prefix| prefix.ends_with('.') && prefix.len() > 1),
            HostPattern::Cidr(net, bits) => host
                .parse::<IpAddr>()
                .is_ok_and(|ip| in_cidr(ip, *net, *bits)),
        };
        let port_ok = match self.port {
            PortPattern::Any => true,
            PortPattern::Range(lo, hi) => (lo..=hi).contains(&port),
        };
        scheme_ok && host_ok && port_ok
    }
}

fn split_host_port(authority: &str) -> Result<(&str, Option<&str>)> {
    if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest.split_once(']').context("unclosed [")?;
        return Ok((host, after.strip_prefix(':')));
    }
    Ok(match authority.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => (host, Some(port)),
        _ => (authority, None),
    })
}

fn in_cidr(ip: IpAddr, net: IpAddr, bits: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(ip), IpAddr::V4(net)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(bits)).unwrap_or(0);
            u32::from(ip) & mask == u32::from(net) & mask
        }
        (IpAddr::V6(ip), IpAddr::V6(net)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(bits)).unwrap_or(0);
            u128::from(ip) & mask == u128::from(net) & mask
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_port_only_without_explicit_port() {
        let a = AllowedHosts::parse(&["https://sandbox.bluebutton.cms.gov"]).unwrap();
        assert!(a.allows("https", "sandbox.bluebutton.cms.gov", None));
        assert!(a.allows("https", "sandbox.bluebutton.cms.gov", Some(443)));
        assert!(!a.allows("https", "sandbox.bluebutton.cms.gov", Some(8443)));
        assert!(!a.allows("http", "sandbox.bluebutton.cms.gov", None));
        assert!(!a.allows("https", "evil.example", None));
    }

    #[test]
    fn explicit_ports_ranges_and_wildcards() {
        let a = AllowedHosts::parse(&[
            "http://127.0.0.1:5000",
            "https://*.example.com",
            "*://localhost:*",
            "http://10.0.0.0/8:8000..8002",
            "",
            "https://",
        ])
        .unwrap();
        assert!(a.allows("http", "127.0.0.1", Some(5000)));
        assert!(!a.allows("http", "127.0.0.1", Some(5001)));
        assert!(a.allows("https", "api.example.com", None));
        assert!(!a.allows("https", "example.com", None));
        assert!(!a.allows("https", "badexample.com", None));
        assert!(a.allows("http", "localhost", Some(1234)));
        assert!(a.allows("https", "LOCALHOST", Some(1)));
        assert!(a.allows("http", "10.1.2.3", Some(8001)));
        assert!(!a.allows("http", "10.1.2.3", Some(8002)));
        assert!(!a.allows("http", "11.1.2.3", Some(8001)));
    }

    #[test]
    fn malformed_entries_are_refused() {
        assert!(AllowedHost::parse("example.com").is_err());
        assert!(AllowedHost::parse("https://example.com/path").is_err());
        assert!(AllowedHost::parse("*://example.com").is_err());
        assert!(AllowedHost::parse("https://example.com:x").is_err());
    }
}
