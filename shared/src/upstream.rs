//! What an error body from CMS says, in each of its shapes: Django REST framework's `{"detail": …}`
//! (the v1/v2 FHIR views), OAuth's `{"status_code", "error", "error_description"}` or
//! `{"status_code", "message"}` (the token and authorization views), and a FHIR `OperationOutcome`
//! (v3 passes its backend's through). URLs are cut out of the text: CMS's messages can name its
//! internal hosts, which the app's callers have no business seeing.

use serde_json::Value;

/// The longest detail kept from an upstream's body.
const MAX_DETAIL_CHARS: usize = 500;

/// The error text in `body`, when it has one of the shapes above.
pub fn error_detail(body: &[u8]) -> Option<String> {
    let body: Value = serde_json::from_slice(body).ok()?;
    let text = if body["resourceType"] == "OperationOutcome" {
        let issues: Vec<String> = body["issue"]
            .as_array()?
            .iter()
            .filter_map(|issue| {
                let said = issue["diagnostics"]
                    .as_str()
                    .or_else(|| issue["details"]["text"].as_str())
                    .or_else(|| issue["code"].as_str())?;
                Some(match issue["severity"].as_str() {
                    Some(severity) => format!("{severity}: {said}"),
                    None => said.to_string(),
                })
            })
            .collect();
        (!issues.is_empty()).then(|| issues.join("; "))?
    } else if let Some(detail) = body["detail"].as_str() {
        detail.to_string()
    } else if let Some(error) = body["error"].as_str() {
        match body["error_description"].as_str() {
            Some(description) => format!("{error}: {description}"),
            None => error.to_string(),
        }
    } else {
        body["message"].as_str()?.to_string()
    };
    Some(scrub(&text))
}

/// Whether `body` is a FHIR OperationOutcome (what v3 passes through from its backend, status and all).
pub fn is_operation_outcome(body: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct Typed<'a> {
        #[serde(rename = "resourceType", borrow)]
        resource_type: Option<&'a str>,
    }
    serde_json::from_slice::<Typed>(body)
        .is_ok_and(|typed| typed.resource_type == Some("OperationOutcome"))
}

/// `text` without URLs, and no longer than [`MAX_DETAIL_CHARS`].
fn scrub(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = ["http://", "https://"]
        .iter()
        .filter_map(|scheme| rest.find(scheme))
        .min()
    {
        out.push_str(&rest[..at]);
        out.push_str("(a URL)");
        let url_end = rest[at..]
            .find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '<' | '>' | ')' | ','))
            .map_or(rest.len(), |len| at + len);
        rest = &rest[url_end..];
    }
    out.push_str(rest);
    match out.char_indices().nth(MAX_DETAIL_CHARS) {
        Some((cut, _)) => format!("{}…", &out[..cut]),
        None => out,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_of_cms_error_shapes_is_read() {
        // BFD's OperationOutcome, as captured from the web server's tests.
        let outcome = br#"{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"processing","diagnostics":"Failed to call access method: java.lang.IllegalArgumentException: Unsupported ID pattern: part-d____--20140000008325"}]}"#;
        assert_eq!(
            error_detail(outcome).unwrap(),
            "error: Failed to call access method: java.lang.IllegalArgumentException: Unsupported \
             ID pattern: part-d____--20140000008325"
        );
        let coded = br#"{"resourceType":"OperationOutcome","issue":[{"code":"not-found"}]}"#;
        assert_eq!(error_detail(coded).unwrap(), "not-found");
        assert_eq!(
            error_detail(br#"{"detail":"Not found."}"#).unwrap(),
            "Not found."
        );
        assert_eq!(
            error_detail(br#"{"status_code":400,"error":"invalid_grant","error_description":"Invalid refresh token"}"#)
                .unwrap(),
            "invalid_grant: Invalid refresh token"
        );
        assert_eq!(
            error_detail(br#"{"status_code":403,"message":"User data access grant not found"}"#)
                .unwrap(),
            "User data access grant not found"
        );
        assert_eq!(error_detail(b"<html>502</html>"), None);
        assert!(is_operation_outcome(outcome));
        assert!(!is_operation_outcome(br#"{"detail":"Not found."}"#));
        assert_eq!(
            error_detail(br#"{"resourceType":"OperationOutcome","issue":[]}"#),
            None
        );
    }

    #[test]
    fn internal_hosts_are_cut_and_long_texts_shortened() {
        let said = br#"{"detail":"An error occurred contacting the upstream server: 500 https://prod-sbx.bfd.internal:7443/v2/fhir/ExplanationOfBenefit?patient=-1, try later"}"#;
        assert_eq!(
            error_detail(said).unwrap(),
            "An error occurred contacting the upstream server: 500 (a URL), try later"
        );
        let long = format!(r#"{{"detail":"{}"}}"#, "é".repeat(600));
        assert_eq!(error_detail(long.as_bytes()).unwrap().chars().count(), 501);
    }
}
