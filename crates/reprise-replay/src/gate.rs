//! Pass/fail gates over a finished run: what decides exit status 1 ("ran, but failed a
//! gate") for scripts and CI jobs.
//!
//! Always on: a run in which every measured request failed (or none was measured) failed.
//! Opt-in: a largest error rate and a largest client queue p99 (the load generator could not
//! keep up, so the schedule was not honoured). A stress ramp that meets errors at its top
//! steps is not a failure by default: finding that limit is what it is for.

use crate::summary::PhaseSummary;

/// Opt-in gates; the default gate (every measured request failed) always applies.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Gates {
    /// Fail when the measured error rate exceeds this (0..1).
    pub max_error_rate: Option<f64>,
    /// Fail when the client queue p99 exceeds this, ms.
    pub max_queue_p99_ms: Option<f64>,
}

/// Which gate a run failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// The default gate: no measured request succeeded (or none was sent).
    AllFailed,
    /// [`Gates::max_error_rate`].
    ErrorRate,
    /// [`Gates::max_queue_p99_ms`].
    QueueP99,
}

/// A failed gate and what the run showed, in one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The gate.
    pub gate: Gate,
    /// The figures.
    pub message: String,
}

/// The gates a run failed; empty when it passed.
pub fn judge(overall: &PhaseSummary, gates: &Gates) -> Vec<Failure> {
    let mut failed = Vec::new();
    let mut fail = |gate, message: String| failed.push(Failure { gate, message });
    if overall.requests == 0 {
        fail(Gate::AllFailed, "no measured request was sent".to_owned());
    } else if overall.ok == 0 {
        let classes: Vec<String> = overall
            .errors
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        fail(
            Gate::AllFailed,
            format!(
                "every measured request failed ({} of {}: {})",
                overall.requests,
                overall.requests,
                classes.join(", ")
            ),
        );
    }
    if let Some(max) = gates.max_error_rate
        && overall.requests > 0
        && overall.error_rate > max
    {
        fail(
            Gate::ErrorRate,
            format!(
                "error rate {:.2}% above the limit of {:.2}%",
                overall.error_rate * 100.0,
                max * 100.0
            ),
        );
    }
    if let Some(max) = gates.max_queue_p99_ms
        && let Some(q) = &overall.queue_ms
        && q.p99 > max
    {
        fail(
            Gate::QueueP99,
            format!(
                "client could not keep up: queue p99 {:.2} ms above the limit of {max} ms",
                q.p99
            ),
        );
    }
    failed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::summary::{Sample, Summarizer};

    fn run(outcomes: &[(bool, u64)]) -> PhaseSummary {
        let mut s = Summarizer::default();
        for (i, &(ok, queue_us)) in outcomes.iter().enumerate() {
            s.add(&Sample {
                phase: "measure".into(),
                ok,
                error_kind: (!ok).then(|| "http_5xx".to_owned()),
                sent_ns: Some(i as u64 * 1_000_000),
                done_ns: Some(i as u64 * 1_000_000 + 500_000),
                queue_us: Some(queue_us),
                ..Sample::default()
            });
        }
        s.overall()
    }

    #[test]
    fn every_request_failed_is_a_failure_by_default() {
        let all_failed = run(&[(false, 10), (false, 10), (false, 10)]);
        assert_eq!(
            judge(&all_failed, &Gates::default()),
            vec![Failure {
                gate: Gate::AllFailed,
                message: "every measured request failed (3 of 3: http_5xx 3)".to_owned()
            }]
        );
        assert!(judge(&run(&[(true, 10), (false, 10)]), &Gates::default()).is_empty());
        assert_eq!(
            judge(&run(&[]), &Gates::default())[0].message,
            "no measured request was sent"
        );
    }

    #[test]
    fn opt_in_gates_name_the_flag_and_the_figures() {
        let half = run(&[(true, 10), (false, 10), (true, 3_000), (false, 10)]);
        assert!(
            judge(
                &half,
                &Gates {
                    max_error_rate: Some(0.5),
                    ..Gates::default()
                }
            )
            .is_empty()
        );
        assert_eq!(
            judge(
                &half,
                &Gates {
                    max_error_rate: Some(0.25),
                    max_queue_p99_ms: Some(1.0)
                }
            ),
            vec![
                Failure {
                    gate: Gate::ErrorRate,
                    message: "error rate 50.00% above the limit of 25.00%".to_owned()
                },
                Failure {
                    gate: Gate::QueueP99,
                    message: "client could not keep up: queue p99 3.00 ms above the limit of 1 ms"
                        .to_owned()
                }
            ]
        );
    }
}
