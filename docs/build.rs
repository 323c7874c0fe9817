//! Bundles what the component serves, gzip-compressed: the OpenAPI document (generated here, natively, so
//! the `.wasm` carries no generator) and Swagger UI — only the files the page loads (no ES-module
//! builds, no standalone preset), minus source-map comments: about 0.45 MB instead of the 4.3 MB of
//! Swagger UI's `dist/`.

use std::io::Read;
use std::path::{Path, PathBuf};

use shared::config::ApiVersion;

/// The files served under /docs/, with their content types; `None` = taken from Swagger UI's `dist/`.
const FILES: [(&str, &str, Option<&str>); 5] = [
    ("index.html", "text/html; charset=utf-8", Some(INDEX_HTML)),
    (
        "swagger-initializer.js",
        "text/javascript; charset=utf-8",
        Some(INITIALIZER),
    ),
    (
        "swagger-ui-bundle.js",
        "text/javascript; charset=utf-8",
        None,
    ),
    ("swagger-ui.css", "text/css; charset=utf-8", None),
    ("favicon-32x32.png", "image/png", None),
];

const INDEX_HTML: &str = r#"<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>bluebutton-spin API</title>
  <link rel="stylesheet" href="./swagger-ui.css">
  <link rel="icon" type="image/png" href="./favicon-32x32.png">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="./swagger-ui-bundle.js"></script>
  <script src="./swagger-initializer.js"></script>
</body>
</html>
"#;

const INITIALIZER: &str = r##"window.onload = () => {
  window.ui = SwaggerUIBundle({
    url: "/openapi.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
  });
};
"##;

/// Zopfli's gzip: about 5% smaller than zlib's best, which keeps the component under 1 MB.
fn gzip(content: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let options = zopfli::Options {
        iteration_count: std::num::NonZeroU64::new(5).expect("not zero"),
        ..zopfli::Options::default()
    };
    zopfli::compress(options, zopfli::Format::Gzip, content, &mut out).expect("in-memory gzip");
    out
}

/// Writes `content` gzipped into OUT_DIR and returns the `Asset` that includes it.
fn asset(out: &Path, name: &str, content_type: &str, content: &[u8]) -> String {
    let path = out.join(format!("{name}.gz"));
    std::fs::write(&path, gzip(content)).expect("OUT_DIR is writable");
    format!(
        "shared::http::routes::docs::Asset {{ name: {name:?}, content_type: {content_type:?}, \
         gzip: include_bytes!({:?}) }}",
        path.display().to_string()
    )
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(
        utoipa_swagger_ui_vendored::SWAGGER_UI_VENDORED,
    ))
    .expect("the vendored Swagger UI is a zip");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let mut table = String::from("shared::http::routes::docs::Assets {\n    files: &[\n");
    for (name, content_type, own) in FILES {
        let content = match own {
            Some(text) => text.as_bytes().to_vec(),
            None => dist_file(&mut archive, name),
        };
        table.push_str(&format!(
            "        {},\n",
            asset(&out, name, content_type, &content)
        ));
    }
    table.push_str("    ],\n    openapi: [\n");
    for version in [ApiVersion::V2, ApiVersion::V3] {
        let openapi = shared::openapi::json(version);
        let name = format!("openapi-{version}.json");
        let entry = asset(&out, &name, "application/json", openapi.as_bytes());
        table.push_str(&format!("        {entry},\n"));
    }
    table.push_str("    ],\n}\n");
    std::fs::write(out.join("assets.rs"), table).expect("OUT_DIR is writable");
}

fn dist_file(archive: &mut zip::ZipArchive<std::io::Cursor<&[u8]>>, name: &str) -> Vec<u8> {
    let suffix = format!("/dist/{name}");
    let path = archive
        .file_names()
        .filter_map(Result::ok)
        .find(|n| n.ends_with(&suffix))
        .unwrap_or_else(|| panic!("Swagger UI's dist/ has no {name}"))
        .to_string();
    let mut content = Vec::new();
    archive
        .by_name(&path)
        .expect("listed above")
        .read_to_end(&mut content)
        .expect("a readable entry");
    if name.ends_with(".js") || name.ends_with(".css") {
        // The maps are not bundled: drop the comments that would send DevTools looking for them.
        let text = String::from_utf8(content).expect("Swagger UI's sources are UTF-8");
        let kept: Vec<&str> = text
            .lines()
            .filter(|line| {
                !line.trim_start().starts_with("//# sourceMappingURL=")
                    && !line.trim_start().starts_with("/*# sourceMappingURL=")
            })
            .collect();
        content = kept.join("\n").into_bytes();
    }
    content
}
