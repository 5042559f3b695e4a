//! The knee of a ramp and the diagnosis of its bottleneck, in the terms of load-testing practice.
//!
//! Steps are taken in order of load (concurrency or rate). The **saturation step** is the
//! first whose throughput grew by less than [`Rules::min_gain`] over the step before while
//! its P99 (TTFT, else E2E) rose by at least [`Rules::p99_rise`] — or whose error rate
//! crossed [`Rules::max_error_rate`]. The **knee** is the step before it: the most load the
//! target took with throughput still growing. The diagnosis then looks at the evidence from
//! the knee on: which errors rose, whether the client's own queue grew (it could not keep
//! up, so the figures are the client's), whether time to first token grew much faster than
//! time per output token (requests waiting for a batch slot: the server queues), the
//! server's own waiting count and the GPU's utilisation where they were recorded.

use serde::Serialize;

use crate::correlate::Correlation;
use crate::side::StepSide;

use crate::metrics::Stats;

/// Thresholds of the knee search.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Rules {
    /// Throughput gain (fraction) under which a step has stopped growing.
    pub min_gain: f64,
    /// P99 ratio at or over which latency has jumped.
    pub p99_rise: f64,
    /// Error rate at or over which a step is broken.
    pub max_error_rate: f64,
    /// Client queue p99 (ms) over which the client could not keep up.
    pub queue_limit_ms: f64,
}

impl Default for Rules {
    fn default() -> Self {
        Rules {
            min_gain: 0.10,
            p99_rise: 1.5,
            max_error_rate: 0.05,
            queue_limit_ms: 1.0,
        }
    }
}

/// What the search found.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Knee {
    /// Index (in load order) of the knee step: the last one still scaling.
    pub knee: usize,
    /// Index of the saturation step.
    pub saturated: usize,
    /// The knee's load (concurrency or rate).
    pub knee_value: f64,
    /// The saturation step's load.
    pub saturated_value: f64,
    /// Why the saturation step counts as saturated.
    pub trigger: String,
    /// The causes found, most telling first, each with its numbers.
    pub causes: Vec<Cause>,
    /// One paragraph, like a load-test report's conclusion.
    pub conclusion: String,
    /// What to try, from the causes.
    pub advice: Vec<String>,
}

/// One cause of the bottleneck with its evidence.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Cause {
    /// `errors`, `client`, `client_cpu`, `server_queue`, `gpu_saturated`, `gpu_not_saturated`,
    /// `kv_cache`.
    pub kind: String,
    /// The evidence, in words and numbers.
    pub evidence: String,
}

fn p99_latency(s: &Stats) -> Option<(f64, &'static str)> {
    s.p("ttft", "p99")
        .map(|v| (v, "TTFT"))
        .or_else(|| s.p("e2e", "p99").map(|v| (v, "E2E")))
}

fn pct(x: f64) -> String {
    format!("{:.1}%", x * 100.0)
}

/// Finds the knee of `steps` (in load order) and diagnoses it; `None` without at least
/// two steps or without saturation.
pub fn find(steps: &[Stats], side: &[StepSide], rules: &Rules, unit: &str) -> Option<Knee> {
    find_with(steps, side, rules, unit, None)
}

/// [`find`], with the time correlations of GPU and server series as further evidence.
pub fn find_with(
    steps: &[Stats],
    side: &[StepSide],
    rules: &Rules,
    unit: &str,
    corr: Option<&Correlation>,
) -> Option<Knee> {
    let together = |x: &str, y: &str, what: &str| -> String {
        match corr.and_then(|c| c.get(x, y)) {
            Some(c) if c.pearson >= 0.5 => format!(
                "; {what} move together over time (Pearson r = {:.2}, Spearman {:.2}, {} bins of {} s{})",
                c.pearson,
                c.spearman,
                c.n,
                corr.map_or(0.0, |c| c.bin_s),
                if c.best_lag_s != 0.0 && c.best_lag_r > c.pearson + 0.05 {
                    format!(
                        "; strongest at a lag of {:+} s, r = {:.2}",
                        c.best_lag_s, c.best_lag_r
                    )
                } else {
                    String::new()
                }
            ),
            _ => String::new(),
        }
    };
    if steps.len() < 2 {
        return None;
    }
    let value = |i: usize| steps[i].step_value.unwrap_or(i as f64);
    let mut found = None;
    for i in 1..steps.len() {
        let (a, b) = (&steps[i - 1], &steps[i]);
        if b.error_rate >= rules.max_error_rate && a.error_rate < rules.max_error_rate {
            found = Some((
                i,
                format!(
                    "error rate {} at {unit} {} (was {} at {})",
                    pct(b.error_rate),
                    value(i),
                    pct(a.error_rate),
                    value(i - 1)
                ),
            ));
            break;
        }
        let gain = if a.request_throughput > 0.0 {
            b.request_throughput / a.request_throughput - 1.0
        } else {
            f64::INFINITY
        };
        if let (Some((pa, name)), Some((pb, _))) = (p99_latency(a), p99_latency(b))
            && gain < rules.min_gain
            && pa > 0.0
            && pb / pa >= rules.p99_rise
        {
            found = Some((
                i,
                format!(
                    "throughput {:.1} → {:.1} req/s ({:+.0}%) while P99 {name} rose {:.0} → {:.0} ms (x{:.1}) from {unit} {} to {}",
                    a.request_throughput,
                    b.request_throughput,
                    gain * 100.0,
                    pa,
                    pb,
                    pb / pa,
                    value(i - 1),
                    value(i)
                ),
            ));
            break;
        }
    }
    let (sat, trigger) = found?;
    let knee = sat - 1;
    let (k, s) = (&steps[knee], &steps[sat]);
    let last = &steps[steps.len() - 1];
    let mut causes = Vec::new();

    // Errors.
    let worst = steps[sat..]
        .iter()
        .max_by(|a, b| a.error_rate.total_cmp(&b.error_rate))
        .unwrap_or(s);
    if worst.error_rate > 0.0 {
        let mut kinds: Vec<(&String, &u64)> = worst.errors.iter().collect();
        kinds.sort_by(|a, b| b.1.cmp(a.1));
        let list: Vec<String> = kinds
            .iter()
            .take(3)
            .map(|(k, n)| format!("{k} {}", pct(**n as f64 / worst.requests.max(1) as f64)))
            .collect();
        causes.push(Cause {
            kind: "errors".into(),
            evidence: format!(
                "error rate rises to {} at {unit} {} ({}), from {} at the knee",
                pct(worst.error_rate),
                worst.step_value.unwrap_or(0.0),
                list.join(", "),
                pct(k.error_rate)
            ),
        });
    }
    // The client.
    if let Some(q) = steps[knee..]
        .iter()
        .filter_map(|st| st.p("queue", "p99").map(|q| (q, st)))
        .max_by(|a, b| a.0.total_cmp(&b.0))
        && q.0 > rules.queue_limit_ms
    {
        causes.push(Cause {
            kind: "client".into(),
            evidence: format!(
                "the client could not keep up: its queue p99 reached {:.1} ms at {unit} {} (limit {} ms); latencies from `scheduled` include that wait",
                q.0,
                q.1.step_value.unwrap_or(0.0),
                rules.queue_limit_ms
            ),
        });
    }
    // Queueing at the server: TTFT grows far faster than TPOT.
    if let (Some(t0), Some(t1)) = (k.p("ttft", "p99"), last.p("ttft", "p99")) {
        let tpot = match (k.p("tpot", "p99"), last.p("tpot", "p99")) {
            (Some(a), Some(b)) if a > 0.0 => Some(b / a),
            _ => None,
        };
        let ttft_x = if t0 > 0.0 { t1 / t0 } else { 1.0 };
        let queue = match (side.get(knee), side.last()) {
            (Some(a), Some(b)) => a.server_waiting.zip(b.server_waiting),
            _ => None,
        };
        // Where the server says how many requests wait, a queue that keeps growing past
        // the knee is evidence enough (the knee step may already hold part of the jump).
        let queue_grows = queue.is_some_and(|(wa, wb)| wb >= 1.0 && wb >= 1.5 * wa.max(0.5));
        if (ttft_x >= 2.0 && tpot.is_none_or(|x| ttft_x >= 2.0 * x))
            || (queue_grows && ttft_x >= 1.3)
        {
            let waiting = queue.map_or(String::new(), |(wa, wb)| {
                format!("; the server's waiting requests {wa:.1} → {wb:.1} on average")
            });
            causes.push(Cause {
                kind: "server_queue".into(),
                evidence: format!(
                    "latency jumps with queue build-up at the server: P99 TTFT x{ttft_x:.1} from {unit} {} to {}{} — requests wait for a batch slot before prefill{waiting}{}",
                    value(knee),
                    last.step_value.unwrap_or(0.0),
                    tpot.map_or(String::new(), |x| format!(" while P99 TPOT x{x:.1}")),
                    together("waiting", "ttft_p99_ms", "the server's waiting requests and P99 TTFT"),
                ),
            });
        }
    }
    // KV cache.
    if let Some(kv) = side[knee.min(side.len().saturating_sub(1))..]
        .iter()
        .filter_map(|x| x.kv_cache_pct)
        .max_by(f64::total_cmp)
        && kv >= 90.0
    {
        causes.push(Cause {
            kind: "kv_cache".into(),
            evidence: format!("the KV cache is {kv:.0}% full past the knee (preemption, OOM risk)"),
        });
    }
    // GPU.
    if let Some(util) = side
        .get(sat)
        .and_then(|x| x.gpu_util_pct)
        .or_else(|| side.get(knee).and_then(|x| x.gpu_util_pct))
    {
        if util >= 90.0 {
            causes.push(Cause {
                kind: "gpu_saturated".into(),
                evidence: format!(
                    "GPU utilisation {util:.0}% at {unit} {}: the GPU is the limit{}",
                    value(sat),
                    together(
                        "gpu_util_pct",
                        "throughput_rps",
                        "GPU utilisation and throughput"
                    )
                ),
            });
        } else if util < 70.0 {
            if let Some(cpu) = side.get(sat).and_then(|x| x.host_cpu_pct)
                && cpu >= 85.0
            {
                causes.push(Cause {
                    kind: "client_cpu".into(),
                    evidence: format!(
                        "the load generator's host CPU was {cpu:.0}% busy at {unit} {}: the client itself may be what saturates",
                        value(sat)
                    ),
                });
            }
            causes.push(Cause {
                kind: "gpu_not_saturated".into(),
                evidence: format!(
                    "GPU utilisation only {util:.0}% at {unit} {}: the limit is elsewhere (CPU pre/post-processing, network I/O, the server's scheduler)",
                    value(sat)
                ),
            });
        }
    }

    let mut advice = Vec::new();
    for c in &causes {
        let a = match c.kind.as_str() {
            "errors" if worst.errors.contains_key("timeout") => {
                "raise timeouts only if users would wait that long; otherwise cap concurrency at the knee or add replicas"
            }
            "errors" => {
                "read the server's logs for the failing class (OOM, 5xx under load) and cap admission at the knee"
            }
            "client" => {
                "rerun with more --senders or a larger load-generator machine before trusting latencies past the knee"
            }
            "server_queue" => {
                "tune the batching (max_num_seqs / max_num_batched_tokens), adapt batches to input length, or scale out behind a load balancer"
            }
            "kv_cache" => {
                "give the KV cache more memory (quantised KV, a larger GPU, shorter max_model_len) or admit fewer long requests"
            }
            "gpu_saturated" => {
                "quantise (FP16/INT8), use TensorRT-LLM kernels, or add GPUs/replicas"
            }
            "client_cpu" => {
                "run the load generator on a machine of its own (or more --senders on more cores) and compare"
            }
            "gpu_not_saturated" => {
                "profile the server's CPU side (tokenisation, detokenisation, HTTP) and the network"
            }
            _ => continue,
        };
        if !advice.iter().any(|x| x == a) {
            advice.push(a.to_owned());
        }
    }
    let conclusion = format!(
        "Knee at {unit} {} ({:.1} req/s, P99 {} {}). Saturated at {unit} {}: {}. {}",
        value(knee),
        k.request_throughput,
        p99_latency(k).map_or("latency", |x| x.1),
        p99_latency(k).map_or_else(|| "n/a".into(), |x| format!("{:.0} ms", x.0)),
        value(sat),
        trigger,
        if causes.is_empty() {
            "No single cause stands out in the data recorded.".to_owned()
        } else {
            format!(
                "Bottleneck: {}.",
                causes
                    .iter()
                    .map(|c| c.evidence.clone())
                    .collect::<Vec<_>>()
                    .join("; ")
            )
        }
    );
    Some(Knee {
        knee,
        saturated: sat,
        knee_value: value(knee),
        saturated_value: value(sat),
        trigger,
        causes,
        conclusion,
        advice,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Dist;

    fn step(v: f64, thr: f64, ttft_p99: f64, tpot_p99: f64, err: f64) -> Stats {
        let mut s = Stats {
            label: format!("concurrency={v}"),
            step_value: Some(v),
            requests: 1000,
            ok: (1000.0 * (1.0 - err)) as u64,
            error_rate: err,
            request_throughput: thr,
            ..Stats::default()
        };
        for (name, p99) in [("ttft", ttft_p99), ("tpot", tpot_p99), ("queue", 0.1)] {
            s.latency.insert(
                name.into(),
                Dist {
                    count: 100,
                    p99,
                    ..Dist::default()
                },
            );
        }
        if err > 0.0 {
            s.errors.insert("timeout".into(), (1000.0 * err) as u64);
        }
        s
    }

    #[test]
    fn the_knee_is_the_last_step_still_scaling() {
        let steps = vec![
            step(1.0, 10.0, 50.0, 10.0, 0.0),
            step(8.0, 70.0, 60.0, 12.0, 0.0),
            step(32.0, 150.0, 120.0, 15.0, 0.0),
            step(64.0, 155.0, 900.0, 16.0, 0.0),
            step(128.0, 154.0, 2500.0, 16.0, 0.0),
        ];
        let k = find(&steps, &[], &Rules::default(), "concurrency").unwrap();
        assert_eq!((k.knee, k.saturated), (2, 3));
        assert_eq!((k.knee_value, k.saturated_value), (32.0, 64.0));
        assert!(k.causes.iter().any(|c| c.kind == "server_queue"), "{k:?}");
        assert!(
            k.conclusion.contains("Knee at concurrency 32"),
            "{}",
            k.conclusion
        );
    }

    #[test]
    fn errors_break_a_step_and_are_named() {
        let steps = vec![
            step(50.0, 120.0, 210.0, 10.0, 0.0),
            step(200.0, 380.0, 450.0, 11.0, 0.0),
            step(500.0, 420.0, 1200.0, 12.0, 0.15),
        ];
        let side = vec![
            StepSide {
                gpu_util_pct: Some(65.0),
                ..StepSide::default()
            },
            StepSide {
                gpu_util_pct: Some(92.0),
                ..StepSide::default()
            },
            StepSide {
                gpu_util_pct: Some(95.0),
                ..StepSide::default()
            },
        ];
        let k = find(&steps, &side, &Rules::default(), "concurrency").unwrap();
        assert_eq!(k.knee_value, 200.0);
        assert!(k.trigger.starts_with("error rate 15.0%"), "{}", k.trigger);
        let kinds: Vec<&str> = k.causes.iter().map(|c| c.kind.as_str()).collect();
        assert_eq!(kinds[0], "errors");
        assert!(kinds.contains(&"gpu_saturated"), "{kinds:?}");
        assert!(k.causes[0].evidence.contains("timeout 15.0%"));
    }

    #[test]
    fn a_growing_server_queue_names_the_cause_even_when_the_knee_holds_part_of_the_jump() {
        // The knee step already queues: P99 TTFT only x1.8 to the last step, but the
        // server's waiting requests triple.
        let steps = vec![
            step(4.0, 80.0, 10.0, 5.0, 0.0),
            step(8.0, 115.0, 28.0, 6.0, 0.0),
            step(16.0, 158.0, 94.0, 6.0, 0.0),
            step(32.0, 165.0, 170.0, 6.0, 0.0),
        ];
        let waiting = |w: f64| StepSide {
            server_waiting: Some(w),
            ..StepSide::default()
        };
        let side = vec![waiting(0.0), waiting(0.5), waiting(8.0), waiting(24.0)];
        let k = find(&steps, &side, &Rules::default(), "concurrency").unwrap();
        assert_eq!(k.knee_value, 16.0);
        let queue = k.causes.iter().find(|c| c.kind == "server_queue");
        assert!(
            queue.is_some_and(|c| c.evidence.contains("8.0 → 24.0")),
            "{k:?}"
        );
        // Without the server's word, x1.8 is not enough.
        let k = find(&steps, &[], &Rules::default(), "concurrency").unwrap();
        assert!(k.causes.iter().all(|c| c.kind != "server_queue"), "{k:?}");
    }

    #[test]
    fn no_knee_while_throughput_keeps_growing() {
        let steps = vec![
            step(1.0, 10.0, 50.0, 10.0, 0.0),
            step(2.0, 20.0, 80.0, 10.0, 0.0),
            step(4.0, 39.0, 90.0, 10.0, 0.0),
        ];
        assert!(find(&steps, &[], &Rules::default(), "concurrency").is_none());
        assert!(find(&steps[..1], &[], &Rules::default(), "concurrency").is_none());
    }
}
