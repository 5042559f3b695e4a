//! Server-Sent Events: an incremental parser fed with network chunks, and vLLM's framing.
//!
//! One network chunk may hold several events or part of one; the parser keeps the partial
//! line and dispatches each event when its blank line arrives, so a caller can stamp every
//! event with the arrival time of the chunk that completed it.

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SseEvent {
    /// `event:` field, if any.
    pub event: Option<String>,
    /// The `data:` lines joined with `\n`.
    pub data: String,
}

impl SseEvent {
    /// Whether this is the OpenAI end-of-stream marker `data: [DONE]`.
    pub fn is_done(&self) -> bool {
        self.data == "[DONE]"
    }
}

/// One dispatched event, borrowed from the parser ([`SseParser::feed_ref`]): valid until
/// the callback returns, so that reading it costs no allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SseEventRef<'a> {
    /// `event:` field, if any.
    pub event: Option<&'a str>,
    /// The `data:` lines joined with `\n`.
    pub data: &'a str,
}

impl SseEventRef<'_> {
    /// Whether this is the OpenAI end-of-stream marker `data: [DONE]`.
    pub fn is_done(&self) -> bool {
        self.data == "[DONE]"
    }

    /// The event, owned.
    pub fn to_owned(&self) -> SseEvent {
        SseEvent {
            event: self.event.map(str::to_owned),
            data: self.data.to_owned(),
        }
    }
}

/// Why a stream cannot be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SseError {
    /// A line grew past the limit without ending.
    #[error("SSE line longer than {limit} bytes")]
    LineTooLong {
        /// The limit.
        limit: usize,
    },
    /// Field data is not UTF-8.
    #[error("SSE data is not UTF-8")]
    NotUtf8,
}

/// An incremental SSE parser (WHATWG event-stream rules: `\n`, `\r\n` or `\r` line ends,
/// `:` comments, one optional space after the colon, multi-line data).
#[derive(Debug)]
pub struct SseParser {
    line: Vec<u8>,
    data: Vec<u8>,
    has_data: bool,
    event: Option<String>,
    skip_lf: bool,
    max_line: usize,
}

impl Default for SseParser {
    fn default() -> Self {
        Self::new()
    }
}

impl SseParser {
    /// A parser with a 16 MiB line limit.
    pub fn new() -> Self {
        Self::with_max_line(16 << 20)
    }

    /// A parser with a given line limit.
    pub fn with_max_line(max_line: usize) -> Self {
        SseParser {
            line: Vec::new(),
            data: Vec::new(),
            has_data: false,
            event: None,
            skip_lf: false,
            max_line,
        }
    }

    /// Feeds one chunk; calls `on_event` for every event it completes.
    pub fn feed(
        &mut self,
        chunk: &[u8],
        mut on_event: impl FnMut(SseEvent),
    ) -> Result<(), SseError> {
        self.feed_ref(chunk, |e| on_event(e.to_owned()))
    }

    /// [`SseParser::feed`] with each event borrowed from the parser: no allocation per
    /// event (the replayer reads every event of every stream).
    pub fn feed_ref(
        &mut self,
        mut chunk: &[u8],
        mut on_event: impl FnMut(SseEventRef<'_>),
    ) -> Result<(), SseError> {
        if self.skip_lf {
            if let Some(rest) = chunk.strip_prefix(b"\n") {
                chunk = rest;
            }
            self.skip_lf = false;
        }
        while !chunk.is_empty() {
            match memchr::memchr2(b'\n', b'\r', chunk) {
                Some(i) => {
                    let end = chunk[i];
                    // The common shape, a whole `data:` line and its blank line in this
                    // chunk with nothing pending: the event is dispatched from the chunk
                    // itself, not copied into `data` first.
                    if end == b'\n'
                        && chunk.get(i + 1) == Some(&b'\n')
                        && self.line.is_empty()
                        && !self.has_data
                        && self.event.is_none()
                        && let Some(value) = chunk[..i].strip_prefix(b"data:")
                    {
                        let value = value.strip_prefix(b" ").unwrap_or(value);
                        let data = std::str::from_utf8(value).map_err(|_| SseError::NotUtf8)?;
                        on_event(SseEventRef { event: None, data });
                        chunk = &chunk[i + 2..];
                        continue;
                    }
                    if self.line.is_empty() {
                        self.process_line(&chunk[..i], &mut on_event)?;
                    } else {
                        self.push_line(&chunk[..i])?;
                        let line = std::mem::take(&mut self.line);
                        self.process_line(&line, &mut on_event)?;
                        self.line = line;
                        self.line.clear();
                    }
                    chunk = &chunk[i + 1..];
                    if end == b'\r' {
                        match chunk.first() {
                            Some(b'\n') => chunk = &chunk[1..],
                            Some(_) => {}
                            None => self.skip_lf = true,
                        }
                    }
                }
                None => {
                    self.push_line(chunk)?;
                    break;
                }
            }
        }
        Ok(())
    }

    /// Feeds one chunk and returns the events it completed.
    pub fn feed_collect(&mut self, chunk: &[u8]) -> Result<Vec<SseEvent>, SseError> {
        let mut out = Vec::new();
        self.feed(chunk, |e| out.push(e))?;
        Ok(out)
    }

    /// Whether a partial event is pending (the stream ended mid-event if it ends now).
    pub fn has_partial(&self) -> bool {
        !self.line.is_empty() || self.has_data
    }

    fn push_line(&mut self, bytes: &[u8]) -> Result<(), SseError> {
        if self.line.len() + bytes.len() > self.max_line {
            return Err(SseError::LineTooLong {
                limit: self.max_line,
            });
        }
        self.line.extend_from_slice(bytes);
        Ok(())
    }

    fn process_line(
        &mut self,
        line: &[u8],
        on_event: &mut impl FnMut(SseEventRef<'_>),
    ) -> Result<(), SseError> {
        if line.is_empty() {
            if self.has_data {
                let dispatched = std::str::from_utf8(&self.data).map(|data| {
                    on_event(SseEventRef {
                        event: self.event.as_deref(),
                        data,
                    })
                });
                // The buffer is kept for the next event.
                self.data.clear();
                if dispatched.is_err() {
                    self.has_data = false;
                    self.event = None;
                    return Err(SseError::NotUtf8);
                }
            }
            self.has_data = false;
            self.event = None;
            return Ok(());
        }
        if line[0] == b':' {
            return Ok(());
        }
        let (field, value) = match memchr::memchr(b':', line) {
            Some(i) => {
                let v = &line[i + 1..];
                (&line[..i], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &b""[..]),
        };
        match field {
            b"data" => {
                if self.has_data {
                    self.data.push(b'\n');
                }
                self.data.extend_from_slice(value);
                self.has_data = true;
            }
            b"event" => {
                self.event =
                    Some(String::from_utf8(value.to_vec()).map_err(|_| SseError::NotUtf8)?);
            }
            _ => {} // id, retry and unknown fields do not matter here
        }
        Ok(())
    }
}

/// Frames one `data:` event (the payload must not contain newlines, as JSON does not).
pub fn frame(data: &str) -> String {
    format!("data: {data}\n\n")
}

/// The OpenAI end-of-stream event.
pub const DONE: &str = "data: [DONE]\n\n";

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn data(events: Vec<SseEvent>) -> Vec<String> {
        events.into_iter().map(|e| e.data).collect()
    }

    #[test]
    fn parses_vllm_framing() {
        let mut p = SseParser::new();
        let events = p
            .feed_collect(b"data: {\"a\":1}\n\ndata: [DONE]\n\n")
            .unwrap();
        assert_eq!(data(events.clone()), ["{\"a\":1}", "[DONE]"]);
        assert!(events[1].is_done());
        assert!(!p.has_partial());
    }

    #[test]
    fn handles_splits_crlf_comments_and_multiline() {
        let mut p = SseParser::new();
        assert!(p.feed_collect(b"da").unwrap().is_empty());
        assert!(p.feed_collect(b"ta: x\r").unwrap().is_empty());
        assert!(p.feed_collect(b"\ndata:y\r").unwrap().is_empty());
        assert!(p.has_partial());
        let e = p
            .feed_collect(b"\n\r\n: ping\n\nevent: e\ndata\n\n")
            .unwrap();
        assert_eq!(e[0].data, "x\ny");
        assert_eq!(
            e[1],
            SseEvent {
                event: Some("e".into()),
                data: String::new()
            }
        );
    }

    #[test]
    fn long_lines_are_an_error_not_unbounded_memory() {
        let mut p = SseParser::with_max_line(8);
        assert_eq!(
            p.feed_collect(b"data: 0123456789"),
            Err(SseError::LineTooLong { limit: 8 })
        );
    }

    proptest! {
        #[test]
        fn any_split_gives_the_same_events(payloads in proptest::collection::vec("[a-z{}\":, ]{0,20}", 1..8), cuts in proptest::collection::vec(0usize..200, 0..6), crlf in any::<bool>()) {
            let nl = if crlf { "\r\n" } else { "\n" };
            let text: String = payloads.iter().map(|p| format!("data: {p}{nl}{nl}")).collect();
            let bytes = text.as_bytes();
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (bytes.len() + 1)).collect();
            cuts.sort_unstable();
            let mut p = SseParser::new();
            let mut got = Vec::new();
            let mut start = 0;
            for c in cuts.into_iter().chain([bytes.len()]) {
                got.extend(p.feed_collect(&bytes[start..c]).unwrap());
                start = c;
            }
            prop_assert_eq!(data(got), payloads);
        }

        /// A whole chunk (which takes the copy-free path for `data:` lines) and the same
        /// bytes one at a time (which never can) give the same events and errors, on text
        /// made of the pieces that matter: fields, colons, spaces, every line end, bytes
        /// that are not UTF-8.
        #[test]
        fn whole_chunks_and_single_bytes_agree(pieces in proptest::collection::vec(
            prop_oneof![
                Just(&b"data:"[..]), Just(&b"data: "[..]), Just(&b"event: e"[..]),
                Just(&b": c"[..]), Just(&b"\n"[..]), Just(&b"\n\n"[..]), Just(&b"\r"[..]),
                Just(&b"\r\n"[..]), Just(&b"x"[..]), Just(&b" "[..]), Just(&b"\xff"[..]),
                Just(&b"data"[..]), Just(&b"id: 1"[..]),
            ], 0..40)) {
            let bytes: Vec<u8> = pieces.concat();
            let run = |chunks: &mut dyn Iterator<Item = &[u8]>| {
                let mut p = SseParser::new();
                let mut out = Vec::new();
                for c in chunks {
                    if let Err(e) = p.feed(c, |e| out.push(Ok((e.event, e.data)))) {
                        out.push(Err(e));
                    }
                }
                out
            };
            let whole = run(&mut std::iter::once(&bytes[..]));
            let single = run(&mut bytes.chunks(1));
            // Errors end a chunk: compare up to the first one.
            let upto = |v: &Vec<Result<(Option<String>, String), SseError>>| {
                let n = v.iter().position(Result::is_err).map_or(v.len(), |i| i + 1);
                v[..n].to_vec()
            };
            prop_assert_eq!(upto(&whole), upto(&single));
        }

        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut p = SseParser::new();
            let _ = p.feed_collect(&bytes);
        }
    }
}
