//! Property-based fuzzing of the whole API with schemathesis (PyPI), from the app's own `/openapi.json`,
//! served by `spin-host` with a real session and admin key: no 5xx, every answer as documented (status,
//! content type, schema, headers), every error a problem document.
//!
//! Needs `schemathesis` on PATH (`pip install schemathesis`; `.ci/run` installs it).

use std::process::Command;

use e2e::beneficiary::sign_in;
use e2e::{Stack, ADMIN_KEY};

fn schemathesis(base: &str, auth: Option<&str>, selection: &[&str]) -> (bool, String) {
    let mut cmd = Command::new("schemathesis");
    cmd.args(["run", &format!("{base}/openapi.json")])
        .args(["--checks", "all"])
        // A random `state`, `code` or filter is well-formed yet unknown: rejecting it is right.
        .args(["--exclude-checks", "positive_data_acceptance"])
        // A fixed budget keeps CI bounded; the seed makes a failure reproducible.
        .args(["--max-examples", "25", "--seed", "4242", "--workers", "2"])
        .args(["--phases", "examples,coverage,fuzzing"])
        .args(["--max-response-time", "20"])
        .args(selection)
        .env("NO_COLOR", "1")
        .env("SCHEMATHESIS_HOOKS", "");
    if let Some(header) = auth {
        cmd.args(["-H", header]);
    }
    let out = cmd
        .output()
        .expect("schemathesis is installed (pip install schemathesis)");
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_holds_to_its_openapi_document_under_fuzzing() {
    let stack = Stack::start(|_| {}, &[]).await.unwrap();
    let base = stack.base_url();
    let session = sign_in(&base, "BBUser29999").await.unwrap()["session"]
        .as_str()
        .unwrap()
        .to_string();
    let runs: [(&str, Option<String>, Vec<&str>); 3] = [
        (
            "session routes",
            Some(format!("Authorization: Bearer {session}")),
            vec!["--include-tag", "fhir", "--exclude-method", "DELETE"],
        ),
        (
            "admin routes",
            Some(format!("Authorization: Bearer {ADMIN_KEY}")),
            vec!["--include-tag", "connect"],
        ),
        (
            "public routes",
            None,
            vec![
                "--include-tag",
                "operations",
                "--include-tag",
                "authorization",
            ],
        ),
    ];
    let mut failures = Vec::new();
    for (name, auth, selection) in runs {
        let (ok, output) = tokio::task::spawn_blocking({
            let base = base.clone();
            move || schemathesis(&base, auth.as_deref(), &selection)
        })
        .await
        .unwrap();
        eprintln!("== schemathesis: {name}\n{output}");
        if !ok {
            failures.push(name);
        }
    }
    assert!(failures.is_empty(), "schemathesis failed for: {failures:?}");
}
