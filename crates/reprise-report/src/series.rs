//! The server metrics the analyzer reads, by name, for every server it knows (vLLM,
//! SGLang, TGI, llama.cpp): shared by the per-step figures ([`crate::side`]) and the
//! correlations ([`crate::correlate`]), which depend on this module and not on each other.

/// Gauges of requests waiting in the server's queue, by server.
pub const WAITING: [&str; 4] = [
    "vllm:num_requests_waiting",
    "sglang:num_queue_reqs",
    "tgi_queue_size",
    "llamacpp:requests_deferred",
];

/// Gauges of KV-cache use (fractions 0-1), by server.
pub const KV_CACHE: [&str; 3] = [
    "vllm:gpu_cache_usage_perc",
    "vllm:kv_cache_usage_perc",
    "sglang:token_usage",
];

/// Gauges of requests running (the achieved batch size), by server.
pub const RUNNING: [&str; 4] = [
    "vllm:num_requests_running",
    "sglang:num_running_reqs",
    "tgi_batch_current_size",
    "llamacpp:requests_processing",
];
