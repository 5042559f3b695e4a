//! Turning what the proxy saw into a trace/1 row, on worker threads: the response's events
//! measured from the reads the tap kept ([`EventMeter`]), a plain response's usage, request
//! JSON parsing, tokenizing, salted prefix hashes and session ids. The forwarding path only
//! keeps bytes and arrival times; it measures a stream itself ([`EventMeter`] in the tap)
//! only once the stream outgrows what is kept for the workers.

use std::time::Duration;

use reprise_protocol::openai::{
    Api, ChunkReader, GenerationRequest, Usage, answer_text, content_of,
};
use reprise_protocol::sse::SseParser;
use reprise_tokenizer::{Cl100k, Tokenizer, block_hashes};
use reprise_trace::{Timestamp, TraceRecord};
use serde_json::Value;

use crate::salt::Salt;

/// What the proxy measured for one exchange, before any parsing.
#[derive(Debug, Clone, Default)]
pub struct Exchange {
    /// Unique id (`<run>-<counter>`).
    pub request_id: String,
    /// Wall clock at arrival.
    pub arrival: Timestamp,
    /// Request path (no query).
    pub path: String,
    /// The request body, when it was small enough to keep.
    pub body: Option<bytes::Bytes>,
    /// Value of the session header, if configured and present (hashed before writing).
    pub session_header: Option<String>,
    /// HTTP status returned to the client (0 when none).
    pub status: u16,
    /// Arrival → first content event.
    pub ttft: Option<Duration>,
    /// Arrival → end of the response.
    pub e2e: Option<Duration>,
    /// Gaps between content events.
    pub itl_us: Vec<u32>,
    /// The upstream's usage, when it said.
    pub usage: Option<Usage>,
    /// Content events (streams) seen.
    pub content_events: u32,
    /// The response was an event stream.
    pub streamed: bool,
    /// Completion text (only collected with `--record-content`).
    pub completion: Option<String>,
    /// Error class, when the exchange failed.
    pub failure: Option<String>,
    /// The response body as it came, for the workers to read: a plain body (up to the
    /// observation limit), or the network reads of a stream the tap has not measured itself.
    pub response: Vec<u8>,
    /// For a stream: where each read kept in `response` ends, and when it arrived (since the
    /// exchange's arrival). All the events of one read share its arrival time.
    pub reads: Vec<(Duration, usize)>,
}

/// Measures the events of a streamed response read by read: TTFT (arrival → the first
/// read holding a content event), the gaps between content events, their count, the
/// upstream's usage and, when asked, the completion text.
#[derive(Debug, Default)]
pub struct EventMeter {
    parser: SseParser,
    chunks: ChunkReader,
    last_content: Option<Duration>,
    content: bool,
    completion: String,
}

impl EventMeter {
    /// A meter; `content` collects the completion text.
    pub fn new(content: bool) -> EventMeter {
        EventMeter {
            content,
            ..EventMeter::default()
        }
    }

    /// One network read of the stream, arrived `at` after the exchange did.
    pub fn feed(&mut self, x: &mut Exchange, at: Duration, read: &[u8]) {
        let (last_content, completion, content, chunks) = (
            &mut self.last_content,
            &mut self.completion,
            self.content,
            &mut self.chunks,
        );
        // Borrowed events: no allocation or copy per event. A framing error ends nothing:
        // the events before it are counted.
        let _ = self.parser.feed_ref(read, |event| {
            if event.is_done() {
                return;
            }
            let Ok(f) = chunks.facts(event.data) else {
                return;
            };
            if f.has_content {
                match *last_content {
                    None => x.ttft = Some(at),
                    Some(prev) => x
                        .itl_us
                        .push((at - prev).as_micros().min(u128::from(u32::MAX)) as u32),
                }
                *last_content = Some(at);
                x.content_events += 1;
                if content && let Ok(v) = serde_json::from_str::<Value>(event.data) {
                    completion.push_str(&content_of(&v));
                }
            }
            if f.usage.is_some() {
                x.usage = f.usage;
            }
        });
    }

    /// The reads `x` kept, measured (and let go).
    pub fn feed_kept(&mut self, x: &mut Exchange) {
        let (response, reads) = (
            std::mem::take(&mut x.response),
            std::mem::take(&mut x.reads),
        );
        let mut from = 0;
        for (at, end) in reads {
            let end = end.clamp(from, response.len());
            self.feed(x, at, &response[from..end]);
            from = end;
        }
    }

    /// The completion text collected (empty without `content`).
    pub fn take_completion(&mut self) -> String {
        std::mem::take(&mut self.completion)
    }
}

/// What the response body says, read by a worker: a stream's kept reads measured, or a
/// plain JSON body's usage (and TTFT, the whole answer, for a `200`) and completion text.
fn measure_response(x: &mut Exchange, record_content: bool) {
    if x.streamed {
        if x.reads.is_empty() {
            return;
        }
        let mut meter = EventMeter::new(record_content);
        meter.feed_kept(x);
        if record_content {
            x.completion
                .get_or_insert_with(String::new)
                .push_str(&meter.take_completion());
        }
        return;
    }
    let body = std::mem::take(&mut x.response);
    if body.is_empty() {
        return;
    }
    if let Ok(v) = serde_json::from_slice::<Value>(&body) {
        x.usage = Usage::from_value(&v);
        x.ttft = x.e2e.filter(|_| x.status == 200);
        if record_content {
            x.completion
                .get_or_insert_with(String::new)
                .push_str(answer_text(&v));
        }
    }
}

/// Settings of the observation.
#[derive(Debug, Clone)]
pub struct ObserveOptions {
    /// Tokens per prefix-hash block.
    pub block_tokens: usize,
    /// Keep prompt and completion text.
    pub record_content: bool,
    /// Salt for hashes.
    pub salt: Salt,
}

fn us(d: Option<Duration>) -> Option<u64> {
    d.map(|d| d.as_micros() as u64)
}

/// The trace/1 row of an exchange. With `quick`, the prompt is not tokenized (the workers are
/// behind): input tokens come from `usage` only and there are no prefix hashes.
pub fn to_record(mut x: Exchange, opts: &ObserveOptions, quick: bool) -> TraceRecord {
    measure_response(&mut x, opts.record_content);
    let mut r = TraceRecord::new(x.request_id, x.arrival);
    r.endpoint = x.path.clone();
    r.status = Some(x.status);
    r.ttft_us = us(x.ttft);
    r.e2e_us = us(x.e2e);
    r.itl_us = (!x.itl_us.is_empty()).then_some(x.itl_us);
    r.failure = x.failure;
    r.stream = x.streamed;
    let api = Api::from_path(&x.path);
    let parsed = match (api, &x.body) {
        (Some(api), Some(body)) => GenerationRequest::parse(api, body).ok(),
        _ => None,
    };
    let mut session = x.session_header;
    if let Some(req) = &parsed {
        r.model = req.model.clone();
        r.stream = req.stream;
        r.max_tokens = req.max_tokens;
        let mut params = req.extra.clone();
        if let Some(user) = params.remove("user") {
            session.get_or_insert_with(|| {
                user.as_str()
                    .map_or_else(|| user.to_string(), str::to_owned)
            });
        }
        for (k, v) in [
            ("max_tokens", req.max_tokens.map(Value::from)),
            ("min_tokens", req.min_tokens.map(Value::from)),
            ("stream", Some(Value::from(req.stream))),
            ("ignore_eos", req.ignore_eos.then_some(Value::from(true))),
            ("n", (req.n != 1).then(|| Value::from(req.n))),
        ] {
            if let Some(v) = v {
                params.insert(k.to_owned(), v);
            }
        }
        r.params = Some(Value::Object(params).to_string());
        if !quick {
            let tokens = Cl100k.encode(&req.prompt);
            let hashes = block_hashes(&tokens, opts.block_tokens, opts.salt.key());
            r.prefix_hashes = Some(hashes);
            r.input_tokens = Some(tokens.len() as u32);
            r.input_tokens_source = "tokenizer:cl100k".into();
        }
        if opts.record_content {
            r.prompt = Some(req.prompt.clone());
        }
    }
    if let Some(u) = x.usage {
        r.input_tokens = Some(u.prompt_tokens);
        r.input_tokens_source = "usage".into();
        r.output_tokens = Some(u.completion_tokens);
    } else if x.streamed && x.status == 200 {
        r.output_tokens = Some(x.content_events);
    }
    r.session_id = session.map(|s| opts.salt.hash_hex(s.as_bytes()));
    if opts.record_content {
        r.completion = x.completion;
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(content: bool) -> ObserveOptions {
        ObserveOptions {
            block_tokens: 4,
            record_content: content,
            salt: Salt::from_bytes(b"test salt"),
        }
    }

    fn exchange(body: &str) -> Exchange {
        Exchange {
            request_id: "r1".into(),
            path: "/v1/chat/completions".into(),
            body: Some(bytes::Bytes::from(body.to_owned())),
            status: 200,
            streamed: true,
            content_events: 3,
            ..Exchange::default()
        }
    }

    #[test]
    fn records_sizes_params_and_hashes_without_content() {
        let body = r#"{"model": "m", "messages": [{"role": "user", "content": "one two three four five six seven eight nine"}],
            "max_tokens": 7, "stream": true, "temperature": 0.5, "user": "alice"}"#;
        let r = to_record(exchange(body), &opts(false), false);
        assert_eq!(r.model, "m");
        assert_eq!(r.max_tokens, Some(7));
        assert_eq!(r.input_tokens, Some(9));
        assert_eq!(r.input_tokens_source, "tokenizer:cl100k");
        assert_eq!(r.output_tokens, Some(3), "counted content events");
        assert_eq!(r.prefix_hashes.as_ref().map(Vec::len), Some(2));
        let params: Value = serde_json::from_str(r.params.as_deref().unwrap()).unwrap();
        assert_eq!(params["temperature"], 0.5);
        assert_eq!(params["max_tokens"], 7);
        assert!(params.get("user").is_none() && params.get("messages").is_none());
        let session = r.session_id.clone().unwrap();
        assert!(
            !session.contains("alice") && session.len() == 16,
            "{session}"
        );
        assert_eq!((r.prompt, r.completion), (None, None));
        // The same user gives the same session; another salt another one.
        let again = to_record(exchange(body), &opts(false), false);
        assert_eq!(again.session_id.as_deref(), Some(session.as_str()));
        let mut other = opts(false);
        other.salt = Salt::from_bytes(b"other");
        assert_ne!(
            to_record(exchange(body), &other, false).session_id,
            Some(session)
        );
    }

    #[test]
    fn kept_reads_are_measured_however_the_stream_was_split() {
        let sse = "data: {\"choices\":[{\"delta\":{\"content\":\"Hel\"}}]}\n\n\
                   data: {\"choices\":[{\"delta\":{\"role\":\"assistant\"}}]}\r\n\r\n\
                   data: {\"choices\":[{\"delta\":{\"content\":\"lo\"}}]}\n\n\
                   data: {\"choices\":[],\"usage\":{\"prompt_tokens\":4,\"completion_tokens\":2,\"total_tokens\":6}}\n\n\
                   data: [DONE]\n\n";
        for split in 1..sse.len() {
            let mut x = exchange("{}");
            x.content_events = 0;
            x.response = sse.as_bytes().to_vec();
            x.reads = vec![
                (Duration::from_micros(100), split),
                (Duration::from_micros(350), sse.len()),
            ];
            let r = to_record(x, &opts(true), true);
            assert_eq!(r.output_tokens, Some(2), "split {split}");
            assert_eq!(r.completion.as_deref(), Some("Hello"), "split {split}");
            // An event counts in the read that holds its end.
            let first_whole = sse.find("\n\n").unwrap() + 2;
            let lo = "lo\"}}]}\n\n";
            let second_whole = sse.find(lo).unwrap() + lo.len();
            let (ttft, gaps) = if split >= second_whole {
                (100, vec![0])
            } else if split >= first_whole {
                (100, vec![250])
            } else {
                (350, vec![0])
            };
            assert_eq!(r.ttft_us, Some(ttft), "split {split}");
            assert_eq!(r.itl_us, Some(gaps), "split {split}");
        }
    }

    #[test]
    fn a_plain_body_gives_usage_and_its_ttft_is_the_whole_answer() {
        let mut x = exchange("{}");
        x.streamed = false;
        x.e2e = Some(Duration::from_millis(42));
        x.response = br#"{"choices":[{"message":{"content":"hi there"}}],"usage":{"prompt_tokens":5,"completion_tokens":2,"total_tokens":7}}"#.to_vec();
        let r = to_record(x.clone(), &opts(true), false);
        assert_eq!((r.output_tokens, r.ttft_us), (Some(2), Some(42_000)));
        assert_eq!(r.completion.as_deref(), Some("hi there"));
        // An error answer's body is not a first token.
        x.status = 503;
        assert_eq!(to_record(x, &opts(false), false).ttft_us, None);
    }

    #[test]
    fn usage_wins_and_quick_records_skip_the_tokenizer() {
        let mut x = exchange(r#"{"model": "m", "messages": [{"role": "user", "content": "hi"}]}"#);
        x.usage = Some(Usage::new(11, 5));
        let r = to_record(x.clone(), &opts(true), true);
        assert_eq!(
            (
                r.input_tokens,
                r.input_tokens_source.as_str(),
                r.output_tokens
            ),
            (Some(11), "usage", Some(5))
        );
        assert_eq!(r.prefix_hashes, None);
        assert_eq!(r.prompt.as_deref(), Some("hi"));
    }

    #[test]
    fn unknown_paths_and_bad_json_keep_what_is_known() {
        let mut x = exchange("{not json");
        x.status = 400;
        let r = to_record(x, &opts(false), false);
        assert_eq!(
            (r.status, r.model.as_str(), r.params),
            (Some(400), "", None)
        );
        let mut x = exchange("");
        x.path = "/v1/embeddings".into();
        let r = to_record(x, &opts(false), false);
        assert_eq!(r.endpoint, "/v1/embeddings");
    }
}
