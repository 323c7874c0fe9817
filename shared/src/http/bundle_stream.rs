//! The merged searchset Bundle a fetch answers with: held in memory while small (so a failing page still
//! becomes a 502 problem naming it), streamed page by page once it outgrows the budget (so memory stays
//! bounded). A stream that fails later is aborted, never finished as if whole.

use crate::cms::pipeline::{FetchSummary, PageSink};
use crate::connect::DeliveryResult;
use crate::error::Error;
use crate::fhir::Resource;
use crate::http::write_full;
use crate::ports::{ResponseWriter, WriteError};

pub struct BundleOut<W: ResponseWriter> {
    writer: Option<W>,
    /// A `searchset` states its `total`; a `collection` (the insurance card) has none.
    searchset: bool,
    buffer: Vec<u8>,
    budget: usize,
    planned: Option<usize>,
    entries: usize,
    started: bool,
}

const CONTENT_TYPE: (&str, &str) = ("content-type", "application/fhir+json");
const NO_STORE: (&str, &str) = ("cache-control", "no-store");

fn gone(err: WriteError) -> Error {
    Error::BadGateway(format!("the answer could not be sent: {err}"))
}

impl<W: ResponseWriter> BundleOut<W> {
    pub fn new(writer: W, budget: usize, self_url: &str, searchset: bool) -> Self {
        let mut buffer = match searchset {
            true => br#"{"resourceType":"Bundle","type":"searchset","#.to_vec(),
            false => br#"{"resourceType":"Bundle","type":"collection","#.to_vec(),
        };
        buffer.extend_from_slice(br#""link":[{"relation":"self","url":"#);
        serde_json::to_writer(&mut buffer, self_url).expect("a string serializes");
        buffer.extend_from_slice(br#"}],"entry":["#);
        BundleOut {
            writer: Some(writer),
            searchset,
            buffer,
            budget,
            planned: None,
            entries: 0,
            started: false,
        }
    }

    fn writer(&mut self) -> &mut W {
        self.writer
            .as_mut()
            .expect("the writer stays until the end")
    }

    /// Starts streaming (once) and sends what is buffered.
    fn flush(&mut self) -> Result<(), Error> {
        if !self.started {
            self.started = true;
            let mut headers = vec![
                pair(CONTENT_TYPE),
                pair(NO_STORE),
                ("x-streamed".into(), "true".into()),
            ];
            if let Some(planned) = self.planned {
                // Exact when the stream completes: a missing page aborts it.
                headers.push(("x-pages-fetched".into(), planned.to_string()));
            }
            self.writer().start(200, &headers).map_err(gone)?;
        }
        let buffer = std::mem::take(&mut self.buffer);
        self.writer().write(&buffer).map_err(gone)
    }

    /// Answers the problem instead, or breaks the stream if it already started.
    pub fn fail(mut self, err: Error) {
        let writer = self.writer.take().expect("the writer stays until the end");
        if self.started {
            eprintln!("fhir-fetch: aborting a streamed response: {err}");
            writer.finish(false);
        } else {
            write_full(writer, err.into_response());
        }
    }

    pub fn finish(mut self, summary: &FetchSummary, delivery: Option<&DeliveryResult>) {
        self.buffer.push(b']');
        if self.searchset {
            self.buffer.extend_from_slice(br#","total":"#);
            self.buffer
                .extend_from_slice(self.entries.to_string().as_bytes());
        }
        self.buffer.push(b'}');
        if self.started {
            let ok = self.flush().is_ok();
            if let Some(writer) = self.writer.take() {
                writer.finish(ok);
            }
            return;
        }
        let mut headers = vec![
            pair(CONTENT_TYPE),
            pair(NO_STORE),
            ("x-pages-fetched".into(), summary.pages.to_string()),
            ("x-upstream-retries".into(), summary.retries.to_string()),
            (
                "x-duplicates-dropped".into(),
                summary.duplicates_dropped.to_string(),
            ),
        ];
        if let Some(d) = delivery {
            headers.push(("x-connect-delivered".into(), d.delivered.to_string()));
            headers.push(("x-connect-queued".into(), d.queued.len().to_string()));
            headers.push(("x-connect-rejected".into(), d.rejected.to_string()));
        }
        let mut writer = self.writer.take().expect("the writer stays until the end");
        let sent = writer
            .start(200, &headers)
            .and_then(|()| writer.write(&self.buffer));
        writer.finish(sent.is_ok());
    }
}

fn pair((name, value): (&str, &str)) -> (String, String) {
    (name.to_string(), value.to_string())
}

impl<W: ResponseWriter> PageSink for BundleOut<W> {
    fn planned(&mut self, pages: Option<usize>) {
        self.planned = pages;
    }

    async fn page(&mut self, entries: &[Resource]) -> Result<(), Error> {
        for resource in entries {
            if self.entries > 0 {
                self.buffer.push(b',');
            }
            self.buffer.extend_from_slice(br#"{"resource":"#);
            self.buffer
                .extend_from_slice(resource.json.get().as_bytes());
            self.buffer.push(b'}');
            self.entries += 1;
        }
        if self.started || self.buffer.len() > self.budget {
            self.flush()?;
        }
        Ok(())
    }
}
