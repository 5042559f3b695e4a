//! What to sample, as `reprise replay` and `reprise monitor` are told it ([`Sampling`]),
//! resolved into a [`MonitorConfig`] once the targets are known.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use crate::{MonitorConfig, MonitorError};

/// Monitoring options, as given.
#[derive(Debug, Clone, PartialEq)]
pub struct Sampling {
    /// Sample GPUs through NVML.
    pub gpu: bool,
    /// Sample this host.
    pub host: bool,
    /// Endpoints to scrape (`target`: every target's `/metrics`).
    pub scrape: Vec<String>,
    /// Interval, ms.
    pub interval_ms: u64,
    /// Time limit of one scrape, ms.
    pub scrape_timeout_ms: u64,
    /// Known clock offsets, `URL=MS` (the scraped host's clock minus ours).
    pub clock_offset: Vec<String>,
}

impl Sampling {
    /// The monitor configuration writing into `out_dir`, or `None` when nothing is to be
    /// sampled; `targets` (base URLs) stand for `target` in the scrape list.
    pub fn config(
        &self,
        out_dir: &Path,
        targets: &[String],
    ) -> Result<Option<MonitorConfig>, MonitorError> {
        if !self.gpu && !self.host && self.scrape.is_empty() {
            return Ok(None);
        }
        if self.interval_ms == 0 {
            return Err(MonitorError::Other(
                "the monitoring interval must be at least 1 ms".into(),
            ));
        }
        let mut scrape = Vec::new();
        for u in &self.scrape {
            if u == "target" {
                scrape.extend(
                    targets
                        .iter()
                        .map(|t| format!("{}/metrics", t.trim_end_matches('/'))),
                );
            } else if u.starts_with("http://") || u.starts_with("https://") {
                scrape.push(u.clone());
            } else {
                return Err(MonitorError::Setting {
                    setting: "scrape",
                    message: format!("`{u}`: expected http(s)://host:port/path or `target`"),
                });
            }
        }
        let mut offsets = BTreeMap::new();
        for o in &self.clock_offset {
            let (url, ms) = o.rsplit_once('=').ok_or_else(|| MonitorError::Setting {
                setting: "clock-offset",
                message: format!("`{o}`: expected URL=MS"),
            })?;
            let ms: f64 = ms.parse().map_err(|_| MonitorError::Setting {
                setting: "clock-offset",
                message: format!("`{o}`: `{ms}` is not a number of ms"),
            })?;
            offsets.insert(url.to_owned(), ms);
        }
        let mut cfg = MonitorConfig::new(out_dir);
        cfg.gpu = self.gpu;
        cfg.host = self.host;
        cfg.scrape = scrape;
        cfg.interval = Duration::from_millis(self.interval_ms);
        cfg.scrape_timeout = Duration::from_millis(self.scrape_timeout_ms.max(1));
        cfg.clock_offsets_ms = offsets;
        Ok(Some(cfg))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sampling() -> Sampling {
        Sampling {
            gpu: false,
            host: false,
            scrape: vec!["target".into(), "http://gpu:9400/metrics".into()],
            interval_ms: 250,
            scrape_timeout_ms: 0,
            clock_offset: vec!["http://gpu:9400/metrics=-12.5".into()],
        }
    }

    #[test]
    fn target_stands_for_every_targets_metrics() {
        let c = sampling()
            .config(
                Path::new("/tmp/m"),
                &["http://a:1/".into(), "http://b:2".into()],
            )
            .unwrap()
            .unwrap();
        assert_eq!(
            c.scrape,
            [
                "http://a:1/metrics",
                "http://b:2/metrics",
                "http://gpu:9400/metrics"
            ]
        );
        assert_eq!(c.interval, Duration::from_millis(250));
        assert_eq!(c.scrape_timeout, Duration::from_millis(1));
        assert_eq!(c.clock_offsets_ms["http://gpu:9400/metrics"], -12.5);
    }

    #[test]
    fn nothing_to_sample_and_bad_values() {
        let none = Sampling {
            scrape: Vec::new(),
            ..sampling()
        };
        assert!(none.config(Path::new("/tmp"), &[]).unwrap().is_none());
        let bad = Sampling {
            scrape: vec!["gpu:9400".into()],
            ..sampling()
        };
        let e = bad.config(Path::new("/tmp"), &[]).unwrap_err().to_string();
        assert_eq!(
            e,
            "scrape `gpu:9400`: expected http(s)://host:port/path or `target`"
        );
        let zero = Sampling {
            interval_ms: 0,
            ..sampling()
        };
        assert!(zero.config(Path::new("/tmp"), &[]).is_err());
        let offset = Sampling {
            clock_offset: vec!["http://x=abc".into()],
            ..sampling()
        };
        assert!(offset.config(Path::new("/tmp"), &[]).is_err());
    }
}
