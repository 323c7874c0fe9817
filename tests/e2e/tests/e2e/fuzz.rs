//! Property-based fuzzing of the whole API with schemathesis (PyPI), from the app's own `/openapi.json`,
//! served by the app with a real session and admin key: no 5xx, every answer as documented (status,
//! content type, schema, headers), every error a problem document, every request the schema allows
//! accepted and every one it forbids refused.
//!
//! Needs `schemathesis`: `SCHEMATHESIS` naming it, or on PATH, or in the virtual environment `.ci/run`
//! makes (`target/venv`).

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use e2e::beneficiary::sign_in;
use e2e::{workspace_root, Stack, TempDir, ADMIN_KEY};

/// One schemathesis run may take this long (its budget is fixed below; this only bounds a hang).
const RUN_TIMEOUT: Duration = Duration::from_secs(15 * 60);

fn schemathesis_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("SCHEMATHESIS").filter(|p| !p.is_empty()) {
        return PathBuf::from(path);
    }
    let on_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("schemathesis"))
            .find(|p| p.is_file())
    });
    on_path.unwrap_or_else(|| workspace_root().join("target/venv/bin/schemathesis"))
}

fn schemathesis(base: &str, auth: Option<&str>, selection: &[&str]) -> (bool, String) {
    // Its working folder (it keeps a `.schemathesis/` cache there) and its output, removed afterwards.
    let dir = TempDir::new("schemathesis");
    let log = dir.path().join("output.txt");
    let mut cmd = Command::new(schemathesis_binary());
    cmd.current_dir(dir.path());
    cmd.args(["run", &format!("{base}/openapi.json")])
        // Every check, `positive_data_acceptance` included: the document states exactly what the API
        // accepts.
        .args(["--checks", "all"])
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
    let file = std::fs::File::create(&log).unwrap();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .spawn()
        .expect("schemathesis is installed (see the top of this file)");
    let deadline = Instant::now() + RUN_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let mut text = std::fs::read_to_string(&log).unwrap_or_default();
    if status.is_none() {
        text.push_str(&format!("\n(killed after {RUN_TIMEOUT:?})"));
    }
    (status.is_some_and(|s| s.success()), text)
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
            vec![
                "--include-tag",
                "fhir",
                "--include-tag",
                "audit",
                "--exclude-method",
                "DELETE",
            ],
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
