//! Response bodies on their way back: streamed chunk by chunk, decoded (gzip, deflate, brotli)
//! when they must be masked, masked as JSON (detectors and JSON-path rules) or as text, and
//! recorded (bytes, masked counts, how the body ended) once they end — or once the caller
//! leaves. A body that cannot be decoded or masked is cut, not passed on (fail closed).

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use futures_util::{Stream, StreamExt as _, TryStreamExt as _};
use gatehouse_core::pipeline::RequestResult;
use gatehouse_mask::{JsonMasker, JsonStream, Masker, TextMasker, TextStream};
use hyper::body::Frame;

use crate::BoxError;

/// Masked values, by where they were (a JSON path, or `body`) and detector.
pub type Tally = BTreeMap<String, BTreeMap<String, u64>>;

/// How the body is masked, if it is.
pub enum BodyMasker {
    Json(Box<JsonStream>),
    Text(TextStream),
}

impl BodyMasker {
    /// The masker for a response of `content_type`: JSON types are masked as JSON (values only,
    /// rules by path), everything else as text. `None` when nothing applies.
    pub fn for_type(content_type: &str, masker: Option<&Arc<Masker>>, json: &Option<Arc<JsonMasker>>) -> Option<Self> {
        let essence = content_type.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
        let is_json = essence == "application/json" || essence.ends_with("+json");
        if is_json {
            return json.as_ref().map(|j| BodyMasker::Json(Box::new(j.stream())));
        }
        masker.filter(|m| !m.is_empty()).map(|m| BodyMasker::Text(TextMasker::new(m.clone()).stream()))
    }

    fn push(&mut self, chunk: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
        match self {
            BodyMasker::Json(s) => s.push(chunk, out).map_err(|e| e.to_string()),
            BodyMasker::Text(s) => {
                s.push(chunk, out);
                Ok(())
            }
        }
    }

    fn finish(self, out: &mut Vec<u8>) -> Result<Tally, String> {
        let mut tally = Tally::new();
        match self {
            BodyMasker::Json(s) => {
                let counts = s.finish(out).map_err(|e| e.to_string())?;
                for (path, by_detector) in counts.iter() {
                    let entry: &mut BTreeMap<String, u64> = tally.entry(path.to_string()).or_default();
                    for (detector, n) in by_detector.iter() {
                        *entry.entry(detector.to_string()).or_default() += n;
                    }
                }
            }
            BodyMasker::Text(s) => {
                let counts = s.finish(out);
                if !counts.is_empty() {
                    let entry = tally.entry("body".to_string()).or_default();
                    for (detector, n) in counts.iter() {
                        *entry.entry(detector.to_string()).or_default() += n;
                    }
                }
            }
        }
        Ok(tally)
    }
}

/// The upstream's `Content-Encoding`, if the gateway can decode it to mask the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Identity,
    Gzip,
    Deflate,
    Brotli,
}

impl Encoding {
    /// `None` for an encoding the gateway cannot read (it then cannot mask the body either).
    pub fn parse(header: Option<&str>) -> Option<Encoding> {
        match header.map(|h| h.trim().to_ascii_lowercase()).as_deref() {
            None | Some("") | Some("identity") => Some(Encoding::Identity),
            Some("gzip") | Some("x-gzip") => Some(Encoding::Gzip),
            Some("deflate") => Some(Encoding::Deflate),
            Some("br") => Some(Encoding::Brotli),
            _ => None,
        }
    }
}

type ByteStream = Pin<Box<dyn Stream<Item = std::io::Result<Bytes>> + Send>>;

/// An upstream body as plain bytes, and its length when that is known in advance.
pub struct Decoded {
    stream: ByteStream,
    /// The body's exact length as the upstream connection reads it (its `Content-Length`; 0 for
    /// an answer that has no body, such as one to `HEAD`), when it is not encoded: then what is
    /// read is the body.
    length: Option<u64>,
}

/// The upstream body as plain bytes.
pub fn decoded(upstream: reqwest::Response, encoding: Encoding) -> Decoded {
    use async_compression::tokio::bufread::{BrotliDecoder, GzipDecoder, ZlibDecoder};
    use tokio_util::io::{ReaderStream, StreamReader};
    let length = upstream.content_length().filter(|_| encoding == Encoding::Identity);
    let raw = upstream.bytes_stream().map_err(std::io::Error::other);
    let stream: ByteStream = match encoding {
        Encoding::Identity => Box::pin(raw),
        Encoding::Gzip => Box::pin(ReaderStream::new(GzipDecoder::new(StreamReader::new(raw)))),
        Encoding::Deflate => Box::pin(ReaderStream::new(ZlibDecoder::new(StreamReader::new(raw)))),
        Encoding::Brotli => Box::pin(ReaderStream::new(BrotliDecoder::new(StreamReader::new(raw)))),
    };
    Decoded { stream, length }
}

/// Records how a forwarded request ended.
pub type Finisher = Box<dyn FnOnce(RequestResult) + Send>;

/// The first bytes of a request's and its answer's bodies, for the record; masked by the
/// connection's detectors when they are recorded (whatever the caller may see).
#[derive(Clone)]
pub struct Sampler {
    cap: usize,
    masker: Option<Arc<Masker>>,
    request: Arc<std::sync::Mutex<Vec<u8>>>,
}

impl Sampler {
    pub fn new(cap: usize, masker: Option<Arc<Masker>>) -> Sampler {
        Sampler { cap, masker, request: Arc::default() }
    }

    /// Keeps the start of the request body.
    pub fn request(&self, chunk: &[u8]) {
        let mut kept = self.request.lock().unwrap_or_else(|p| p.into_inner());
        let room = self.cap.saturating_sub(kept.len());
        kept.extend_from_slice(&chunk[..room.min(chunk.len())]);
    }

    fn masked(&self, bytes: &[u8]) -> String {
        let text = String::from_utf8_lossy(bytes);
        match &self.masker {
            Some(m) => m.mask(&text).text().to_string(),
            None => text.into_owned(),
        }
    }

    fn samples(&self, response: &[u8]) -> gatehouse_core::pipeline::Samples {
        let request = self.request.lock().unwrap_or_else(|p| p.into_inner()).clone();
        gatehouse_core::pipeline::Samples { request: self.masked(&request), response: self.masked(response) }
    }
}

/// The body the caller reads: chunks as they come, masked if a masker is set, recorded once.
pub struct Relayed {
    inner: ByteStream,
    masker: Option<BodyMasker>,
    finisher: Option<Finisher>,
    started: Instant,
    status: u16,
    bytes_in: Arc<AtomicU64>,
    /// Bytes read from `inner` (decoded, not yet masked).
    received: u64,
    /// The length of `inner`, when it is known ([`Decoded`]): once that much is in, the body
    /// ends with its last bytes, and is recorded. The caller's connection, which knows the
    /// length too, may stop reading there and drop the body; and a masked body's last chunk and
    /// its end go out together.
    length: Option<u64>,
    bytes_out: u64,
    done: bool,
    sampler: Option<Sampler>,
    /// The start of the answer as the caller got it.
    response_sample: Vec<u8>,
}

impl Relayed {
    pub fn new(
        inner: Decoded,
        masker: Option<BodyMasker>,
        finisher: Finisher,
        started: Instant,
        status: u16,
        bytes_in: Arc<AtomicU64>,
        sampler: Option<Sampler>,
    ) -> Relayed {
        Relayed {
            inner: inner.stream,
            masker,
            finisher: Some(finisher),
            started,
            status,
            bytes_in,
            received: 0,
            length: inner.length,
            bytes_out: 0,
            done: false,
            sampler,
            response_sample: Vec::new(),
        }
    }

    fn keep_sample(&mut self, out: &[u8]) {
        if let Some(s) = &self.sampler {
            let room = s.cap.saturating_sub(self.response_sample.len());
            self.response_sample.extend_from_slice(&out[..room.min(out.len())]);
        }
    }

    fn finish(&mut self, error: Option<String>, masked: Tally) {
        self.done = true;
        if let Some(finish) = self.finisher.take() {
            finish(RequestResult {
                duration_ms: self.started.elapsed().as_secs_f64() * 1000.0,
                rows: None,
                command: Some(self.status.to_string()),
                error,
                bytes_out: self.bytes_out,
                bytes_in: self.bytes_in.load(Ordering::Relaxed),
                columns: Vec::new(),
                masked,
                samples: self.sampler.as_ref().map(|s| s.samples(&self.response_sample)),
            });
        }
    }

    fn fail(&mut self, why: String) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        tracing::warn!(error = %why, "a response body was cut");
        self.finish(Some(why.clone()), Tally::new());
        Poll::Ready(Some(Err(why.into())))
    }
}

impl Relayed {
    /// The body is complete: finishes the masker, if any, writing what it held to `out`, and
    /// returns what was masked.
    fn end_masking(&mut self, out: &mut Vec<u8>) -> Result<Tally, String> {
        // An empty body is no document to check.
        match self.masker.take().filter(|_| self.received > 0).map(|m| m.finish(out)) {
            None => Ok(Tally::new()),
            Some(Ok(tally)) => Ok(tally),
            Some(Err(e)) => Err(format!("the response could not be masked, so it was cut: {e}")),
        }
    }

    /// `out` goes to the caller: counted and sampled.
    fn sent(&mut self, out: &[u8]) {
        self.bytes_out += out.len() as u64;
        self.keep_sample(out);
    }
}

impl hyper::body::Body for Relayed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            match this.inner.poll_next_unpin(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(chunk))) => {
                    this.received += chunk.len() as u64;
                    // The announced length is in: the body ends with this chunk.
                    let last = this.length.is_some_and(|n| this.received >= n);
                    let (out, tally) = match &mut this.masker {
                        None => (chunk, None),
                        Some(masker) => {
                            let mut out = Vec::with_capacity(chunk.len() + 64);
                            if let Err(e) = masker.push(&chunk, &mut out) {
                                return this.fail(format!("the response could not be masked, so it was cut: {e}"));
                            }
                            let tally = match last.then(|| this.end_masking(&mut out)).transpose() {
                                Ok(tally) => tally,
                                Err(why) => return this.fail(why),
                            };
                            (Bytes::from(out), tally)
                        }
                    };
                    if out.is_empty() && !last {
                        continue;
                    }
                    this.sent(&out);
                    if last {
                        this.finish(None, tally.unwrap_or_default());
                        if out.is_empty() {
                            return Poll::Ready(None);
                        }
                    }
                    return Poll::Ready(Some(Ok(Frame::data(out))));
                }
                Poll::Ready(Some(Err(e))) => return this.fail(format!("the upstream body failed: {e}")),
                Poll::Ready(None) => {
                    let mut rest = Vec::new();
                    let tally = match this.end_masking(&mut rest) {
                        Ok(tally) => tally,
                        Err(why) => return this.fail(why),
                    };
                    this.sent(&rest);
                    this.finish(None, tally);
                    if rest.is_empty() {
                        return Poll::Ready(None);
                    }
                    return Poll::Ready(Some(Ok(Frame::data(Bytes::from(rest)))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}

impl Drop for Relayed {
    fn drop(&mut self) {
        if self.finisher.is_some() {
            self.finish(Some("the caller left before the response was complete".into()), Tally::new());
        }
    }
}
