//! Prompts sized by another tokenizer than the embedded cl100k: `--tokenizer server` (the
//! target's own `POST /tokenize`, as vLLM and llama.cpp expose it: chat template and
//! vocabulary included) or `--tokenizer path/to/tokenizer.json` (a Hugging Face tokenizer,
//! loaded locally), so that the model's prompt count equals the trace's `input_tokens`.
//!
//! For each request, the prompt's word count is corrected until the count matches (a few
//! rounds at most: every word is about one token in common vocabularies). The words per
//! request are kept in a map the executor builds prompts from.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use reprise_protocol::openai::Api;
use serde_json::{Value, json};

use crate::prompt::PromptBuilder;
use reprise_tokenizer::{HfTokenizer, Tokenizer};
use reprise_trace::TraceRecord;

/// How many requests are sized at once: few, since some servers serve a keep-alive
/// connection per HTTP thread (llama.cpp has `-np` + 2 of them) and make extra connections
/// wait for an idle one to time out.
const PARALLEL: usize = 4;

/// The word count whose token count (by `count`) is `target`, found by correcting the
/// difference; `None` when it does not converge in a few rounds (then the closest is used).
pub async fn fit_words<F, Fut>(target: u32, mut count: F) -> Result<(u32, bool), String>
where
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = Result<u32, String>>,
{
    let mut words = target;
    let mut best = (target, u32::MAX);
    for _ in 0..5 {
        let c = count(words).await?;
        let off = c.abs_diff(target);
        if off < best.1 {
            best = (words, off);
        }
        if c == target {
            return Ok((words, true));
        }
        let next = (i64::from(words) + i64::from(target) - i64::from(c)).max(0) as u32;
        if next == words {
            break;
        }
        words = next;
    }
    Ok((best.0, false))
}

/// POSTs `body` to `url` and returns the JSON answer.
async fn post_json(client: &reqwest::Client, url: &str, body: &Value) -> Result<Value, String> {
    let resp = client
        .post(url)
        .json_body(body)
        .send()
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    let status = resp.status();
    let bytes = resp.bytes().await.map_err(|e| format!("{url}: {e}"))?;
    if !status.is_success() {
        return Err(format!("{url}: HTTP {}", status.as_u16()));
    }
    serde_json::from_slice(&bytes).map_err(|e| format!("{url}: not JSON: {e}"))
}

/// The chat prompt as the server's template renders it (llama.cpp's `POST /apply-template`),
/// or `None` when the server has no such endpoint (vLLM applies the template in /tokenize).
async fn apply_template(client: &reqwest::Client, base: &str, prompt: &str) -> Option<String> {
    let url = format!("{base}/apply-template");
    let body = json!({"messages": [{"role": "user", "content": prompt}]});
    let v = post_json(client, &url, &body).await.ok()?;
    v.get("prompt").and_then(Value::as_str).map(str::to_owned)
}

/// The number of tokens the server counts for a prompt (`count`, or the length of `tokens`),
/// special tokens (BOS) and, for chat, the chat template included.
async fn server_count(
    client: &reqwest::Client,
    base: &str,
    model: &str,
    api: Api,
    prompt: &str,
) -> Result<u32, String> {
    let url = format!("{base}/tokenize");
    // vLLM reads `prompt` or `messages` (template applied, special tokens added); llama.cpp
    // reads `content` and adds BOS only when asked (`add_special`), and renders chat
    // templates through /apply-template.
    let body = match api {
        Api::Chat => match apply_template(client, base, prompt).await {
            Some(rendered) => {
                json!({"content": rendered, "add_special": true, "parse_special": true})
            }
            None => json!({"model": model, "messages": [{"role": "user", "content": prompt}],
                "content": prompt, "add_special": true}),
        },
        Api::Completions => {
            json!({"model": model, "prompt": prompt, "content": prompt, "add_special": true})
        }
    };
    let v = post_json(client, &url, &body).await?;
    v.get("count")
        .and_then(Value::as_u64)
        .or_else(|| {
            v.get("tokens")
                .and_then(Value::as_array)
                .map(|t| t.len() as u64)
        })
        .map(|n| n as u32)
        .ok_or_else(|| format!("{url}: no `count` or `tokens` in the answer"))
}

trait JsonBody {
    fn json_body(self, v: &Value) -> Self;
}

impl JsonBody for reqwest::RequestBuilder {
    fn json_body(self, v: &Value) -> Self {
        self.header("content-type", "application/json")
            .body(v.to_string())
    }
}

/// What counts a prompt's tokens.
#[derive(Debug, Clone)]
pub enum Sizer {
    /// The target's `POST /tokenize`.
    Server {
        /// The target's base URL.
        base: String,
        /// Model id sent along.
        model: String,
        /// Chat (template applied by the server) or completions.
        api: Api,
    },
    /// A local Hugging Face tokenizer.
    Local(Arc<HfTokenizer>),
}

impl Sizer {
    /// A local Hugging Face tokenizer (`tokenizer.json`, or a folder holding one).
    pub fn local(path: &std::path::Path) -> Result<Self, reprise_tokenizer::LoadError> {
        Ok(Sizer::Local(Arc::new(HfTokenizer::from_file(path)?)))
    }

    /// How the run records it (`reprise.tokenizer`): `server` or `hf:<name>`.
    pub fn label(&self) -> String {
        match self {
            Sizer::Server { .. } => "server".to_owned(),
            Sizer::Local(t) => format!("hf:{}", t.name()),
        }
    }
}

/// Prompts sized by a [`Sizer`]: words per request id.
#[derive(Debug, Clone, Default)]
pub struct PromptSizing {
    /// What sized them (`server`, `hf:<name>`).
    pub by: String,
    /// Prompt words per request id.
    pub words: HashMap<String, u32>,
}

/// What sizing found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SizingReport {
    /// Requests sized.
    pub requests: u64,
    /// Requests whose count matches exactly.
    pub exact: u64,
}

/// Sizes every request's prompt (those without a recorded prompt) with `sizer`.
pub async fn size_prompts(
    sizer: &Sizer,
    prompts: &PromptBuilder,
    requests: &[TraceRecord],
) -> Result<(PromptSizing, SizingReport), String> {
    let client = reprise_net::client();
    let mut out = HashMap::with_capacity(requests.len());
    let mut report = SizingReport::default();
    let mut tasks = tokio::task::JoinSet::new();
    let mut pending = requests.iter().filter(|r| r.prompt.is_none());
    loop {
        while tasks.len() < PARALLEL {
            let Some(r) = pending.next() else { break };
            if out.contains_key(&r.request_id) {
                continue;
            }
            out.insert(r.request_id.clone(), r.input_tokens.unwrap_or(16));
            let (client, sizer, prompts) = (client.clone(), sizer.clone(), prompts.clone());
            let (id, target, hashes) = (
                r.request_id.clone(),
                r.input_tokens.unwrap_or(16),
                r.prefix_hashes.clone(),
            );
            tasks.spawn(async move {
                let (words, exact) = fit_words(target, |n| {
                    let prompt = prompts.build(&id, n, hashes.as_deref());
                    let (client, sizer) = (client.clone(), sizer.clone());
                    async move {
                        match &sizer {
                            Sizer::Server { base, model, api } => {
                                let base = base.trim_end_matches('/');
                                server_count(&client, base, model, *api, &prompt).await
                            }
                            Sizer::Local(t) => Ok(t.count(&prompt) as u32),
                        }
                    }
                })
                .await?;
                Ok::<_, String>((id, words, exact))
            });
        }
        let Some(done) = tasks.join_next().await else {
            break;
        };
        let (id, words, exact) = done.map_err(|e| e.to_string())??;
        report.requests += 1;
        report.exact += u64::from(exact);
        out.insert(id, words);
    }
    Ok((
        PromptSizing {
            by: sizer.label(),
            words: out,
        },
        report,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn fitting_corrects_a_template_offset_and_a_wider_vocabulary() {
        // A chat template adds 9 tokens.
        let (w, exact) = fit_words(100, |n| async move { Ok(n + 9) }).await.unwrap();
        assert_eq!((w, exact), (91, true));
        // Every tenth word takes two tokens.
        let (w, exact) = fit_words(990, |n| async move { Ok(n + n / 10) })
            .await
            .unwrap();
        assert_eq!((w, exact), (900, true));
        // 1,000 is not reachable with that vocabulary (909 words: 999, 910: 1,001): the
        // closest is kept.
        let (w, exact) = fit_words(1000, |n| async move { Ok(n + n / 10) })
            .await
            .unwrap();
        assert!(!exact && (w + w / 10).abs_diff(1000) == 1, "{w}");
        // Impossible targets give the closest.
        let (w, exact) = fit_words(3, |n| async move { Ok(n + 9) }).await.unwrap();
        assert_eq!((w, exact), (0, false));
        assert!(
            fit_words(5, |_| async { Err::<u32, _>("down".to_owned()) })
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn a_local_tokenizer_sizes_prompts_exactly() {
        // Word-level: every word one token, plus a BOS token the post-processor adds.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokenizer.json");
        let vocab: serde_json::Map<String, Value> = std::iter::once("<s>")
            .chain(std::iter::once("<unk>"))
            .chain(reprise_tokenizer::OUTPUT_WORDS.iter().map(|w| w.trim()))
            .enumerate()
            .map(|(i, w)| (w.to_owned(), json!(i)))
            .collect();
        let bos = json!({"id": 0, "content": "<s>", "single_word": false, "lstrip": false,
            "rstrip": false, "normalized": false, "special": true});
        let tokenizer = json!({
            "version": "1.0", "truncation": null, "padding": null,
            "added_tokens": [bos], "normalizer": null,
            "pre_tokenizer": {"type": "Whitespace"},
            "post_processor": {"type": "TemplateProcessing",
                "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                           {"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [{"Sequence": {"id": "A", "type_id": 0}}],
                "special_tokens": {"<s>": {"id": "<s>", "ids": [0], "tokens": ["<s>"]}}},
            "decoder": null,
            "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"}
        });
        std::fs::write(&path, tokenizer.to_string()).unwrap();
        let sizer = Sizer::Local(Arc::new(HfTokenizer::from_file(&path).unwrap()));
        let requests: Vec<TraceRecord> = [5u32, 40, 300]
            .iter()
            .enumerate()
            .map(|(i, &n)| {
                let mut r = TraceRecord::new(format!("r{i}"), reprise_trace::Timestamp(0));
                r.input_tokens = Some(n);
                r
            })
            .collect();
        let prompts = PromptBuilder::new(None, 1);
        let (sizing, report) = size_prompts(&sizer, &prompts, &requests).await.unwrap();
        assert_eq!(
            report,
            SizingReport {
                requests: 3,
                exact: 3
            }
        );
        let folder = dir.path().file_name().unwrap().to_string_lossy();
        assert_eq!(sizing.by, format!("hf:{folder}"));
        for r in &requests {
            let words = sizing.words[&r.request_id];
            assert_eq!(
                words + 1,
                r.input_tokens.unwrap(),
                "one word per token, plus BOS"
            );
            let Sizer::Local(t) = &sizer else {
                unreachable!()
            };
            let prompt = prompts.build(&r.request_id, words, None);
            assert_eq!(t.count(&prompt) as u32, r.input_tokens.unwrap());
        }
    }
}
