//! The README's offline demo (`scripts/demo`) really works: it starts, a beneficiary signs in through
//! it, and their data arrives in the connect emulator.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use e2e::beneficiary::{self, sign_in};
use e2e::{free_port, workspace_root};

/// The script, stopped (its trap stops the three servers and removes its temp folder) when dropped; what
/// it printed on stderr is shown if the test failed.
struct Demo {
    child: std::process::Child,
    stderr: e2e::TempDir,
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let text = std::fs::read_to_string(self.stderr.path().join("stderr.txt"));
            eprintln!(
                "---- scripts/demo stderr ----\n{}",
                text.unwrap_or_default()
            );
        }
    }
}

#[tokio::test]
async fn the_offline_demo_starts_and_serves_a_sign_in() {
    let (app, cms, connect) = (free_port(), free_port(), free_port());
    // The binaries this test run built, so the script builds nothing of its own.
    e2e::build_wasm();
    e2e::build_bins(&["spin-host", "cms-sandbox", "connect-sandbox"]);
    let bin_dir = e2e::bin_dir();
    let stderr = e2e::TempDir::new("demo");
    let mut cmd = Command::new(workspace_root().join("scripts/demo"));
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("SPIN_VARIABLE_") {
            cmd.env_remove(name);
        }
    }
    let mut child = cmd
        .env("DEMO_BIN_DIR", bin_dir)
        .env("DEMO_APP_PORT", app.to_string())
        .env("DEMO_CMS_PORT", cms.to_string())
        .env("DEMO_CONNECT_PORT", connect.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(stderr.path().join("stderr.txt")).unwrap())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let demo = Demo { child, stderr };
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("the demo did not get ready");
        if line == "demo ready" {
            break;
        }
    }
    let logs = loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("the demo's Logs line");
        if let Some(rest) = line.trim().strip_prefix("Logs:") {
            break std::path::PathBuf::from(rest.split_whitespace().next().unwrap());
        }
    };
    assert!(logs.is_dir(), "{}", logs.display());
    let base = format!("http://127.0.0.1:{app}");
    let session = sign_in(&base, "BBUser29999").await.unwrap()["session"]
        .as_str()
        .unwrap()
        .to_string();
    let resp = beneficiary::client()
        .get(format!(
            "{base}/bluebutton/fhir/ExplanationOfBenefit?return_cms=false"
        ))
        .bearer_auth(&session)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let result: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(result["delivered"], 120);
    drop(demo);
    assert!(!logs.exists(), "the demo left {} behind", logs.display());
}
