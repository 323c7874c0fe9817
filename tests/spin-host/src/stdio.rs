//! Where components' stdout and stderr go, as in `spin up`: appended to `<log dir>/<component>_stdout.txt`
//! and `_stderr.txt` when there is a log directory (`<state dir>/logs/`), and also shown on the host's
//! stderr unless `--quiet` (Spin writes both streams of a component to its own stderr). An in-process
//! caller can instead capture everything, to keep a passing test run quiet and still see what happened.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use anyhow::Context as _;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};

/// What the host does with component output (and, for [`Output::Capture`], its own diagnostics).
#[derive(Clone, Debug, Default)]
pub enum Output {
    /// Show it on the host's stderr (Spin's default: every component is followed).
    #[default]
    Inherit,
    /// Do not show it (`spin up --quiet`); log files are still written.
    Quiet,
    /// Keep it in memory, with the host's own error lines (for in-process use, e.g. tests).
    Capture(Captured),
}

/// Output kept in memory by [`Output::Capture`].
#[derive(Clone, Debug, Default)]
pub struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    /// Everything captured so far, as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.lock()).into_owned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<u8>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn push(&self, bytes: &[u8]) {
        self.lock().extend_from_slice(bytes);
    }
}

impl Output {
    /// A line from the host itself (a trapped component, a refused outbound call): on stderr, or captured.
    pub fn host_line(&self, line: &str) {
        match self {
            Output::Capture(captured) => captured.push(format!("{line}\n").as_bytes()),
            Output::Inherit | Output::Quiet => eprintln!("{line}"),
        }
    }
}

/// The stdout and stderr sinks of each component, opened once at start-up.
#[derive(Clone)]
pub struct ComponentStdio {
    pub stdout: ComponentWriter,
    pub stderr: ComponentWriter,
}

impl ComponentStdio {
    /// Opens (creating) `<log_dir>/<component>_stdout.txt` and `_stderr.txt` for appending, as Spin names them.
    pub fn open(component: &str, log_dir: Option<&Path>, output: &Output) -> anyhow::Result<Self> {
        let writer = |suffix: &str| -> anyhow::Result<ComponentWriter> {
            let file = match log_dir {
                Some(dir) => {
                    let path: PathBuf = dir.join(format!("{}_{suffix}.txt", sanitize(component)));
                    let file = File::options()
                        .create(true)
                        .append(true)
                        .open(&path)
                        .with_context(|| format!("Failed to open log file {}", path.display()))?;
                    Some(Arc::new(Mutex::new(file)))
                }
                None => None,
            };
            Ok(ComponentWriter {
                file,
                output: output.clone(),
            })
        };
        Ok(ComponentStdio {
            stdout: writer("stdout")?,
            stderr: writer("stderr")?,
        })
    }
}

/// A component id as a file name (Spin sanitises it the same way: no path separators or reserved characters).
fn sanitize(component: &str) -> String {
    component
        .chars()
        .map(|c| match c {
            '/' | '\\' | '?' | '<' | '>' | ':' | '*' | '|' | '"' => '_',
            c if c.is_control() => '_',
            c => c,
        })
        .collect()
}

/// One stream of one component: to its log file (if any) and to the host's stderr or a capture.
#[derive(Clone)]
pub struct ComponentWriter {
    file: Option<Arc<Mutex<File>>>,
    output: Output,
}

impl ComponentWriter {
    fn write_all(&self, buf: &[u8]) -> std::io::Result<()> {
        if let Some(file) = &self.file {
            file.lock()
                .unwrap_or_else(|e| e.into_inner())
                .write_all(buf)?;
        }
        match &self.output {
            Output::Inherit => std::io::stderr().write_all(buf),
            Output::Quiet => Ok(()),
            Output::Capture(captured) => {
                captured.push(buf);
                Ok(())
            }
        }
    }
}

impl IsTerminal for ComponentWriter {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for ComponentWriter {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

/// Writes complete at once (a file append and a stderr write are short), so the stream is always ready.
impl tokio::io::AsyncWrite for ComponentWriter {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Poll::Ready(self.write_all(buf).map(|()| buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
