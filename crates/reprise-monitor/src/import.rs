//! GPU logs taken where reprise could not sample live, brought into gpu/1:
//!
//! - `nvidia-smi --query-gpu=timestamp,index,uuid,name,utilization.gpu,utilization.memory,
//!   memory.used,memory.total,power.draw,clocks.sm,temperature.gpu --format=csv -l 1`
//!   (columns found by their header, in any order and subset, with or without `nounits`;
//!   `[N/A]` is null). Its timestamps are the GPU host's local clock without a zone:
//!   `clock_offset_ms` (that clock minus UTC on our side) is subtracted.
//! - DCGM-exporter scrapes saved to files (`curl -s host:9400/metrics > dcgm-<unix s>.prom`):
//!   a sample's own timestamp when it has one, else a Unix time in the file name, else the
//!   file's modification time.
//!
//! Every malformed row is an error naming the file and line.

use std::path::Path;

use reprise_trace::{GpuSample, Timestamp};

use crate::MonitorError;
use crate::gpu::from_dcgm;
use crate::prom;

fn bad(path: &Path, line: usize, msg: impl std::fmt::Display) -> MonitorError {
    MonitorError::Input(format!("{}:{line}: {msg}", path.display()))
}

/// `2024/01/15 10:30:00.123` (nvidia-smi) to ns, as if UTC.
fn smi_time(s: &str) -> Option<i64> {
    let (date, time) = s.trim().split_once(' ')?;
    let d: Vec<i64> = date
        .split(['/', '-'])
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let t: Vec<i64> = hms
        .split(':')
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    if d.len() != 3 || t.len() != 3 || !(1..=12).contains(&d[1]) || !(1..=31).contains(&d[2]) {
        return None;
    }
    let frac_ns = format!("{frac:0<9}")[..9].parse::<i64>().ok()?;
    let days = crate::scrape::days_from_civil_pub(d[0], d[1] as u32, d[2] as u32);
    Some((days * 86_400 + t[0] * 3600 + t[1] * 60 + t[2]) * 1_000_000_000 + frac_ns)
}

/// A number with an optional unit (`87 %`, `70000 MiB`, `350.12 W`), or null for `[N/A]`.
fn number(s: &str) -> Result<Option<f64>, String> {
    let s = s.trim();
    if s.is_empty() || s.starts_with('[') || s.eq_ignore_ascii_case("n/a") {
        return Ok(None);
    }
    let n = s.split_ascii_whitespace().next().unwrap_or(s);
    n.parse::<f64>()
        .map(Some)
        .map_err(|_| format!("not a number: {s:?}"))
}

/// Reads an nvidia-smi CSV log.
pub fn nvidia_smi(
    path: &Path,
    host: &str,
    clock_offset_ms: f64,
) -> Result<Vec<GpuSample>, MonitorError> {
    let text = std::fs::read_to_string(path).map_err(|source| MonitorError::Io {
        path: path.to_owned(),
        source,
    })?;
    let mut lines = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty());
    let Some((_, header)) = lines.next() else {
        return Err(MonitorError::Input(format!(
            "{}: empty file",
            path.display()
        )));
    };
    let cols: Vec<String> = header
        .split(',')
        .map(|c| c.trim().split(' ').next().unwrap_or("").to_owned())
        .collect();
    let find = |name: &str| cols.iter().position(|c| c == name);
    let Some(ts_col) = find("timestamp") else {
        return Err(bad(
            path,
            1,
            "no timestamp column (query it with --query-gpu=timestamp,...)",
        ));
    };
    let idx_col = find("index");
    let mut out = Vec::new();
    for (i, line) in lines {
        let n = i + 1;
        let f: Vec<&str> = line.split(',').map(str::trim).collect();
        if f.first().is_some_and(|x| *x == cols[0]) {
            continue; // a repeated header
        }
        if f.len() != cols.len() {
            return Err(bad(
                path,
                n,
                format!("{} fields, the header has {}", f.len(), cols.len()),
            ));
        }
        let time = smi_time(f[ts_col])
            .ok_or_else(|| bad(path, n, format!("bad timestamp {:?}", f[ts_col])))?
            - (clock_offset_ms * 1e6) as i64;
        let num = |name: &str| -> Result<Option<f64>, MonitorError> {
            match find(name) {
                Some(c) => number(f[c]).map_err(|m| bad(path, n, format!("{name}: {m}"))),
                None => Ok(None),
            }
        };
        let text_col = |name: &str| {
            find(name)
                .map(|c| f[c].to_owned())
                .filter(|s| !s.starts_with('['))
        };
        let mib = |v: Option<f64>| v.map(|x| (x * 1048576.0) as u64);
        out.push(GpuSample {
            time: Timestamp(time),
            host: host.to_owned(),
            gpu: match idx_col {
                Some(c) => f[c]
                    .parse()
                    .map_err(|_| bad(path, n, format!("bad index {:?}", f[c])))?,
                None => 0,
            },
            uuid: text_col("uuid"),
            name: text_col("name"),
            util_pct: num("utilization.gpu")?,
            mem_util_pct: num("utilization.memory")?,
            mem_used_bytes: mib(num("memory.used")?),
            mem_total_bytes: mib(num("memory.total")?),
            power_w: num("power.draw")?,
            sm_clock_mhz: num("clocks.sm")?.map(|x| x as u32),
            temp_c: num("temperature.gpu")?,
        });
    }
    Ok(out)
}

/// Reads saved DCGM-exporter scrapes (one exposition per file).
pub fn dcgm_file(path: &Path, host: &str) -> Result<Vec<GpuSample>, MonitorError> {
    let text = std::fs::read_to_string(path).map_err(|source| MonitorError::Io {
        path: path.to_owned(),
        source,
    })?;
    let samples = prom::parse(&text).map_err(|e| bad(path, e.line, e.message))?;
    let from_name = path
        .file_stem()
        .and_then(|s| s.to_str())
        .and_then(|s| {
            s.split(|c: char| !c.is_ascii_digit())
                .find(|d| d.len() >= 9 && d.len() <= 10)
                .and_then(|d| d.parse::<i64>().ok())
        })
        .map(|s| s * 1_000_000_000);
    let from_mtime = || {
        std::fs::metadata(path)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_nanos() as i64)
    };
    // Samples with their own timestamps are grouped by it; the rest share the file's time.
    let mut by_time: std::collections::BTreeMap<i64, Vec<prom::Sample>> = Default::default();
    let default_time = from_name.or_else(from_mtime).unwrap_or(0);
    for s in samples {
        let t = s.timestamp_ms.map_or(default_time, |ms| ms * 1_000_000);
        by_time.entry(t).or_default().push(s);
    }
    Ok(by_time
        .into_iter()
        .flat_map(|(t, s)| from_dcgm(&s, Timestamp(t), host))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nvidia_smi_csv_with_and_without_units() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("smi.csv");
        std::fs::write(
            &p,
            "timestamp, index, name, utilization.gpu [%], memory.used [MiB], memory.total [MiB], power.draw [W], clocks.sm [MHz], temperature.gpu\n\
             2024/01/15 10:30:00.500, 0, NVIDIA H100 80GB HBM3, 87 %, 1024 MiB, 81559 MiB, 350.12 W, 1980 MHz, 65\n\
             2024/01/15 10:30:00.500, 1, NVIDIA H100 80GB HBM3, [N/A], 2048 MiB, 81559 MiB, [N/A], 1980 MHz, 40\n\
             \n\
             2024/01/15 10:30:01.500, 0, NVIDIA H100 80GB HBM3, 90, 1024, 81559, 351, 1980, 66\n",
        )
        .unwrap();
        let rows = nvidia_smi(&p, "gpu-host", 1000.0).unwrap();
        assert_eq!(rows.len(), 3);
        // 2024-01-15T10:30:00.5Z is 1705314600.5 s; the host's clock was 1 s ahead.
        assert_eq!(rows[0].time, Timestamp(1_705_314_599_500_000_000));
        assert_eq!(
            (rows[0].gpu, rows[0].util_pct, rows[0].temp_c),
            (0, Some(87.0), Some(65.0))
        );
        assert_eq!(rows[0].mem_used_bytes, Some(1024 << 20));
        assert_eq!(
            (rows[0].power_w, rows[0].sm_clock_mhz),
            (Some(350.12), Some(1980))
        );
        assert_eq!(rows[0].name.as_deref(), Some("NVIDIA H100 80GB HBM3"));
        assert_eq!(
            (rows[1].gpu, rows[1].util_pct, rows[1].power_w),
            (1, None, None)
        );
        assert_eq!(rows[2].util_pct, Some(90.0));
    }

    #[test]
    fn nvidia_smi_errors_name_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("smi.csv");
        for (text, needle) in [
            ("", "empty file"),
            ("index, utilization.gpu\n0, 5\n", ":1: no timestamp"),
            (
                "timestamp, utilization.gpu\n2024/01/15 10:30:00, 5, 6\n",
                ":2: 3 fields",
            ),
            (
                "timestamp, utilization.gpu\n2024/13/15 10:30:00, 5\n",
                ":2: bad timestamp",
            ),
            (
                "timestamp, utilization.gpu\n2024/01/15 10:30:00, lots\n",
                ":2: utilization.gpu: not a number",
            ),
        ] {
            std::fs::write(&p, text).unwrap();
            let e = nvidia_smi(&p, "h", 0.0).unwrap_err().to_string();
            assert!(e.contains("smi.csv") && e.contains(needle), "{e}");
        }
    }

    #[test]
    fn dcgm_files_take_their_time_from_samples_or_name() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("dcgm-1700000000.prom");
        std::fs::write(&p, "DCGM_FI_DEV_GPU_UTIL{gpu=\"0\",Hostname=\"n\"} 55\n").unwrap();
        let rows = dcgm_file(&p, "h").unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(
            (rows[0].time, rows[0].util_pct),
            (Timestamp(1_700_000_000_000_000_000), Some(55.0))
        );
        std::fs::write(
            &p,
            "DCGM_FI_DEV_GPU_UTIL{gpu=\"0\"} 10 1700000001000\nDCGM_FI_DEV_GPU_UTIL{gpu=\"0\"} 20 1700000002000\n",
        )
        .unwrap();
        let rows = dcgm_file(&p, "h").unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(
            (rows[1].time.0, rows[1].util_pct, rows[1].host.as_str()),
            (1_700_000_002_000_000_000, Some(20.0), "h")
        );
        std::fs::write(&p, "DCGM_FI_DEV_GPU_UTIL{gpu=\"0\" 10\n").unwrap();
        let e = dcgm_file(&p, "h").unwrap_err().to_string();
        assert!(e.contains("dcgm-1700000000.prom:1:"), "{e}");
    }
}
