//! Prometheus metrics of the simulator, with vLLM's names and a simulated GPU in
//! DCGM-exporter's names.

use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// vLLM's TTFT histogram buckets, seconds.
const TTFT_BUCKETS: [f64; 17] = [
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0,
];
/// vLLM's end-to-end latency histogram buckets, seconds.
const E2E_BUCKETS: [f64; 15] = [
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0,
];

/// A fixed-bucket histogram with atomic counts.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    counts: Vec<AtomicU64>,
    sum_us: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            sum_us: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    /// Records one value in seconds.
    pub fn observe(&self, secs: f64) {
        if let Some(i) = self.bounds.iter().position(|&b| secs <= b) {
            self.counts[i].fetch_add(1, Ordering::Relaxed);
        }
        self.sum_us
            .fetch_add((secs * 1e6) as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let _ = writeln!(out, "# TYPE {name} histogram");
        let mut cumulative = 0;
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            cumulative += c.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{b}\"}} {cumulative}");
        }
        let count = self.count();
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {count}");
        let sum = self.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
        let _ = writeln!(out, "{name}_count{{{labels}}} {count}");
    }
}

/// Fault kinds counted in `/metrics`.
pub const FAULT_KINDS: [&str; 6] = ["error", "reset", "cut", "stall", "malformed", "reload"];

/// All counters and gauges, shared by the engine thread and the HTTP handlers.
#[derive(Debug)]
pub struct Metrics {
    model: String,
    gpu_memory_bytes: u64,
    /// Sequences running (gauge).
    pub running: AtomicU64,
    /// Sequences waiting (gauge).
    pub waiting: AtomicU64,
    /// KV cache usage × 1e6 (gauge).
    pub cache_usage_ppm: AtomicU64,
    /// Last step's batch size (gauge).
    pub batch_size: AtomicU64,
    /// GPU memory in use, bytes (gauge).
    pub fb_used_bytes: AtomicU64,
    /// Prompt tokens of admitted requests.
    pub prompt_tokens: AtomicU64,
    /// Generated tokens.
    pub generation_tokens: AtomicU64,
    /// Requests finished (by finish reason `length` or `stop`).
    pub success_length: AtomicU64,
    /// Requests finished with `stop`.
    pub success_stop: AtomicU64,
    /// Requests rejected (queue full, too large, bad request).
    pub rejected: AtomicU64,
    /// Preemptions.
    pub preemptions: AtomicU64,
    /// Prefix-cache queried tokens.
    pub prefix_queries: AtomicU64,
    /// Prefix-cache hit tokens.
    pub prefix_hits: AtomicU64,
    /// Steps run.
    pub steps: AtomicU64,
    /// Nanoseconds the simulated GPU was busy.
    pub busy_ns: AtomicU64,
    /// Faults injected, by kind (see [`FAULT_KINDS`]).
    pub faults: [AtomicU64; 6],
    /// Time to first token.
    pub ttft: Histogram,
    /// End-to-end latency.
    pub e2e: Histogram,
    util_window: Mutex<(Instant, u64, f64)>,
}

impl Metrics {
    /// Metrics for a served model.
    pub fn new(model: &str, gpu_memory_bytes: u64, weights_bytes: u64) -> Self {
        Metrics {
            model: model.to_owned(),
            gpu_memory_bytes,
            running: AtomicU64::new(0),
            waiting: AtomicU64::new(0),
            cache_usage_ppm: AtomicU64::new(0),
            batch_size: AtomicU64::new(0),
            fb_used_bytes: AtomicU64::new(weights_bytes),
            prompt_tokens: AtomicU64::new(0),
            generation_tokens: AtomicU64::new(0),
            success_length: AtomicU64::new(0),
            success_stop: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            preemptions: AtomicU64::new(0),
            prefix_queries: AtomicU64::new(0),
            prefix_hits: AtomicU64::new(0),
            steps: AtomicU64::new(0),
            busy_ns: AtomicU64::new(0),
            faults: Default::default(),
            ttft: Histogram::new(&TTFT_BUCKETS),
            e2e: Histogram::new(&E2E_BUCKETS),
            util_window: Mutex::new((Instant::now(), 0, 0.0)),
        }
    }

    /// Counts one injected fault.
    pub fn fault(&self, kind: &str) {
        if let Some(i) = FAULT_KINDS.iter().position(|k| *k == kind) {
            self.faults[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Faults of one kind so far.
    pub fn faults_of(&self, kind: &str) -> u64 {
        FAULT_KINDS
            .iter()
            .position(|k| *k == kind)
            .map_or(0, |i| self.faults[i].load(Ordering::Relaxed))
    }

    /// GPU utilisation, %: the busy share since the previous reading (at least 100 ms back).
    pub fn gpu_util_pct(&self) -> f64 {
        let mut w = self.util_window.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let busy = self.busy_ns.load(Ordering::Relaxed);
        let elapsed = now.duration_since(w.0).as_nanos() as f64;
        if elapsed >= 1e8 {
            w.2 = ((busy - w.1) as f64 / elapsed * 100.0).clamp(0.0, 100.0);
            *w = (now, busy, w.2);
        }
        w.2
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let labels = format!("model_name=\"{}\"", self.model);
        let mut out = String::with_capacity(8192);
        let gauge = |out: &mut String, name: &str, kind: &str, v: f64| {
            let _ = writeln!(out, "# TYPE {name} {kind}");
            let _ = writeln!(out, "{name}{{{labels}}} {v}");
        };
        gauge(
            &mut out,
            "vllm:num_requests_running",
            "gauge",
            g(&self.running) as f64,
        );
        gauge(
            &mut out,
            "vllm:num_requests_waiting",
            "gauge",
            g(&self.waiting) as f64,
        );
        gauge(
            &mut out,
            "vllm:gpu_cache_usage_perc",
            "gauge",
            g(&self.cache_usage_ppm) as f64 / 1e6,
        );
        gauge(
            &mut out,
            "vllm:kv_cache_usage_perc",
            "gauge",
            g(&self.cache_usage_ppm) as f64 / 1e6,
        );
        gauge(
            &mut out,
            "vllm:prompt_tokens_total",
            "counter",
            g(&self.prompt_tokens) as f64,
        );
        gauge(
            &mut out,
            "vllm:generation_tokens_total",
            "counter",
            g(&self.generation_tokens) as f64,
        );
        gauge(
            &mut out,
            "vllm:num_preemptions_total",
            "counter",
            g(&self.preemptions) as f64,
        );
        gauge(
            &mut out,
            "vllm:prefix_cache_queries_total",
            "counter",
            g(&self.prefix_queries) as f64,
        );
        gauge(
            &mut out,
            "vllm:prefix_cache_hits_total",
            "counter",
            g(&self.prefix_hits) as f64,
        );
        gauge(
            &mut out,
            "reprise_sim_batch_size",
            "gauge",
            g(&self.batch_size) as f64,
        );
        gauge(
            &mut out,
            "reprise_sim_steps_total",
            "counter",
            g(&self.steps) as f64,
        );
        gauge(
            &mut out,
            "reprise_sim_rejected_total",
            "counter",
            g(&self.rejected) as f64,
        );
        let _ = writeln!(out, "# TYPE vllm:request_success_total counter");
        let _ = writeln!(
            out,
            "vllm:request_success_total{{{labels},finished_reason=\"length\"}} {}",
            g(&self.success_length)
        );
        let _ = writeln!(
            out,
            "vllm:request_success_total{{{labels},finished_reason=\"stop\"}} {}",
            g(&self.success_stop)
        );
        self.ttft
            .render(&mut out, "vllm:time_to_first_token_seconds", &labels);
        self.e2e
            .render(&mut out, "vllm:e2e_request_latency_seconds", &labels);
        let _ = writeln!(out, "# TYPE reprise_sim_faults_total counter");
        for (kind, c) in FAULT_KINDS.iter().zip(&self.faults) {
            let _ = writeln!(out, "reprise_sim_faults_total{{kind=\"{kind}\"}} {}", g(c));
        }
        let gpu = "gpu=\"0\",UUID=\"GPU-reprise-sim-0\",modelName=\"reprise sim\",Hostname=\"sim\"";
        let used_mib = g(&self.fb_used_bytes) / (1 << 20);
        let free_mib = (self.gpu_memory_bytes / (1 << 20)).saturating_sub(used_mib);
        let _ = writeln!(out, "# TYPE DCGM_FI_DEV_GPU_UTIL gauge");
        let _ = writeln!(
            out,
            "DCGM_FI_DEV_GPU_UTIL{{{gpu}}} {:.0}",
            self.gpu_util_pct()
        );
        let _ = writeln!(out, "# TYPE DCGM_FI_DEV_FB_USED gauge");
        let _ = writeln!(out, "DCGM_FI_DEV_FB_USED{{{gpu}}} {used_mib}");
        let _ = writeln!(out, "# TYPE DCGM_FI_DEV_FB_FREE gauge");
        let _ = writeln!(out, "DCGM_FI_DEV_FB_FREE{{{gpu}}} {free_mib}");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative() {
        let m = Metrics::new("m", 1 << 30, 0);
        m.ttft.observe(0.003);
        m.ttft.observe(0.05);
        m.ttft.observe(100.0);
        let text = m.render();
        assert!(
            text.contains(
                "vllm:time_to_first_token_seconds_bucket{model_name=\"m\",le=\"0.005\"} 1\n"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "vllm:time_to_first_token_seconds_bucket{model_name=\"m\",le=\"0.06\"} 2\n"
            )
        );
        assert!(
            text.contains(
                "vllm:time_to_first_token_seconds_bucket{model_name=\"m\",le=\"+Inf\"} 3\n"
            )
        );
        assert!(text.contains("vllm:time_to_first_token_seconds_count{model_name=\"m\"} 3\n"));
    }
}
