//! Engine profiles: the limits and step-time parameters of a simulated deployment, named
//! built-ins derived from published hardware and model figures, and JSON files.
//!
//! Step time is a roofline model of one continuous-batching iteration:
//!
//! ```text
//! step = fixed + batch × per_seq
//!      + max( weights_read + kv_tokens × kv_read_per_token ,   (memory-bound: decode)
//!             prefill_tokens × prefill_per_token )             (compute-bound: prefill)
//! ```
//!
//! See `docs/sim.md` for each built-in profile's derivation and sources.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Everything that shapes a simulated deployment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// Profile name.
    pub name: String,
    /// One line: model, hardware, engine.
    pub description: String,
    /// Model id served at `/v1/models` (requests must name it).
    pub model: String,
    /// Most sequences running at once (vLLM `max_num_seqs`).
    pub max_num_seqs: usize,
    /// Token budget of one step, prefill and decode together (vLLM `max_num_batched_tokens`).
    pub max_batched_tokens: u32,
    /// KV-cache capacity in tokens.
    pub kv_capacity_tokens: u64,
    /// Tokens per KV block (vLLM default 16).
    pub block_size: u32,
    /// Longest prompt + output accepted.
    pub max_model_len: u32,
    /// Most requests waiting; beyond it requests are rejected with `reject_status`.
    pub max_queue: usize,
    /// Status of a request rejected because the queue is full (503 or 429).
    pub reject_status: u16,
    /// Preempt (recompute) the newest sequence when the KV cache runs out mid-decode.
    pub preemption: bool,
    /// Reuse cached KV blocks of equal prompt prefixes.
    pub prefix_caching: bool,
    /// Fixed cost of every step, µs (scheduling, sampling, kernel launches).
    pub step_fixed_us: f64,
    /// Cost per running sequence per step, µs.
    pub per_seq_us: f64,
    /// Time to read the weights once, µs (the decode floor).
    pub weights_read_us: f64,
    /// Time to read one token's KV per step, µs (attention's memory cost).
    pub kv_read_per_token_us: f64,
    /// Compute time per prefill token, µs.
    pub prefill_per_token_us: f64,
    /// Weight memory, bytes (for the simulated `DCGM_FI_DEV_FB_USED`).
    pub weights_bytes: u64,
    /// KV bytes per token (for the simulated `DCGM_FI_DEV_FB_USED`).
    pub kv_bytes_per_token: u64,
    /// Total GPU memory, bytes (for `DCGM_FI_DEV_FB_FREE`).
    pub gpu_memory_bytes: u64,
    /// Median output length when `ignore_eos` is not set (lognormal).
    pub output_median_tokens: f64,
    /// Lognormal sigma of the output length.
    pub output_sigma: f64,
    /// `max_tokens` when a request gives none.
    pub default_max_tokens: u32,
}

/// H100 SXM HBM3 bandwidth (NVIDIA H100 datasheet), bytes/s.
const H100_BW: f64 = 3.35e12;
/// H100 SXM dense BF16 tensor throughput (NVIDIA H100 datasheet), FLOP/s.
const H100_FLOPS: f64 = 989e12;
/// T4 GDDR6 bandwidth (NVIDIA T4 datasheet), bytes/s.
const T4_BW: f64 = 320e9;
/// T4 FP16 tensor throughput (NVIDIA T4 datasheet), FLOP/s.
const T4_FLOPS: f64 = 65e12;
/// Achieved share of peak bandwidth in decode: ~77% measured for Llama-3.1-8B at batch 1 on
/// an A100 with vLLM (75 tok/s against a 97 tok/s roofline).
const BW_EFF: f64 = 0.77;
/// Achieved share of peak FLOP/s in prefill (model FLOPs utilisation), a typical figure.
const MFU: f64 = 0.5;

fn us(seconds: f64) -> f64 {
    seconds * 1e6
}

/// A profile for a dense model from its size and hardware figures.
#[allow(
    clippy::too_many_arguments,
    reason = "one argument per published hardware and model figure"
)]
fn dense(
    name: &str,
    description: &str,
    model: &str,
    params: f64,
    bytes_per_param: f64,
    kv_bytes_per_token: u64,
    gpus: f64,
    bw: f64,
    flops: f64,
    gpu_memory_bytes: u64,
    max_num_seqs: usize,
    max_model_len: u32,
) -> Profile {
    let weights_bytes = params * bytes_per_param;
    let total_mem = gpu_memory_bytes as f64;
    // vLLM's default gpu_memory_utilization 0.9, minus weights and ~5% for activations.
    let kv_bytes = (total_mem * 0.9 - weights_bytes - total_mem * 0.05).max(total_mem * 0.05);
    let eff_bw = bw * gpus * BW_EFF;
    Profile {
        name: name.into(),
        description: description.into(),
        model: model.into(),
        max_num_seqs,
        max_batched_tokens: 8192,
        kv_capacity_tokens: (kv_bytes / kv_bytes_per_token as f64) as u64,
        block_size: 16,
        max_model_len,
        max_queue: 4096,
        reject_status: 503,
        preemption: true,
        prefix_caching: true,
        step_fixed_us: 1500.0,
        per_seq_us: 15.0,
        weights_read_us: us(weights_bytes / eff_bw),
        kv_read_per_token_us: us(kv_bytes_per_token as f64 / eff_bw),
        prefill_per_token_us: us(2.0 * params / (flops * gpus * MFU)),
        weights_bytes: weights_bytes as u64,
        kv_bytes_per_token,
        gpu_memory_bytes,
        output_median_tokens: 180.0,
        output_sigma: 0.9,
        default_max_tokens: 1024,
    }
}

fn llama_8b_h100() -> Profile {
    dense(
        "llama-8b-h100",
        "Llama-3.1-8B BF16 on 1x H100 SXM 80GB, vLLM-like",
        "llama-3.1-8b-instruct",
        8.03e9,
        2.0,
        131_072, // 32 layers × 8 KV heads × 128 dims × 2 (K, V) × 2 bytes
        1.0,
        H100_BW,
        H100_FLOPS,
        80 << 30,
        256,
        32_768,
    )
}

impl Profile {
    /// The built-in profiles.
    pub fn builtins() -> Vec<Profile> {
        vec![
            llama_8b_h100(),
            dense(
                "llama-70b-4xh100",
                "Llama-3.1-70B BF16 on 4x H100 SXM 80GB (tensor parallel 4), vLLM-like",
                "llama-3.1-70b-instruct",
                70.6e9,
                2.0,
                327_680, // 80 layers × 8 KV heads × 128 dims × 2 × 2 bytes
                4.0,
                H100_BW,
                H100_FLOPS,
                4 * (80u64 << 30),
                256,
                32_768,
            ),
            dense(
                "small-t4",
                "Llama-3.2-1B FP16 on 1x T4 16GB, vLLM-like",
                "llama-3.2-1b-instruct",
                1.24e9,
                2.0,
                32_768, // 16 layers × 8 KV heads × 64 dims × 2 × 2 bytes
                1.0,
                T4_BW,
                T4_FLOPS,
                16 << 30,
                128,
                8_192,
            ),
            Profile {
                name: "instant".into(),
                description: "zero step time: the engine's bookkeeping only (tests, benchmarks)"
                    .into(),
                step_fixed_us: 0.0,
                per_seq_us: 0.0,
                weights_read_us: 0.0,
                kv_read_per_token_us: 0.0,
                prefill_per_token_us: 0.0,
                max_num_seqs: 1 << 20,
                max_batched_tokens: u32::MAX,
                kv_capacity_tokens: 1 << 40,
                max_queue: 1 << 20,
                ..Self::builtin_base()
            },
        ]
    }

    fn builtin_base() -> Profile {
        Profile {
            model: "sim".into(),
            ..llama_8b_h100()
        }
    }

    /// A built-in profile by name.
    pub fn named(name: &str) -> Option<Profile> {
        Self::builtins().into_iter().find(|p| p.name == name)
    }

    /// Names of the built-in profiles.
    pub fn names() -> Vec<String> {
        Self::builtins().into_iter().map(|p| p.name).collect()
    }

    /// Parses a JSON profile: a full profile, or `{"base": "<built-in>", ...overrides}`.
    pub fn from_json(text: &str) -> Result<Profile, String> {
        let mut value: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
        let Value::Object(obj) = &mut value else {
            return Err("a profile must be a JSON object".into());
        };
        if let Some(base) = obj.remove("base") {
            let name = base.as_str().ok_or("`base` must be a profile name")?;
            let base = Self::named(name).ok_or_else(|| {
                format!(
                    "unknown base profile `{name}` (built-ins: {})",
                    Self::names().join(", ")
                )
            })?;
            let Value::Object(mut merged) =
                serde_json::to_value(base).map_err(|e| e.to_string())?
            else {
                return Err("internal: profile is not an object".into());
            };
            merged.extend(std::mem::take(obj));
            value = Value::Object(merged);
        }
        let profile: Profile = serde_json::from_value(value).map_err(|e| e.to_string())?;
        profile.check()?;
        Ok(profile)
    }

    /// Rejects profiles the engine cannot run.
    pub fn check(&self) -> Result<(), String> {
        if self.max_num_seqs == 0 || self.max_batched_tokens == 0 || self.block_size == 0 {
            return Err("max_num_seqs, max_batched_tokens and block_size must be positive".into());
        }
        if self.kv_capacity_tokens < u64::from(self.block_size) {
            return Err("kv_capacity_tokens must hold at least one block".into());
        }
        let costs = [
            self.step_fixed_us,
            self.per_seq_us,
            self.weights_read_us,
            self.kv_read_per_token_us,
            self.prefill_per_token_us,
            self.output_sigma,
        ];
        if costs.iter().any(|c| !c.is_finite() || *c < 0.0) {
            return Err("step-time parameters must be finite and non-negative".into());
        }
        if self.output_median_tokens.is_nan() || self.output_median_tokens < 1.0 {
            return Err("output_median_tokens must be at least 1".into());
        }
        Ok(())
    }

    /// Duration of one step, µs.
    pub fn step_us(&self, batch: usize, prefill_tokens: u64, kv_tokens: u64) -> f64 {
        if batch == 0 {
            return 0.0;
        }
        let memory = self.weights_read_us + kv_tokens as f64 * self.kv_read_per_token_us;
        let compute = prefill_tokens as f64 * self.prefill_per_token_us;
        self.step_fixed_us + batch as f64 * self.per_seq_us + memory.max(compute)
    }

    /// KV blocks of capacity.
    pub fn kv_blocks(&self) -> u64 {
        self.kv_capacity_tokens / u64::from(self.block_size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtins_are_valid_and_plausible() {
        for p in Profile::builtins() {
            p.check().unwrap();
        }
        let p = Profile::named("llama-8b-h100").unwrap();
        // Decode at batch 1: ~6.2 ms weights + 1.5 ms fixed ≈ 7.7 ms per token (~130 tok/s).
        let itl = p.step_us(1, 0, 1000) / 1000.0;
        assert!((7.0..9.0).contains(&itl), "{itl}");
        // Prefill of 2,048 tokens is compute-bound: ~66 ms.
        let prefill = p.step_us(1, 2048, 2048) / 1000.0;
        assert!((40.0..90.0).contains(&prefill), "{prefill}");
        // ~400k tokens of KV cache.
        assert!(
            (300_000..500_000).contains(&p.kv_capacity_tokens),
            "{}",
            p.kv_capacity_tokens
        );
        assert_eq!(
            Profile::named("instant").unwrap().step_us(100, 1000, 1000),
            0.0
        );
    }

    #[test]
    fn json_profiles_override_a_base() {
        let p = Profile::from_json(r#"{"base": "small-t4", "max_num_seqs": 4, "name": "tiny"}"#)
            .unwrap();
        assert_eq!(
            (p.name.as_str(), p.max_num_seqs, p.model.as_str()),
            ("tiny", 4, "llama-3.2-1b-instruct")
        );
        assert!(
            Profile::from_json(r#"{"base": "nope"}"#)
                .unwrap_err()
                .starts_with("unknown base profile `nope`")
        );
        assert!(Profile::from_json(r#"{"base": "small-t4", "max_num_seqs": 0}"#).is_err());
        assert!(
            Profile::from_json(r#"{"base": "small-t4", "typo": 1}"#)
                .unwrap_err()
                .contains("unknown field `typo`")
        );
    }
}
