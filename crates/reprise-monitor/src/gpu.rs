//! GPU samples: live through NVML (`nvml-wrapper`, which loads `libnvidia-ml.so.1` at run
//! time: no GPU, no driver or no library is a one-line reason, never a crash), and from
//! DCGM-exporter's Prometheus names (live scrapes and saved files).

use std::collections::BTreeMap;

use nvml_wrapper::Nvml;
use nvml_wrapper::enum_wrappers::device::{Clock, TemperatureSensor};
use reprise_trace::{GpuSample, Timestamp};

use crate::prom::Sample;

/// Live GPU sampling through NVML.
pub struct NvmlSampler {
    nvml: Nvml,
    host: String,
    count: u32,
}

impl std::fmt::Debug for NvmlSampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NvmlSampler")
            .field("host", &self.host)
            .field("count", &self.count)
            .finish()
    }
}

impl NvmlSampler {
    /// Opens NVML; the error is why GPUs cannot be sampled here, in one line.
    pub fn open(host: &str) -> Result<Self, String> {
        let nvml = Nvml::init().map_err(|e| format!("NVML unavailable ({e})"))?;
        let count = nvml
            .device_count()
            .map_err(|e| format!("NVML: cannot count GPUs ({e})"))?;
        if count == 0 {
            return Err("NVML: no GPU on this host".into());
        }
        Ok(NvmlSampler {
            nvml,
            host: host.to_owned(),
            count,
        })
    }

    /// GPUs seen.
    pub fn gpus(&self) -> u32 {
        self.count
    }

    /// One sample of every GPU; fields NVML refuses are null.
    pub fn sample(&self, time: Timestamp) -> Vec<GpuSample> {
        (0..self.count)
            .filter_map(|i| {
                let d = self.nvml.device_by_index(i).ok()?;
                let util = d.utilization_rates().ok();
                let mem = d.memory_info().ok();
                Some(GpuSample {
                    time,
                    host: self.host.clone(),
                    gpu: i,
                    uuid: d.uuid().ok(),
                    name: d.name().ok(),
                    util_pct: util.as_ref().map(|u| u.gpu as f64),
                    mem_util_pct: util.as_ref().map(|u| u.memory as f64),
                    mem_used_bytes: mem.as_ref().map(|m| m.used),
                    mem_total_bytes: mem.as_ref().map(|m| m.total),
                    power_w: d.power_usage().ok().map(|mw| mw as f64 / 1000.0),
                    sm_clock_mhz: d.clock_info(Clock::SM).ok(),
                    temp_c: d.temperature(TemperatureSensor::Gpu).ok().map(f64::from),
                })
            })
            .collect()
    }
}

/// DCGM-exporter's names for the gpu/1 fields.
pub const DCGM_FIELDS: [&str; 8] = [
    "DCGM_FI_DEV_GPU_UTIL",
    "DCGM_FI_DEV_MEM_COPY_UTIL",
    "DCGM_FI_DEV_FB_USED",
    "DCGM_FI_DEV_FB_FREE",
    "DCGM_FI_DEV_FB_TOTAL",
    "DCGM_FI_DEV_POWER_USAGE",
    "DCGM_FI_DEV_SM_CLOCK",
    "DCGM_FI_DEV_GPU_TEMP",
];

/// The GPUs described by DCGM-exporter samples of one scrape taken at `time` (one row per
/// `Hostname`/`gpu` label pair; `host` when the samples have no `Hostname`). Frame-buffer
/// figures are MiB in DCGM and bytes in gpu/1.
pub fn from_dcgm(samples: &[Sample], time: Timestamp, host: &str) -> Vec<GpuSample> {
    let mut gpus: BTreeMap<(String, u32), GpuSample> = BTreeMap::new();
    let mut free: BTreeMap<(String, u32), u64> = BTreeMap::new();
    for s in samples {
        if !DCGM_FIELDS.contains(&s.name.as_str()) || !s.value.is_finite() {
            continue;
        }
        let Some(index) = s.label("gpu").and_then(|g| g.parse::<u32>().ok()) else {
            continue;
        };
        let h = s.label("Hostname").unwrap_or(host).to_owned();
        let key = (h.clone(), index);
        let g = gpus.entry(key.clone()).or_insert_with(|| GpuSample {
            time,
            host: h,
            gpu: index,
            uuid: None,
            name: None,
            util_pct: None,
            mem_util_pct: None,
            mem_used_bytes: None,
            mem_total_bytes: None,
            power_w: None,
            sm_clock_mhz: None,
            temp_c: None,
        });
        if g.uuid.is_none() {
            g.uuid = s.label("UUID").map(str::to_owned);
        }
        if g.name.is_none() {
            g.name = s.label("modelName").map(str::to_owned);
        }
        let mib = |v: f64| (v.max(0.0) * 1048576.0) as u64;
        match s.name.as_str() {
            "DCGM_FI_DEV_GPU_UTIL" => g.util_pct = Some(s.value),
            "DCGM_FI_DEV_MEM_COPY_UTIL" => g.mem_util_pct = Some(s.value),
            "DCGM_FI_DEV_FB_USED" => g.mem_used_bytes = Some(mib(s.value)),
            "DCGM_FI_DEV_FB_FREE" => {
                free.insert(key, mib(s.value));
            }
            "DCGM_FI_DEV_FB_TOTAL" => g.mem_total_bytes = Some(mib(s.value)),
            "DCGM_FI_DEV_POWER_USAGE" => g.power_w = Some(s.value),
            "DCGM_FI_DEV_SM_CLOCK" => g.sm_clock_mhz = Some(s.value.max(0.0) as u32),
            "DCGM_FI_DEV_GPU_TEMP" => g.temp_c = Some(s.value),
            _ => {}
        }
    }
    for (key, f) in free {
        if let Some(g) = gpus.get_mut(&key)
            && g.mem_total_bytes.is_none()
        {
            // Both halves saturate at u64::MAX bytes (`mib`); so does their sum.
            g.mem_total_bytes = g.mem_used_bytes.map(|u| u.saturating_add(f));
        }
    }
    gpus.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prom::parse;

    #[test]
    fn dcgm_samples_become_gpu_rows() {
        let text = r#"DCGM_FI_DEV_GPU_UTIL{gpu="0",UUID="GPU-a",modelName="H100",Hostname="n1"} 87
DCGM_FI_DEV_GPU_UTIL{gpu="1",UUID="GPU-b",modelName="H100",Hostname="n1"} 12
DCGM_FI_DEV_FB_USED{gpu="0",Hostname="n1"} 1024
DCGM_FI_DEV_FB_FREE{gpu="0",Hostname="n1"} 3072
DCGM_FI_DEV_POWER_USAGE{gpu="0",Hostname="n1"} 350.5
DCGM_FI_DEV_SM_CLOCK{gpu="0",Hostname="n1"} 1980
DCGM_FI_DEV_GPU_TEMP{gpu="0",Hostname="n1"} 61
vllm:num_requests_waiting 3
DCGM_FI_DEV_GPU_UTIL{UUID="no-index"} 50
"#;
        let rows = from_dcgm(&parse(text).unwrap(), Timestamp(5), "fallback");
        assert_eq!(rows.len(), 2);
        let g0 = &rows[0];
        assert_eq!((g0.host.as_str(), g0.gpu, g0.time), ("n1", 0, Timestamp(5)));
        assert_eq!(g0.uuid.as_deref(), Some("GPU-a"));
        assert_eq!(g0.name.as_deref(), Some("H100"));
        assert_eq!(g0.util_pct, Some(87.0));
        assert_eq!(g0.mem_used_bytes, Some(1024 << 20));
        assert_eq!(g0.mem_total_bytes, Some(4096 << 20));
        assert_eq!(
            (g0.power_w, g0.sm_clock_mhz, g0.temp_c),
            (Some(350.5), Some(1980), Some(61.0))
        );
        assert_eq!(
            (rows[1].gpu, rows[1].util_pct, rows[1].mem_used_bytes),
            (1, Some(12.0), None)
        );
    }

    #[test]
    fn absurd_memory_figures_saturate_instead_of_overflowing() {
        // Found by fuzzing: used + free past u64::MAX bytes overflowed the total.
        let text = "DCGM_FI_DEV_FB_USED{gpu=\"0\"} 1e300\nDCGM_FI_DEV_FB_FREE{gpu=\"0\"} 1e300\n\
                    DCGM_FI_DEV_FB_USED{gpu=\"1\"} -5\nDCGM_FI_DEV_FB_FREE{gpu=\"1\"} 2\n";
        let rows = from_dcgm(&parse(text).unwrap(), Timestamp(0), "h");
        assert_eq!(rows[0].mem_used_bytes, Some(u64::MAX));
        assert_eq!(rows[0].mem_total_bytes, Some(u64::MAX));
        assert_eq!(rows[1].mem_used_bytes, Some(0));
        assert_eq!(rows[1].mem_total_bytes, Some(2 << 20));
    }

    #[test]
    fn no_gpu_here_is_a_one_line_reason() {
        // This machine has no NVIDIA driver: NVML must say so, not crash or hang.
        match NvmlSampler::open("h") {
            Ok(s) => assert!(s.gpus() > 0),
            Err(why) => {
                assert!(why.starts_with("NVML"), "{why}");
                assert!(!why.contains('\n'));
            }
        }
    }
}
