//! HTTP trigger routing as in Spin 3: exact routes, `:name` segments and a trailing `/...` wildcard; the most
//! specific route wins (exact before parameterised before wildcard, longer before shorter).

use std::collections::HashMap;

use anyhow::{bail, Result};

#[derive(Debug, Clone)]
pub struct Route {
    /// The route as written in the manifest, e.g. `/bluebutton/fhir/...`.
    pub raw: String,
    pub component: String,
    segments: Vec<Segment>,
    wildcard: bool,
}

#[derive(Debug, Clone, PartialEq)]
enum Segment {
    Literal(String),
    Param(String),
}

#[derive(Debug, Clone)]
pub struct RouteMatch<'a> {
    pub route: &'a Route,
    /// What follows the matched prefix (Spin's `spin-path-info`), e.g. `/Patient` for `/bluebutton/fhir/...`.
    pub path_info: String,
    pub params: HashMap<String, String>,
}

impl Route {
    pub fn parse(raw: &str, component: &str) -> Result<Route> {
        let (base, wildcard) = match raw.strip_suffix("/...") {
            Some(base) => (base, true),
            None if raw == "/..." => ("", true),
            None => (raw, false),
        };
        if base.contains("...") {
            bail!("route {raw:?}: `...` may only end a route");
        }
        let segments = split(base)
            .map(|s| match s.strip_prefix(':') {
                Some(name) => Segment::Param(name.to_string()),
                None => Segment::Literal(s.to_string()),
            })
            .collect();
        Ok(Route {
            raw: raw.to_string(),
            component: component.to_string(),
            segments,
            wildcard,
        })
    }

    /// The route without its wildcard suffix (Spin's `spin-component-route`).
    pub fn base(&self) -> String {
        self.raw
            .strip_suffix("/...")
            .unwrap_or(if self.raw == "/..." { "" } else { &self.raw })
            .to_string()
    }

    fn matches(&self, path: &str) -> Option<RouteMatch<'_>> {
        let parts: Vec<&str> = split(path).collect();
        if parts.len() < self.segments.len()
            || (!self.wildcard && parts.len() != self.segments.len())
        {
            return None;
        }
        let mut params = HashMap::new();
        for (segment, part) in self.segments.iter().zip(&parts) {
            match segment {
                Segment::Literal(lit) if lit == part => {}
                Segment::Literal(_) => return None,
                Segment::Param(name) => {
                    params.insert(name.clone(), part.to_string());
                }
            }
        }
        let rest = &parts[self.segments.len()..];
        let mut path_info = String::new();
        for part in rest {
            path_info.push('/');
            path_info.push_str(part);
        }
        if self.wildcard && path.ends_with('/') && !rest.is_empty() {
            path_info.push('/');
        }
        Some(RouteMatch {
            route: self,
            path_info,
            params,
        })
    }

    /// Higher is more specific.
    fn specificity(&self) -> (bool, usize, usize) {
        let literals = self
            .segments
            .iter()
            .filter(|s| matches!(s, Segment::Literal(_)))
            .count();
        (!self.wildcard, self.segments.len(), literals)
    }
}

fn split(path: &str) -> impl Iterator<Item = &str> {
    path.split('/').filter(|s| !s.is_empty())
}

#[derive(Debug, Clone, Default)]
pub struct Router {
    routes: Vec<Route>,
}

impl Router {
    pub fn new(mut routes: Vec<Route>) -> Result<Router> {
        for (i, a) in routes.iter().enumerate() {
            if let Some(b) = routes[..i].iter().find(|b| b.raw == a.raw) {
                bail!(
                    "duplicate route {:?} (components {} and {})",
                    a.raw,
                    b.component,
                    a.component
                );
            }
        }
        routes.sort_by_key(|r| std::cmp::Reverse(r.specificity()));
        Ok(Router { routes })
    }

    pub fn route(&self, path: &str) -> Option<RouteMatch<'_>> {
        self.routes.iter().find_map(|r| r.matches(path))
    }

    pub fn routes(&self) -> &[Route] {
        &self.routes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router() -> Router {
        Router::new(vec![
            Route::parse("/...", "fallback").unwrap(),
            Route::parse("/bluebutton/fhir/...", "fhir").unwrap(),
            Route::parse("/bluebutton/authorize", "authorize").unwrap(),
            Route::parse("/bluebutton/connect/outbox", "outbox").unwrap(),
            Route::parse("/bluebutton/connect/...", "connect").unwrap(),
            Route::parse("/items/:id", "item").unwrap(),
        ])
        .unwrap()
    }

    #[test]
    fn most_specific_route_wins() {
        let r = router();
        assert_eq!(
            r.route("/bluebutton/authorize").unwrap().route.component,
            "authorize"
        );
        assert_eq!(
            r.route("/bluebutton/connect/outbox")
                .unwrap()
                .route
                .component,
            "outbox"
        );
        assert_eq!(
            r.route("/bluebutton/connect/dead-letters")
                .unwrap()
                .route
                .component,
            "connect"
        );
        assert_eq!(
            r.route("/bluebutton/authorizeX").unwrap().route.component,
            "fallback"
        );
    }

    #[test]
    fn wildcard_path_info_and_params() {
        let r = router();
        let m = r.route("/bluebutton/fhir/Patient").unwrap();
        assert_eq!(m.route.component, "fhir");
        assert_eq!(m.path_info, "/Patient");
        let m = r.route("/bluebutton/fhir").unwrap();
        assert_eq!(m.route.component, "fhir");
        assert_eq!(m.path_info, "");
        let m = r.route("/items/42").unwrap();
        assert_eq!(m.params["id"], "42");
        assert_eq!(r.route("/items/42/x").unwrap().route.component, "fallback");
    }

    #[test]
    fn exact_routes_do_not_match_longer_paths() {
        let r = Router::new(vec![Route::parse("/a", "a").unwrap()]).unwrap();
        assert!(r.route("/a/b").is_none());
        assert!(r.route("/a").is_some());
    }

    #[test]
    fn duplicate_routes_are_refused() {
        assert!(Router::new(vec![
            Route::parse("/a", "a").unwrap(),
            Route::parse("/a", "b").unwrap()
        ])
        .is_err());
    }
}
