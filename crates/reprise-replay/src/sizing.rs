//! `--tokenizer server`: size prompts with the target's own tokenizer (`POST /tokenize`, as
//! vLLM and llama.cpp expose it), so that the server's prompt count — chat template and
//! vocabulary included — equals the trace's `input_tokens`.
//!
//! For each request, the prompt's word count is corrected until the server's count matches
//! (a few round trips at most: every word is about one token in common vocabularies). The
//! words per request are kept in a map the executor builds prompts from.

use std::collections::HashMap;
use std::future::Future;

use reprise_protocol::openai::Api;
use serde_json::{Value, json};

use crate::prompt::PromptBuilder;
use reprise_trace::TraceRecord;

/// How many requests are sized at once.
const PARALLEL: usize = 32;

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

/// The number of tokens the server counts for a prompt (`count`, or the length of `tokens`).
async fn server_count(
    client: &reqwest::Client,
    url: &str,
    model: &str,
    api: Api,
    prompt: &str,
) -> Result<u32, String> {
    let body = match api {
        Api::Chat => {
            json!({"model": model, "messages": [{"role": "user", "content": prompt}], "content": prompt})
        }
        Api::Completions => json!({"model": model, "prompt": prompt, "content": prompt}),
    };
    let resp = client
        .post(url)
        .json_body(&body)
        .send()
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    let status = resp.status();
    let bytes = resp.bytes().await.map_err(|e| format!("{url}: {e}"))?;
    if !status.is_success() {
        return Err(format!("{url}: HTTP {}", status.as_u16()));
    }
    let v: Value = serde_json::from_slice(&bytes).map_err(|e| format!("{url}: not JSON: {e}"))?;
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

/// What sizing found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SizingReport {
    /// Requests sized.
    pub requests: u64,
    /// Requests whose server count matches exactly.
    pub exact: u64,
}

/// Sizes every request's prompt against `base`'s `/tokenize`; returns words per request id.
pub async fn size_with_server(
    base: &str,
    model: &str,
    api: Api,
    prompts: &PromptBuilder,
    requests: &[TraceRecord],
) -> Result<(HashMap<String, u32>, SizingReport), String> {
    let client = reqwest::Client::new();
    let url = format!("{}/tokenize", base.trim_end_matches('/'));
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
            let (client, url, model, prompts) = (
                client.clone(),
                url.clone(),
                model.to_owned(),
                prompts.clone(),
            );
            let (id, target, hashes) = (
                r.request_id.clone(),
                r.input_tokens.unwrap_or(16),
                r.prefix_hashes.clone(),
            );
            tasks.spawn(async move {
                let (words, exact) = fit_words(target, |n| {
                    let prompt = prompts.build(&id, n, hashes.as_deref());
                    let (client, url, model) = (client.clone(), url.clone(), model.clone());
                    async move { server_count(&client, &url, &model, api, &prompt).await }
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
    Ok((out, report))
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
}
