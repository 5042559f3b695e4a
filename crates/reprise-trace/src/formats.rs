//! The four formats of the data contract: trace/1, result/1, gpu/1, server/1.
//!
//! Each struct is one row; field order is column order. See `docs/formats.md` for the full
//! schema with meanings: it is the contract.

use crate::column::Timestamp;
use crate::record;

/// Default endpoint of a request whose source does not say.
pub const DEFAULT_ENDPOINT: &str = "/v1/chat/completions";

record! {
    /// trace/1: one request of a captured, imported or synthesized trace.
    pub struct TraceRecord / TraceBuilders : "trace" / 1, minor 1 {
        /// Unique in the trace.
        pub request_id: String,
        /// When the request arrived (captured) or must be sent (workload).
        pub arrival: Timestamp,
        /// Conversation or tenant key, a salted hash; never a raw API key.
        pub session_id: Option<String>,
        /// Requested model (empty when the source does not say).
        pub model: String = String::new(),
        /// `/v1/chat/completions`, `/v1/completions`, ...
        pub endpoint: String = DEFAULT_ENDPOINT.to_owned(),
        /// Whether the request asked for a streamed response.
        pub stream: bool = true,
        /// Prompt tokens.
        pub input_tokens: Option<u32>,
        /// Where `input_tokens` came from: `usage`, `tokenizer:<name>`, `estimate`, `dataset`.
        pub input_tokens_source: String = "unknown".to_owned(),
        /// Generated tokens (observed, or the target for a workload).
        pub output_tokens: Option<u32>,
        /// `max_tokens` as requested.
        pub max_tokens: Option<u32>,
        /// Chained hash per block of `reprise.block_tokens` prompt tokens.
        pub prefix_hashes: Option<Vec<u64>>,
        /// JSON of the non-content request parameters.
        pub params: Option<String>,
        /// Observed HTTP status (0 = transport error).
        pub status: Option<u16>,
        /// Observed time to first token, microseconds.
        pub ttft_us: Option<u64>,
        /// Observed end-to-end latency, microseconds.
        pub e2e_us: Option<u64>,
        /// Observed gaps between content events, microseconds.
        pub itl_us: Option<Vec<u32>>,
        /// A failure the source recorded (proxy error class, or a dataset's failure marker).
        pub failure: Option<String>,
        /// Prompt text, only when content recording was switched on.
        pub prompt: Option<String>,
        /// Completion text, only when content recording was switched on.
        pub completion: Option<String>,
        /// Turn number within its session, from 1 (trace/1.1; null without a session).
        pub turn: Option<u32>,
        /// Think time: from the end of the session's previous turn to this turn's arrival,
        /// microseconds, when known (trace/1.1; null for a first turn).
        pub think_us: Option<u64>,
    }
}

impl TraceRecord {
    /// A request with the given id and arrival and every optional field empty.
    pub fn new(request_id: impl Into<String>, arrival: Timestamp) -> Self {
        TraceRecord {
            request_id: request_id.into(),
            arrival,
            session_id: None,
            model: String::new(),
            endpoint: DEFAULT_ENDPOINT.to_owned(),
            stream: true,
            input_tokens: None,
            input_tokens_source: "unknown".to_owned(),
            output_tokens: None,
            max_tokens: None,
            prefix_hashes: None,
            params: None,
            status: None,
            ttft_us: None,
            e2e_us: None,
            itl_us: None,
            failure: None,
            prompt: None,
            completion: None,
            turn: None,
            think_us: None,
        }
    }
}

/// The trace/1 columns whose names result/1 also uses for the replay's own measurements;
/// inside result/1 the trace's values carry a `trace_` prefix.
pub const RESULT_RENAMED_TRACE_COLUMNS: [&str; 4] = ["status", "ttft_us", "e2e_us", "itl_us"];

/// Column name of an embedded trace/1 column inside result/1.
pub fn result_trace_column(name: &str) -> String {
    if RESULT_RENAMED_TRACE_COLUMNS.contains(&name) {
        format!("trace_{name}")
    } else {
        name.to_owned()
    }
}

record! {
    /// result/1: one replayed request, joined to its source trace row.
    pub struct ResultRecord / ResultBuilders : "result" / 1, minor 1 {
        flatten request: TraceRecord as result_trace_column,
        /// Run identifier (also the run directory's name).
        pub run_id: String,
        /// Target base URL.
        pub target: String,
        /// `warmup`, `measure`, or a step label.
        pub phase: String,
        /// The concurrency or rate of this request's step.
        pub step_value: Option<f64>,
        /// Which load-generator shard sent it.
        pub shard: u32 = 0,
        /// When the workload said to send it.
        pub scheduled: Timestamp,
        /// Just before the first byte was written (null if never sent).
        pub sent: Option<Timestamp>,
        /// First SSE event with any `choices`.
        pub first_chunk: Option<Timestamp>,
        /// First event carrying non-empty content.
        pub first_token: Option<Timestamp>,
        /// Last content-bearing event, or end of a non-streamed body.
        pub done: Option<Timestamp>,
        /// `sent - scheduled`, microseconds.
        pub queue_us: Option<u64>,
        /// `first_token - sent`, microseconds.
        pub ttft_us: Option<u64>,
        /// `done - sent`, microseconds.
        pub e2e_us: Option<u64>,
        /// `first_token - scheduled`, microseconds.
        pub ttft_sched_us: Option<u64>,
        /// `done - scheduled`, microseconds.
        pub e2e_sched_us: Option<u64>,
        /// `(e2e - ttft) / (n_out - 1)` when `n_out > 1`, microseconds.
        pub tpot_us: Option<u64>,
        /// Gaps between content events, microseconds.
        pub itl_us: Option<Vec<u32>>,
        /// Prompt tokens from the server's `usage`.
        pub n_in_usage: Option<u32>,
        /// Output tokens from the server's `usage`.
        pub n_out_usage: Option<u32>,
        /// Prompt tokens the server served from its prefix cache
        /// (`usage.prompt_tokens_details.cached_tokens`), when it says.
        pub n_cached_usage: Option<u32>,
        /// Output tokens counted by the client.
        pub n_out_counted: Option<u32>,
        /// HTTP status (0 = transport error).
        pub status: Option<u16>,
        /// Error class: `connect`, `timeout`, `http_4xx`, `http_5xx`, `broken_stream`, `bad_body`.
        pub error_kind: Option<String>,
        /// Error message.
        pub error: Option<String>,
    }
}

record! {
    /// gpu/1: one sample of one GPU.
    pub struct GpuSample / GpuBuilders : "gpu" / 1 {
        /// Sampling time (the sampling host's wall clock, offset applied).
        pub time: Timestamp,
        /// Host name.
        pub host: String,
        /// GPU index on the host.
        pub gpu: u32,
        /// GPU UUID.
        pub uuid: Option<String>,
        /// Product name.
        pub name: Option<String>,
        /// GPU utilisation, percent.
        pub util_pct: Option<f64>,
        /// Memory-controller utilisation, percent.
        pub mem_util_pct: Option<f64>,
        /// Memory used, bytes.
        pub mem_used_bytes: Option<u64>,
        /// Memory total, bytes.
        pub mem_total_bytes: Option<u64>,
        /// Power draw, watts.
        pub power_w: Option<f64>,
        /// SM clock, MHz.
        pub sm_clock_mhz: Option<u32>,
        /// Temperature, degrees Celsius.
        pub temp_c: Option<f64>,
    }
}

record! {
    /// server/1: one sample of one Prometheus series (long format).
    pub struct ServerSample / ServerBuilders : "server" / 1 {
        /// Scrape time.
        pub time: Timestamp,
        /// Scraped URL.
        pub source: String,
        /// Metric name, e.g. `vllm:num_requests_waiting`.
        pub metric: String,
        /// Labels as a JSON object.
        pub labels: String = "{}".to_owned(),
        /// Sample value.
        pub value: f64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Row;

    #[test]
    fn trace_schema_matches_the_contract() {
        let cols = TraceRecord::columns();
        let names: Vec<_> = cols.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(&names[..3], ["request_id", "arrival", "session_id"]);
        let required: Vec<_> = cols
            .iter()
            .filter(|c| c.required)
            .map(|c| &c.name)
            .collect();
        assert_eq!(required, ["request_id", "arrival"]);
        assert_eq!(TraceRecord::format_id(), "trace/1.1");
        assert_eq!(ResultRecord::format_id(), "result/1.1");
        // Any minor version of the same major is read; another major or kind is not.
        for ok in ["trace/1", "trace/1.1", "trace/1.7"] {
            assert!(TraceRecord::reads_format(ok), "{ok}");
        }
        for bad in [
            "trace/2",
            "trace/2.1",
            "result/1",
            "trace/1.",
            "trace/1.x",
            "trace",
            "trace/11",
        ] {
            assert!(!TraceRecord::reads_format(bad), "{bad}");
        }
    }

    #[test]
    fn result_embeds_trace_columns_with_renames() {
        let names: Vec<_> = ResultRecord::columns()
            .into_iter()
            .map(|c| c.name)
            .collect();
        assert!(names.contains(&"trace_ttft_us".to_owned()));
        assert!(names.contains(&"ttft_us".to_owned()));
        assert!(names.contains(&"model".to_owned()));
        let unique: std::collections::HashSet<_> = names.iter().collect();
        assert_eq!(unique.len(), names.len(), "column names are unique");
        let required: Vec<_> = ResultRecord::columns()
            .into_iter()
            .filter(|c| c.required)
            .map(|c| c.name)
            .collect();
        assert_eq!(
            required,
            [
                "request_id",
                "arrival",
                "run_id",
                "target",
                "phase",
                "scheduled"
            ]
        );
    }
}
