//! The load generator's own host, from `/proc`: CPU utilisation (all cores, from the
//! change in `/proc/stat` since the last sample), memory used and total, network bytes per
//! interface (raw counters), and this process's CPU seconds and resident memory — so a
//! saturated client shows up beside the server's figures. Written as server/1 rows with
//! `source = "host"`.

use std::collections::BTreeMap;

/// CPU time counters of `/proc/stat`'s first line, in ticks.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct CpuTimes {
    busy: u64,
    total: u64,
}

fn cpu_times(stat: &str) -> Option<CpuTimes> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_ascii_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    if v.len() < 4 {
        return None;
    }
    // user nice system idle iowait irq softirq steal (guest time is inside user).
    let idle = v[3] + v.get(4).copied().unwrap_or(0);
    let total: u64 = v.iter().take(8).sum();
    Some(CpuTimes {
        busy: total - idle,
        total,
    })
}

fn meminfo_kib(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find(|l| l.starts_with(key) && l[key.len()..].starts_with(':'))?
        .split_ascii_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Receive and transmit byte counters per interface, from `/proc/net/dev`.
fn net_bytes(text: &str) -> BTreeMap<String, (u64, u64)> {
    text.lines()
        .skip(2)
        .filter_map(|l| {
            let (dev, rest) = l.split_once(':')?;
            let v: Vec<u64> = rest
                .split_ascii_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect();
            Some((dev.trim().to_owned(), (*v.first()?, *v.get(8)?)))
        })
        .collect()
}

/// This process's user + system CPU ticks, from `/proc/self/stat`.
fn process_ticks(stat: &str) -> Option<u64> {
    // The command name (field 2) may hold spaces; fields after its closing paren.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let f: Vec<&str> = rest.split_ascii_whitespace().collect();
    // utime and stime are fields 14 and 15 overall: 11 and 12 after the state (field 3).
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// One metric reading of the host.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    /// Metric name.
    pub metric: &'static str,
    /// Labels (JSON object).
    pub labels: String,
    /// Value.
    pub value: f64,
}

/// Samples the host; keeps the previous CPU counters for utilisation.
#[derive(Debug, Default)]
pub struct HostSampler {
    last_cpu: Option<CpuTimes>,
    ticks_per_s: f64,
}

impl HostSampler {
    /// A sampler (the first sample has no CPU utilisation yet).
    pub fn new() -> Self {
        HostSampler {
            last_cpu: None,
            ticks_per_s: rustix::param::clock_ticks_per_second() as f64,
        }
    }

    /// Reads `/proc` now. Missing files (not Linux) give no readings, never an error.
    pub fn sample(&mut self) -> Vec<Reading> {
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        self.sample_from(
            &read("/proc/stat"),
            &read("/proc/meminfo"),
            &read("/proc/net/dev"),
            &read("/proc/self/stat"),
            &read("/proc/self/status"),
        )
    }

    fn sample_from(
        &mut self,
        stat: &str,
        meminfo: &str,
        netdev: &str,
        self_stat: &str,
        self_status: &str,
    ) -> Vec<Reading> {
        let mut out = Vec::new();
        let plain = |metric, value| Reading {
            metric,
            labels: "{}".into(),
            value,
        };
        if let Some(now) = cpu_times(stat) {
            if let Some(prev) = self.last_cpu {
                let total = now.total.saturating_sub(prev.total);
                if total > 0 {
                    let busy = now.busy.saturating_sub(prev.busy);
                    out.push(plain(
                        "host_cpu_util_pct",
                        busy as f64 / total as f64 * 100.0,
                    ));
                }
            }
            self.last_cpu = Some(now);
        }
        if let (Some(total), Some(avail)) = (
            meminfo_kib(meminfo, "MemTotal"),
            meminfo_kib(meminfo, "MemAvailable"),
        ) {
            out.push(plain("host_memory_total_bytes", (total * 1024) as f64));
            out.push(plain(
                "host_memory_used_bytes",
                (total.saturating_sub(avail) * 1024) as f64,
            ));
        }
        for (dev, (rx, tx)) in net_bytes(netdev) {
            let labels = serde_json::json!({ "device": dev }).to_string();
            out.push(Reading {
                metric: "host_network_receive_bytes_total",
                labels: labels.clone(),
                value: rx as f64,
            });
            out.push(Reading {
                metric: "host_network_transmit_bytes_total",
                labels,
                value: tx as f64,
            });
        }
        if let Some(t) = process_ticks(self_stat)
            && self.ticks_per_s > 0.0
        {
            out.push(plain(
                "process_cpu_seconds_total",
                t as f64 / self.ticks_per_s,
            ));
        }
        if let Some(rss) = meminfo_kib(self_status, "VmRSS") {
            out.push(plain("process_resident_memory_bytes", (rss * 1024) as f64));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NETDEV: &str = "Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo: 1000      10    0    0    0     0          0         0     2000      20    0    0    0     0       0          0
  eth0: 5000      50    0    0    0     0          0         0     7000      70    0    0    0     0       0          0
";

    #[test]
    fn readings_from_proc_text() {
        let mut h = HostSampler {
            last_cpu: None,
            ticks_per_s: 100.0,
        };
        let meminfo = "MemTotal:       1000 kB\nMemFree:  100 kB\nMemAvailable:    400 kB\n";
        let self_stat = "42 (my (odd) name) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 1 0";
        let status = "Name: x\nVmRSS:\t  2048 kB\n";
        let first = h.sample_from(
            "cpu  100 0 100 800 0 0 0 0 0 0\ncpu0 1 2 3 4\n",
            meminfo,
            NETDEV,
            self_stat,
            status,
        );
        assert!(first.iter().all(|r| r.metric != "host_cpu_util_pct"));
        let get = |rs: &[Reading], m: &str, l: &str| {
            rs.iter()
                .find(|r| r.metric == m && r.labels.contains(l))
                .map(|r| r.value)
        };
        assert_eq!(
            get(&first, "host_memory_used_bytes", ""),
            Some(600.0 * 1024.0)
        );
        assert_eq!(
            get(&first, "host_network_receive_bytes_total", "eth0"),
            Some(5000.0)
        );
        assert_eq!(
            get(&first, "host_network_transmit_bytes_total", "lo"),
            Some(2000.0)
        );
        assert_eq!(get(&first, "process_cpu_seconds_total", ""), Some(3.0));
        assert_eq!(
            get(&first, "process_resident_memory_bytes", ""),
            Some(2048.0 * 1024.0)
        );
        // 300 more busy ticks of 400: 75%.
        let second = h.sample_from(
            "cpu  250 0 250 900 0 0 0 0 0 0\n",
            meminfo,
            NETDEV,
            self_stat,
            status,
        );
        assert_eq!(get(&second, "host_cpu_util_pct", ""), Some(75.0));
    }

    #[test]
    fn garbage_gives_no_readings_and_no_panic() {
        let mut h = HostSampler::new();
        assert!(h.sample_from("", "", "x\ny\nz", ")", "").is_empty());
        assert!(
            h.sample_from("cpu a b", "MemTotal: x", "", "1 (a)", "VmRSS")
                .is_empty()
        );
    }

    #[test]
    fn this_machine_has_readings() {
        let mut h = HostSampler::new();
        h.sample();
        std::thread::sleep(std::time::Duration::from_millis(30));
        let r = h.sample();
        assert!(r.iter().any(|r| r.metric == "host_cpu_util_pct"));
        assert!(
            r.iter()
                .any(|r| r.metric == "process_resident_memory_bytes" && r.value > 0.0)
        );
    }
}
