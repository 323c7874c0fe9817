//! Request and response types shared by every handler (plain `http` types, which spin-sdk accepts as is).

use serde::Serialize;

pub type Request = http::Request<Vec<u8>>;
pub type Response = http::Response<Vec<u8>>;

pub fn json_response<T: Serialize>(status: u16, body: &T) -> Response {
    let body = serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec());
    let mut resp = http::Response::new(body);
    *resp.status_mut() = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::OK);
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp
}

/// Marks a response that carries a secret (a session, say) as never to be cached.
pub fn no_store(mut resp: Response) -> Response {
    resp.headers_mut().insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    resp
}

/// The query string's pairs, decoded.
pub fn query_pairs(req: &Request) -> Vec<(String, String)> {
    req.uri()
        .query()
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .into_owned()
                .collect()
        })
        .unwrap_or_default()
}

pub fn query_param(req: &Request, name: &str) -> Option<String> {
    query_pairs(req)
        .into_iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
}

pub fn header<'a>(req: &'a Request, name: &str) -> Option<&'a str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

/// `Authorization: Bearer <token>`; the scheme is case-insensitive (RFC 7235).
pub fn bearer(req: &Request) -> Option<&str> {
    let value = header(req, "authorization")?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_parsing() {
        let req = http::Request::builder()
            .header("Authorization", "bearer abc")
            .body(Vec::new())
            .unwrap();
        assert_eq!(bearer(&req), Some("abc"));
        let req = http::Request::builder()
            .header("Authorization", "Basic abc")
            .body(Vec::new())
            .unwrap();
        assert_eq!(bearer(&req), None);
    }

    #[test]
    fn query_decoding() {
        let req = http::Request::builder()
            .uri("/x?a=1%202&b=%2F")
            .body(Vec::new())
            .unwrap();
        assert_eq!(query_param(&req, "a").as_deref(), Some("1 2"));
        assert_eq!(query_param(&req, "b").as_deref(), Some("/"));
        assert_eq!(query_param(&req, "c"), None);
    }
}
