//! Turning what the proxy saw into a trace/1 row, on worker threads: request JSON parsing,
//! tokenizing, salted prefix hashes and session ids. Nothing here runs on the forwarding path.

use std::time::Duration;

use reprise_protocol::openai::{Api, GenerationRequest, Usage};
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
pub fn to_record(x: Exchange, opts: &ObserveOptions, quick: bool) -> TraceRecord {
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
