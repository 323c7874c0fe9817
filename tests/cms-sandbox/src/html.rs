//! The login and consent pages (plain HTML forms a plain HTTP client can drive) and a small parser for
//! them, exported so tests can find a form's action and hidden fields without an HTML library.

/// One `<form>` of a page: where it posts and the fields a browser would send without user input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HtmlForm {
    pub action: String,
    pub method: String,
    /// Hidden inputs and pre-checked radio buttons, in document order.
    pub fields: Vec<(String, String)>,
    /// Names of the submit buttons (`allow`, `deny`, ...) with their values.
    pub buttons: Vec<(String, String)>,
}

impl HtmlForm {
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Parses every `<form>` in `html`. Only understands the attribute syntax this emulator emits
/// (double-quoted values), which is all it needs to.
pub fn parse_forms(html: &str) -> Vec<HtmlForm> {
    let mut forms = Vec::new();
    let mut rest = html;
    while let Some(start) = rest.find("<form") {
        let after = &rest[start..];
        let end = after.find("</form>").unwrap_or(after.len());
        let body = &after[..end];
        let open_end = body.find('>').unwrap_or(body.len());
        let open = &body[..open_end];
        let mut form = HtmlForm {
            action: attr(open, "action").unwrap_or_default(),
            method: attr(open, "method")
                .unwrap_or_else(|| "get".into())
                .to_ascii_lowercase(),
            fields: Vec::new(),
            buttons: Vec::new(),
        };
        let mut inner = &body[open_end..];
        while let Some(tag_start) = inner.find('<') {
            let tag = &inner[tag_start..];
            let tag_end = tag.find('>').unwrap_or(tag.len());
            let element = &tag[..tag_end];
            if element.starts_with("<input") {
                let kind = attr(element, "type").unwrap_or_else(|| "text".into());
                let name = attr(element, "name");
                let value = attr(element, "value").unwrap_or_default();
                match (kind.as_str(), name) {
                    ("hidden", Some(n)) => form.fields.push((n, value)),
                    ("radio" | "checkbox", Some(n)) if has_flag(element, "checked") => {
                        form.fields.push((n, value))
                    }
                    ("submit", Some(n)) => form.buttons.push((n, value)),
                    _ => {}
                }
            } else if element.starts_with("<button") {
                if let Some(n) = attr(element, "name") {
                    form.buttons
                        .push((n, attr(element, "value").unwrap_or_default()));
                }
            }
            inner = &tag[tag_end.min(tag.len())..];
            if inner.is_empty() {
                break;
            }
        }
        forms.push(form);
        rest = &after[end..];
    }
    forms
}

fn attr(element: &str, name: &str) -> Option<String> {
    let needle = format!(" {name}=\"");
    let start = element.find(&needle)? + needle.len();
    let len = element[start..].find('"')?;
    Some(unescape(&element[start..start + len]))
}

fn has_flag(element: &str, name: &str) -> bool {
    element
        .split(|c: char| c.is_whitespace() || c == '/' || c == '>')
        .any(|w| w == name)
}

pub(crate) fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#x27;"),
            _ => out.push(c),
        }
    }
    out
}

fn unescape(s: &str) -> String {
    s.replace("&quot;", "\"")
        .replace("&#x27;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

fn page(lang: &str, title: &str, body: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"{}\">\n<head><meta charset=\"utf-8\"><title>{}</title></head>\n<body>\n{}\n</body>\n</html>\n",
        escape(lang),
        escape(title),
        body
    )
}

/// The Medicare.gov-style sign-in page; `auth_id` is the pending authorization's key.
pub(crate) fn login_page(lang: &str, auth_id: &str, app_name: &str, error: Option<&str>) -> String {
    let error = error
        .map(|e| format!("<p class=\"error\" role=\"alert\">{}</p>\n", escape(e)))
        .unwrap_or_default();
    let body = format!(
        "<h1>Log in to Medicare.gov (sandbox)</h1>\n<p>{app} wants to access your Medicare claims data.</p>\n{error}<form method=\"post\" action=\"/mymedicare/login\">\n<input type=\"hidden\" name=\"auth_id\" value=\"{id}\">\n<label>Username <input type=\"text\" name=\"username\" autocomplete=\"username\"></label>\n<label>Password <input type=\"password\" name=\"password\" autocomplete=\"current-password\"></label>\n<button type=\"submit\" name=\"login\" value=\"Log in\">Log in</button>\n</form>",
        app = escape(app_name),
        id = escape(auth_id),
    );
    page(lang, "Medicare.gov sign in", &body)
}

/// The consent page: share everything or withhold demographics, then allow or deny. It posts to the
/// authorize endpoint under `prefix` (`/v2` or `/v3`), where the flow started.
pub(crate) fn consent_page(
    lang: &str,
    auth_id: &str,
    app_name: &str,
    username: &str,
    scopes: &[String],
    prefix: &str,
) -> String {
    let scope_items: String = scopes
        .iter()
        .map(|s| format!("<li>{}</li>", escape(s)))
        .collect();
    let body = format!(
        "<h1>Approve access for {app}</h1>\n<p>Signed in as {user}.</p>\n<ul>{scope_items}</ul>\n<form method=\"post\" action=\"{prefix}/o/authorize/{id}/\">\n<input type=\"hidden\" name=\"auth_id\" value=\"{id}\">\n<fieldset><legend>Share personal information?</legend>\n<label><input type=\"radio\" name=\"share\" value=\"all\" checked> Share healthcare data and personal information</label>\n<label><input type=\"radio\" name=\"share\" value=\"no-demographics\"> Share healthcare data only</label>\n</fieldset>\n<button type=\"submit\" name=\"allow\" value=\"Allow\">Allow</button>\n<button type=\"submit\" name=\"deny\" value=\"Deny\">Deny</button>\n</form>",
        app = escape(app_name),
        user = escape(username),
        id = escape(auth_id),
    );
    page(lang, "Approve access", &body)
}

/// The page BB2 shows for an unknown or inactive application (`app_inactive_401.html`).
pub(crate) fn app_error_page(detail: &str) -> String {
    page(
        "en",
        "Application error",
        &format!(
            "<h1>We can't connect you to this app</h1>\n<p>{}</p>",
            escape(detail)
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_its_own_pages() {
        let html = consent_page(
            "en",
            "a\"b",
            "App",
            "BBUser29999",
            &["profile".into()],
            "/v2",
        );
        let forms = parse_forms(&html);
        assert_eq!(forms.len(), 1);
        let f = &forms[0];
        assert_eq!(f.method, "post");
        assert_eq!(f.action, "/v2/o/authorize/a\"b/");
        assert_eq!(f.field("auth_id"), Some("a\"b"));
        assert_eq!(f.field("share"), Some("all"));
        assert_eq!(
            f.buttons,
            vec![
                ("allow".into(), "Allow".into()),
                ("deny".into(), "Deny".into())
            ]
        );
        let login = parse_forms(&login_page("es", "id1", "App", Some("bad")));
        assert_eq!(login[0].action, "/mymedicare/login");
        assert_eq!(
            login[0].fields,
            vec![("auth_id".to_string(), "id1".to_string())]
        );
    }
}
