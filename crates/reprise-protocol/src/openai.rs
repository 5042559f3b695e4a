//! OpenAI-compatible request and response shapes.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Which generation API a request uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// `POST /v1/chat/completions`.
    Chat,
    /// `POST /v1/completions`.
    Completions,
}

impl Api {
    /// The endpoint path.
    pub fn path(self) -> &'static str {
        match self {
            Api::Chat => "/v1/chat/completions",
            Api::Completions => "/v1/completions",
        }
    }

    /// The API of an endpoint path, if it is one.
    pub fn from_path(path: &str) -> Option<Api> {
        match path {
            "/v1/chat/completions" => Some(Api::Chat),
            "/v1/completions" => Some(Api::Completions),
            _ => None,
        }
    }
}

/// A request body that failed validation, with the OpenAI `param` it concerns.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct RequestError {
    /// Human-readable reason.
    pub message: String,
    /// The offending parameter, if one.
    pub param: Option<String>,
}

impl RequestError {
    fn new(message: impl Into<String>, param: Option<&str>) -> Self {
        RequestError {
            message: message.into(),
            param: param.map(str::to_owned),
        }
    }
}

/// The parts of a chat or completions request that shape the work, parsed leniently:
/// unknown fields are ignored here and kept in [`GenerationRequest::extra`].
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationRequest {
    /// Which API.
    pub api: Api,
    /// Requested model.
    pub model: String,
    /// The prompt text: chat messages' text joined by newlines, or the completion prompt.
    pub prompt: String,
    /// `max_tokens` (or `max_completion_tokens` for chat).
    pub max_tokens: Option<u32>,
    /// `min_tokens` (vLLM extension).
    pub min_tokens: Option<u32>,
    /// `ignore_eos` (vLLM extension).
    pub ignore_eos: bool,
    /// `stream`.
    pub stream: bool,
    /// `stream_options.include_usage`.
    pub include_usage: bool,
    /// `n` (number of choices).
    pub n: u32,
    /// Every other top-level field.
    pub extra: Map<String, Value>,
}

fn opt_u32(obj: &Map<String, Value>, key: &str) -> Result<Option<u32>, RequestError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| {
                RequestError::new(format!("`{key}` must be a non-negative integer"), Some(key))
            }),
    }
}

fn opt_bool(obj: &Map<String, Value>, key: &str) -> Result<Option<bool>, RequestError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(RequestError::new(
            format!("`{key}` must be a boolean"),
            Some(key),
        )),
    }
}

/// The text of a message `content`: a string, or an array of parts whose `text` is joined.
fn content_text(content: &Value) -> Option<String> {
    match content {
        Value::String(s) => Some(s.clone()),
        Value::Array(parts) => Some(
            parts
                .iter()
                .filter_map(|p| p.get("text").and_then(Value::as_str))
                .collect::<Vec<_>>()
                .join(""),
        ),
        Value::Null => Some(String::new()),
        _ => None,
    }
}

impl GenerationRequest {
    /// Parses and validates a request body for `api`.
    pub fn parse(api: Api, body: &[u8]) -> Result<Self, RequestError> {
        let value: Value = serde_json::from_slice(body)
            .map_err(|e| RequestError::new(format!("request body is not valid JSON: {e}"), None))?;
        let Value::Object(mut obj) = value else {
            return Err(RequestError::new(
                "request body must be a JSON object",
                None,
            ));
        };
        let model = match obj.get("model") {
            Some(Value::String(m)) => m.clone(),
            Some(_) => return Err(RequestError::new("`model` must be a string", Some("model"))),
            None => {
                return Err(RequestError::new(
                    "missing required parameter: `model`",
                    Some("model"),
                ));
            }
        };
        let prompt = match api {
            Api::Chat => {
                let Some(Value::Array(messages)) = obj.get("messages") else {
                    return Err(RequestError::new(
                        "missing required parameter: `messages` (an array)",
                        Some("messages"),
                    ));
                };
                if messages.is_empty() {
                    return Err(RequestError::new(
                        "`messages` must not be empty",
                        Some("messages"),
                    ));
                }
                let mut texts = Vec::with_capacity(messages.len());
                for (i, m) in messages.iter().enumerate() {
                    let text = m.get("content").and_then(content_text).ok_or_else(|| {
                        RequestError::new(
                            format!(
                                "`messages[{i}].content` must be a string or an array of parts"
                            ),
                            Some("messages"),
                        )
                    })?;
                    texts.push(text);
                }
                texts.join("\n")
            }
            Api::Completions => match obj.get("prompt") {
                Some(Value::String(p)) => p.clone(),
                Some(Value::Array(items)) if items.len() == 1 && items[0].is_string() => {
                    items[0].as_str().unwrap_or_default().to_owned()
                }
                Some(_) => {
                    return Err(RequestError::new(
                        "`prompt` must be a string",
                        Some("prompt"),
                    ));
                }
                None => {
                    return Err(RequestError::new(
                        "missing required parameter: `prompt`",
                        Some("prompt"),
                    ));
                }
            },
        };
        let max_tokens = match api {
            Api::Chat => opt_u32(&obj, "max_completion_tokens")?.or(opt_u32(&obj, "max_tokens")?),
            Api::Completions => opt_u32(&obj, "max_tokens")?,
        };
        let include_usage = match obj.get("stream_options") {
            None | Some(Value::Null) => false,
            Some(Value::Object(o)) => opt_bool(o, "include_usage")?.unwrap_or(false),
            Some(_) => {
                return Err(RequestError::new(
                    "`stream_options` must be an object",
                    Some("stream_options"),
                ));
            }
        };
        let n = opt_u32(&obj, "n")?.unwrap_or(1);
        let request = GenerationRequest {
            api,
            min_tokens: opt_u32(&obj, "min_tokens")?,
            ignore_eos: opt_bool(&obj, "ignore_eos")?.unwrap_or(false),
            stream: opt_bool(&obj, "stream")?.unwrap_or(false),
            include_usage,
            n,
            max_tokens,
            model,
            prompt,
            extra: Map::new(),
        };
        for key in ["model", "messages", "prompt"] {
            obj.remove(key);
        }
        Ok(GenerationRequest {
            extra: obj,
            ..request
        })
    }
}

/// Token accounting of one response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "UsageJson", into = "UsageJson")]
pub struct Usage {
    /// Prompt tokens.
    pub prompt_tokens: u32,
    /// Generated tokens.
    pub completion_tokens: u32,
    /// Their sum.
    pub total_tokens: u32,
    /// Prompt tokens the server took from its prefix cache
    /// (`usage.prompt_tokens_details.cached_tokens`: OpenAI, vLLM with
    /// `--enable-prompt-tokens-details`, SGLang, llama.cpp), when it says.
    pub cached_tokens: Option<u32>,
}

/// `usage` on the wire, with OpenAI's nested `prompt_tokens_details`.
#[derive(Serialize, Deserialize)]
struct UsageJson {
    prompt_tokens: u32,
    completion_tokens: u32,
    total_tokens: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    prompt_tokens_details: Option<PromptDetailsJson>,
}

#[derive(Serialize, Deserialize)]
struct PromptDetailsJson {
    #[serde(default)]
    cached_tokens: Option<u32>,
}

impl From<UsageJson> for Usage {
    fn from(u: UsageJson) -> Usage {
        Usage {
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
            total_tokens: u.total_tokens,
            cached_tokens: u.prompt_tokens_details.and_then(|d| d.cached_tokens),
        }
    }
}

impl From<Usage> for UsageJson {
    fn from(u: Usage) -> UsageJson {
        UsageJson {
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
            total_tokens: u.total_tokens,
            prompt_tokens_details: u.cached_tokens.map(|c| PromptDetailsJson {
                cached_tokens: Some(c),
            }),
        }
    }
}

impl Usage {
    /// Usage of a response.
    pub fn new(prompt_tokens: u32, completion_tokens: u32) -> Self {
        Usage {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens + completion_tokens,
            cached_tokens: None,
        }
    }

    /// The same, saying how many prompt tokens came from the prefix cache.
    pub fn with_cached(self, cached_tokens: u32) -> Self {
        Usage {
            cached_tokens: Some(cached_tokens),
            ..self
        }
    }

    /// The `usage` object of a response or chunk, if it has one.
    pub fn from_value(v: &Value) -> Option<Usage> {
        serde_json::from_value(v.get("usage")?.clone()).ok()
    }
}

/// An OpenAI-style error body: `{"error": {"message", "type", "param", "code"}}`.
pub fn error_body(message: &str, kind: &str, param: Option<&str>, code: Option<u16>) -> String {
    serde_json::json!({
        "error": { "message": message, "type": kind, "param": param, "code": code }
    })
    .to_string()
}

/// The answer's text in a whole (non-streamed) response: the first choice's
/// `message.content` (chat) or `text` (completions); empty when it has neither.
pub fn answer_text(response: &Value) -> &str {
    let first = &response["choices"][0];
    first["message"]["content"]
        .as_str()
        .or(first["text"].as_str())
        .unwrap_or_default()
}

/// What counts as content in one parsed chunk: the concatenated `delta.content`,
/// `delta.reasoning_content` (chat) or `text` (completions) of its choices. Empty when the
/// chunk carries none (a role-only first chunk, a finish chunk, a usage-only chunk).
pub fn content_of(chunk: &Value) -> String {
    let mut out = String::new();
    if let Some(choices) = chunk.get("choices").and_then(Value::as_array) {
        for c in choices {
            if let Some(delta) = c.get("delta") {
                for key in ["reasoning_content", "content"] {
                    if let Some(s) = delta.get(key).and_then(Value::as_str) {
                        out.push_str(s);
                    }
                }
            }
            if let Some(s) = c.get("text").and_then(Value::as_str) {
                out.push_str(s);
            }
        }
    }
    out
}

/// What a client measures from one streamed chunk, read without building a JSON tree (the
/// replayer reads every event of every stream: this is its hot path).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChunkFacts {
    /// The chunk has a non-empty `choices` array.
    pub has_choices: bool,
    /// It carries content (see [`content_of`]).
    pub has_content: bool,
    /// Its `usage`, when complete.
    pub usage: Option<Usage>,
    /// Its `error` member, as JSON text.
    pub error: Option<String>,
}

#[derive(Deserialize)]
struct ChunkRepr<'a> {
    #[serde(borrow, default)]
    choices: Option<Vec<ChoiceRepr<'a>>>,
    #[serde(default)]
    usage: Option<UsageRepr>,
    #[serde(default)]
    error: Option<Value>,
}

#[derive(Deserialize)]
struct ChoiceRepr<'a> {
    #[serde(borrow, default)]
    delta: Option<DeltaRepr<'a>>,
    #[serde(borrow, default)]
    text: Option<std::borrow::Cow<'a, str>>,
}

#[derive(Deserialize)]
struct DeltaRepr<'a> {
    #[serde(borrow, default)]
    content: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    reasoning_content: Option<std::borrow::Cow<'a, str>>,
}

/// `usage` as servers send it: fields may be missing or null (then it is not used).
#[derive(Deserialize)]
struct UsageRepr {
    prompt_tokens: Option<u32>,
    completion_tokens: Option<u32>,
    total_tokens: Option<u32>,
    #[serde(default)]
    prompt_tokens_details: Option<DetailsRepr>,
}

/// `usage.prompt_tokens_details` as servers send it (possibly `null`, or without the count).
#[derive(Deserialize)]
struct DetailsRepr {
    #[serde(default)]
    cached_tokens: Option<u32>,
}

/// Reads one chunk's [`ChunkFacts`]; an error when it is not a JSON object of that shape.
///
/// The common shapes are read in one pass that builds nothing (`skim.rs`); anything else,
/// and every error, takes serde's path.
pub fn chunk_facts(data: &str) -> Result<ChunkFacts, serde_json::Error> {
    match crate::skim::chunk_facts(data) {
        Some(facts) => Ok(facts),
        None => chunk_facts_serde(data),
    }
}

/// Reads the chunks of one stream ([`chunk_facts`] for each), faster when they differ only
/// in their text, as a server's chunks mostly do: the same id, model, `created` and
/// structure, another token in `text` or `delta.content`.
///
/// It keeps the last chunk the fast path read whole, with where its first content string's
/// body lies. A chunk that is byte for byte that chunk outside that body, and whose body is
/// a string body the fast path reads, is that chunk with other text: its facts are the kept
/// ones, its content whether that body or another content string is non-empty. Anything
/// else is read whole (and kept). A property test compares it with serde over sequences of
/// chunks.
#[derive(Debug, Default)]
pub struct ChunkReader {
    kept: Vec<u8>,
    content: Option<(usize, usize)>,
    others: bool,
    facts: ChunkFacts,
}

impl ChunkReader {
    /// A reader for a new stream.
    pub fn new() -> ChunkReader {
        ChunkReader::default()
    }

    /// The chunk's facts, as [`chunk_facts`] gives them.
    pub fn facts(&mut self, data: &str) -> Result<ChunkFacts, serde_json::Error> {
        if let Some(facts) = self.same_but_text(data.as_bytes()) {
            return Ok(facts);
        }
        match crate::skim::chunk_facts_and_content(data) {
            Some((facts, content)) => {
                self.content = content.first;
                if content.first.is_some() {
                    self.kept.clear();
                    self.kept.extend_from_slice(data.as_bytes());
                    self.others = content.others;
                    self.facts = facts.clone();
                }
                Ok(facts)
            }
            None => {
                self.content = None;
                chunk_facts_serde(data)
            }
        }
    }

    fn same_but_text(&self, data: &[u8]) -> Option<ChunkFacts> {
        let (start, end) = self.content?;
        let kept = &self.kept;
        let tail = kept.len() - end;
        if data.len() < start + tail
            || data[..start] != kept[..start]
            || data[data.len() - tail..] != kept[end..]
        {
            return None;
        }
        let body = &data[start..data.len() - tail];
        if !crate::skim::plain_string_body(body) {
            return None;
        }
        Some(ChunkFacts {
            has_content: self.others || !body.is_empty(),
            ..self.facts.clone()
        })
    }
}

/// [`chunk_facts`] through serde alone: the reference the fast path is tested and fuzzed
/// against.
#[doc(hidden)]
pub fn chunk_facts_serde(data: &str) -> Result<ChunkFacts, serde_json::Error> {
    let c: ChunkRepr<'_> = serde_json::from_str(data)?;
    let choices = c.choices.unwrap_or_default();
    let non_empty =
        |s: &Option<std::borrow::Cow<'_, str>>| s.as_ref().is_some_and(|s| !s.is_empty());
    Ok(ChunkFacts {
        has_choices: !choices.is_empty(),
        has_content: choices.iter().any(|ch| {
            non_empty(&ch.text)
                || ch
                    .delta
                    .as_ref()
                    .is_some_and(|d| non_empty(&d.content) || non_empty(&d.reasoning_content))
        }),
        usage: c.usage.and_then(|u| {
            Some(Usage {
                prompt_tokens: u.prompt_tokens?,
                completion_tokens: u.completion_tokens?,
                total_tokens: u.total_tokens?,
                cached_tokens: u.prompt_tokens_details.and_then(|d| d.cached_tokens),
            })
        }),
        error: c.error.filter(|e| !e.is_null()).map(|e| e.to_string()),
    })
}

/// Whether a chunk has any `choices` (vLLM's bench takes its TTFT at the first such chunk).
pub fn has_choices(chunk: &Value) -> bool {
    chunk
        .get("choices")
        .and_then(Value::as_array)
        .is_some_and(|c| !c.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answer_text_reads_chat_and_completions_answers() {
        let chat = serde_json::json!({"choices": [{"message": {"content": "hi there"}}]});
        let completion = serde_json::json!({"choices": [{"text": "once"}]});
        let neither = serde_json::json!({"choices": []});
        assert_eq!(answer_text(&chat), "hi there");
        assert_eq!(answer_text(&completion), "once");
        assert_eq!(answer_text(&neither), "");
    }
    use serde_json::json;

    #[test]
    fn cached_prompt_tokens_are_read_and_written_as_openai_nests_them() {
        let with = json!({"usage": {"prompt_tokens": 30, "completion_tokens": 2,
            "total_tokens": 32, "prompt_tokens_details": {"cached_tokens": 16}}});
        let u = Usage::from_value(&with).unwrap();
        assert_eq!(u, Usage::new(30, 2).with_cached(16));
        assert_eq!(chunk_facts(&with.to_string()).unwrap().usage, Some(u));
        assert_eq!(
            serde_json::to_value(u).unwrap()["prompt_tokens_details"]["cached_tokens"],
            16
        );
        // Absent, null, or without the count: not known (never 0).
        for usage in [
            json!({"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}),
            json!({"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5,
                "prompt_tokens_details": null}),
            json!({"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5,
                "prompt_tokens_details": {"audio_tokens": 0}}),
        ] {
            let v = json!({ "usage": usage });
            assert_eq!(Usage::from_value(&v).unwrap().cached_tokens, None, "{v}");
            assert_eq!(
                chunk_facts(&v.to_string())
                    .unwrap()
                    .usage
                    .unwrap()
                    .cached_tokens,
                None
            );
        }
        // Written without details when unknown, as before.
        assert!(
            serde_json::to_value(Usage::new(3, 2))
                .unwrap()
                .get("prompt_tokens_details")
                .is_none()
        );
    }

    #[test]
    fn chunk_facts_agree_with_the_value_readers() {
        let cases = [
            json!({"choices": [{"index": 0, "delta": {"role": "assistant", "content": null}}]}),
            json!({"choices": [{"index": 0, "delta": {"content": "hi \"there\""}}]}),
            json!({"choices": [{"index": 0, "delta": {"reasoning_content": "hm"}}]}),
            json!({"choices": [{"index": 0, "text": " the", "logprobs": null}]}),
            json!({"choices": [{"index": 0, "text": "", "finish_reason": "length"}]}),
            json!({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2,
                "total_tokens": 5, "prompt_tokens_details": {"cached_tokens": 1}}}),
            json!({"choices": [], "usage": {"prompt_tokens": 3}}),
            json!({"choices": null, "usage": null}),
            json!({"error": {"message": "boom"}}),
            json!({"object": "chat.completion.chunk", "timings": {"x": 1}}),
        ];
        for v in cases {
            let f = chunk_facts(&v.to_string()).unwrap();
            assert_eq!(f.has_choices, has_choices(&v), "{v}");
            assert_eq!(f.has_content, !content_of(&v).is_empty(), "{v}");
            assert_eq!(f.usage, Usage::from_value(&v), "{v}");
            assert_eq!(f.error.is_some(), v.get("error").is_some(), "{v}");
        }
        assert!(chunk_facts("not json").is_err());
        assert!(chunk_facts("[1, 2]").is_err());
        assert!(chunk_facts(r#"{"choices": [{"text": 3}]}"#).is_err());
    }

    #[test]
    fn parses_chat_requests_with_vllm_extensions() {
        let body = json!({
            "model": "m", "messages": [{"role": "system", "content": "a"}, {"role": "user", "content": [{"type": "text", "text": "b"}]}],
            "max_tokens": 5, "ignore_eos": true, "min_tokens": 5, "stream": true,
            "stream_options": {"include_usage": true}, "temperature": 0.7
        });
        let r = GenerationRequest::parse(Api::Chat, body.to_string().as_bytes()).unwrap();
        assert_eq!(r.prompt, "a\nb");
        assert_eq!(
            (
                r.max_tokens,
                r.min_tokens,
                r.ignore_eos,
                r.stream,
                r.include_usage
            ),
            (Some(5), Some(5), true, true, true)
        );
        assert_eq!(r.extra["temperature"], json!(0.7));
        assert!(!r.extra.contains_key("messages"));
    }

    #[test]
    fn rejects_bad_bodies_with_the_parameter() {
        let e = GenerationRequest::parse(Api::Chat, b"{\"model\":\"m\"}").unwrap_err();
        assert_eq!(e.param.as_deref(), Some("messages"));
        let e = GenerationRequest::parse(Api::Completions, b"{\"prompt\":\"x\"}").unwrap_err();
        assert_eq!(e.message, "missing required parameter: `model`");
        let e = GenerationRequest::parse(
            Api::Completions,
            b"{\"model\":\"m\",\"prompt\":\"x\",\"max_tokens\":-1}",
        )
        .unwrap_err();
        assert_eq!(e.message, "`max_tokens` must be a non-negative integer");
        assert!(
            GenerationRequest::parse(Api::Chat, b"{not json")
                .unwrap_err()
                .message
                .starts_with("request body is not valid JSON")
        );
    }

    #[test]
    fn content_follows_the_metrics_spec() {
        assert_eq!(
            content_of(&json!({"choices": [{"delta": {"role": "assistant", "content": ""}}]})),
            ""
        );
        assert_eq!(
            content_of(&json!({"choices": [{"delta": {"reasoning_content": "r"}}]})),
            "r"
        );
        assert_eq!(content_of(&json!({"choices": [{"text": "t"}]})), "t");
        assert_eq!(content_of(&json!({"choices": [], "usage": {}})), "");
        assert!(!has_choices(&json!({"choices": []})));
    }

    /// The serde path's answer, as the fast path must give it.
    fn serde(s: &str) -> Option<ChunkFacts> {
        chunk_facts_serde(s).ok()
    }

    #[test]
    fn the_fast_path_reads_the_servers_chunks_as_serde_does() {
        let common = [
            // vLLM completions, a content chunk and the final usage chunk.
            r#"{"id":"cmpl-1","object":"text_completion","created":1700000000,"model":"m","choices":[{"index":0,"text":" the","logprobs":null,"finish_reason":null,"stop_reason":null}],"usage":null}"#,
            r#"{"id":"cmpl-1","object":"text_completion","created":1700000000,"model":"m","choices":[],"usage":{"prompt_tokens":16,"total_tokens":32,"completion_tokens":16,"prompt_tokens_details":{"cached_tokens":8}}}"#,
            // Chat: the role chunk, content with escapes and raw UTF-8, reasoning.
            r#"{"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}"#,
            r#"{"choices":[{"index":0,"delta":{"content":"a \"b\"\n\\ ünï 😀"}}]}"#,
            r#"{"choices":[{"delta":{"reasoning_content":"hm","content":null}}]}"#,
            r#" { "choices" : [ { "delta" : { } } ] , "usage" : null , "error" : null } "#,
            // llama.cpp: usage without details, timings beside it.
            r#"{"choices":[{"finish_reason":"length","index":0,"delta":{}}],"usage":{"completion_tokens":3,"prompt_tokens":5,"total_tokens":8},"timings":{"prompt_ms":1.5e1,"predicted_per_second":-0.25}}"#,
            // Usage with a null count is not complete.
            r#"{"usage":{"prompt_tokens":5,"completion_tokens":null,"total_tokens":8,"prompt_tokens_details":null}}"#,
            r#"{"choices":null}"#,
            r#"{}"#,
        ];
        for s in common {
            let fast = crate::skim::chunk_facts(s);
            assert!(fast.is_some(), "the fast path should read {s}");
            assert_eq!(fast, serde(s), "{s}");
        }
        assert_eq!(
            crate::skim::chunk_facts(common[1]).unwrap().usage,
            Some(Usage::new(16, 16).with_cached(8))
        );
        // Outside its shapes the fast path steps aside; chunk_facts still answers (or
        // fails) exactly as serde does.
        let others = [
            r#"{"error":{"message":"overloaded","code":503}}"#,
            r#"{"choices":[{"text":"\u0041"}]}"#,
            r#"{"choices":[{"text":"a"}],"choices":[]}"#,
            r#"{"choices":[{"text":1}]}"#,
            r#"{"choices":[["x"]]}"#,
            r#"{"usage":{"prompt_tokens":1.0,"completion_tokens":1,"total_tokens":2}}"#,
            r#"{"usage":{"prompt_tokens":-1,"completion_tokens":1,"total_tokens":2}}"#,
            r#"{"usage":{"prompt_tokens":4294967296,"completion_tokens":1,"total_tokens":2}}"#,
            r#"{"choices":[{"text":"a"}]} x"#,
            r#"{"choices":[{"text":"a	b"}]}"#,
            r#"{"a":01}"#,
            r#"{"a":tru}"#,
            r#"{"a":[1,]}"#,
            r#"{"a":1"#,
            r#"[]"#,
            "",
        ];
        for s in others {
            assert_eq!(crate::skim::chunk_facts(s), None, "{s}");
            assert_eq!(chunk_facts(s).ok(), serde(s), "{s}");
        }
    }

    /// Chunk-like JSON: the fields the facts come from, in any order, with values of the
    /// expected types and of others, beside unrelated fields.
    fn chunk_text() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let text = prop_oneof![
            Just("null".to_owned()),
            Just("\"\"".to_owned()),
            "[ a-z\u{e9}\u{1f600}\\\\\"]{0,8}".prop_map(|t| serde_json::to_string(&t).unwrap()),
            Just("\"\\u00e9\"".to_owned()),
            Just("3".to_owned()),
        ];
        let count = prop_oneof![
            Just("null".to_owned()),
            (0u64..5_000_000_000).prop_map(|n| n.to_string()),
            Just("1.5".to_owned()),
            Just("-2".to_owned()),
            Just("1e3".to_owned()),
        ];
        let other = prop_oneof![
            Just("1".to_owned()),
            Just("-0.5e-3".to_owned()),
            Just("true".to_owned()),
            Just("\"x\"".to_owned()),
            Just("[1,{\"a\":[]},null]".to_owned()),
            Just("{\"k\":{\"k\":false}}".to_owned()),
        ];
        let delta = proptest::collection::vec(
            (
                prop_oneof![Just("content"), Just("reasoning_content"), Just("role")],
                text.clone(),
            ),
            0..3,
        )
        .prop_map(|fs| {
            let body: Vec<String> = fs.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
            format!("{{{}}}", body.join(","))
        });
        let choice = (
            proptest::option::of(text.clone()),
            proptest::option::of(prop_oneof![delta, Just("null".to_owned())]),
            proptest::option::of(other.clone()),
        )
            .prop_map(|(t, d, o)| {
                let mut fs = Vec::new();
                if let Some(t) = t {
                    fs.push(format!("\"text\":{t}"));
                }
                if let Some(d) = d {
                    fs.push(format!("\"delta\":{d}"));
                }
                if let Some(o) = o {
                    fs.push(format!("\"index\":{o}"));
                }
                format!("{{{}}}", fs.join(","))
            });
        let usage = (
            proptest::collection::vec(
                (
                    prop_oneof![
                        Just("prompt_tokens"),
                        Just("completion_tokens"),
                        Just("total_tokens")
                    ],
                    count.clone(),
                ),
                0..4,
            ),
            proptest::option::of(prop_oneof![
                Just("null".to_owned()),
                count.prop_map(|c| format!("{{\"cached_tokens\":{c}}}")),
            ]),
        )
            .prop_map(|(fs, details)| {
                let mut body: Vec<String> =
                    fs.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
                if let Some(d) = details {
                    body.push(format!("\"prompt_tokens_details\":{d}"));
                }
                format!("{{{}}}", body.join(","))
            });
        let member = prop_oneof![
            proptest::collection::vec(choice, 0..3)
                .prop_map(|cs| format!("\"choices\":[{}]", cs.join(","))),
            Just("\"choices\":null".to_owned()),
            usage.prop_map(|u| format!("\"usage\":{u}")),
            Just("\"usage\":null".to_owned()),
            Just("\"error\":null".to_owned()),
            Just("\"error\":{\"message\":\"x\"}".to_owned()),
            other.prop_map(|o| format!("\"id\":{o}")),
        ];
        (proptest::collection::vec(member, 0..5), " {0,2}")
            .prop_map(|(ms, pad)| format!("{pad}{{{}}}{pad}", ms.join(&format!(",{pad}"))))
    }

    proptest::proptest! {
        #[test]
        fn the_fast_path_agrees_with_serde_whenever_it_answers(
            text in chunk_text(),
            cut in proptest::option::of(0usize..400),
            insert in proptest::option::of((0usize..400, proptest::sample::select(vec!['"', ',', '}', ']', '0', 'x', '\\', ' ', '\n']))),
        ) {
            let mut s = text.clone();
            if let Some(c) = cut.filter(|c| *c < s.len() && s.is_char_boundary(*c)) {
                s.remove(c);
            }
            if let Some((at, ch)) = insert.filter(|(at, _)| *at < s.len() && s.is_char_boundary(*at)) {
                s.insert(at, ch);
            }
            let fast = crate::skim::chunk_facts(&s);
            if fast.is_some() {
                proptest::prop_assert_eq!(&fast, &serde(&s), "{}", s);
            }
            proptest::prop_assert_eq!(chunk_facts(&s).ok(), serde(&s), "{}", s);
        }

        #[test]
        fn a_stream_reader_agrees_with_serde_on_every_chunk(
            template in proptest::prop_oneof![
                // `§` marks where each chunk's text goes.
                proptest::strategy::Just(r#"{"id":"c","object":"chunk","choices":[{"index":0,"delta":{"content":"§"},"finish_reason":null}]}"#.to_owned()),
                proptest::strategy::Just(r#"{"choices":[{"text":"§"},{"text":"x"}]}"#.to_owned()),
                proptest::strategy::Just(r#"{"choices":[{"text":"§"},{"text":""}]}"#.to_owned()),
                proptest::strategy::Just(r#"{"choices":[{"delta":{"content":"§","reasoning_content":"r"}}]}"#.to_owned()),
                proptest::strategy::Just(r#"{"choices":[{"delta":{"reasoning_content":"§","content":null}}],"usage":null}"#.to_owned()),
                proptest::strategy::Just(r#" {"choices":[{"text":"§"}],"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}} "#.to_owned()),
                // Generated chunks, their first string's body marked.
                proptest::strategy::Strategy::prop_map(chunk_text(), |t| match t.find(":\"") {
                    Some(at) => {
                        let at = at + 2;
                        let end = t[at..].find('"').map_or(t.len(), |e| at + e);
                        format!("{}§{}", &t[..at], &t[end..])
                    }
                    None => t,
                }),
            ],
            texts in proptest::collection::vec(
                proptest::prop_oneof![
                    "[a-z ]{0,6}",
                    proptest::strategy::Just(String::new()),
                    proptest::strategy::Just("\\\"".to_owned()),
                    proptest::strategy::Just("\\n\\t\\/".to_owned()),
                    proptest::strategy::Just("\\u0041".to_owned()),
                    proptest::strategy::Just("\\ud800".to_owned()),
                    proptest::strategy::Just("\\uZZ".to_owned()),
                    proptest::strategy::Just("\\x".to_owned()),
                    proptest::strategy::Just("\\".to_owned()),
                    proptest::strategy::Just("\"".to_owned()),
                    proptest::strategy::Just("\",\"x\":\"".to_owned()),
                    proptest::strategy::Just("\u{1}".to_owned()),
                    proptest::strategy::Just("é\u{1F600}".to_owned()),
                ],
                1..12,
            ),
            others in proptest::collection::vec(chunk_text(), 0..3),
        ) {
            // Chunks made from one template with each text in its place (the reader's fast
            // case, and its traps: quotes, escapes cut in two, control characters), with
            // other chunks between.
            let mut reader = ChunkReader::new();
            let mut chunks = Vec::new();
            for (i, t) in texts.iter().enumerate() {
                chunks.push(template.replace('§', t));
                if let Some(o) = others.get(i) {
                    chunks.push(o.clone());
                }
                chunks.push(template.replace('§', "a"));
            }
            for c in &chunks {
                proptest::prop_assert_eq!(reader.facts(c).ok(), serde(c), "{}", c);
            }
        }
    }
}
