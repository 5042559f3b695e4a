//! Pass/fail gates over a finished run: what decides exit status 1 ("ran, but failed a
//! gate") for scripts and CI jobs.
//!
//! Always on: a run in which every measured request failed (or none was measured) failed,
//! and an open-loop run whose client fell behind its schedule (queue p99 over a second:
//! asked for more than it could send), since its figures then measure the client.
//! Opt-in: a largest error rate and a largest client queue p99 (the load generator could not
//! keep up, so the schedule was not honoured). A stress ramp that meets errors at its top
//! steps is not a failure by default: finding that limit is what it is for.

use crate::summary::{ClientSummary, PhaseSummary};

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
    /// The default gate: the client fell behind its schedule
    /// ([`ClientSummary::fell_behind`]).
    ClientBehind,
}

/// A failed gate and what the run showed, in one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The gate.
    pub gate: Gate,
    /// The figures.
    pub message: String,
}

/// The gates a run failed; empty when it passed. `client` is the run's
/// [`crate::RunSummary::client`].
pub fn judge(
    overall: &PhaseSummary,
    client: Option<&ClientSummary>,
    gates: &Gates,
) -> Vec<Failure> {
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
    if let Some(c) = client.filter(|c| c.fell_behind) {
        fail(Gate::ClientBehind, client_behind(c));
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

/// "client could not keep up: …" with the rate asked and the rate held.
pub fn client_behind(c: &ClientSummary) -> String {
    format!(
        "client could not keep up: it held {:.0} req/s of the {:.0} req/s asked, and went out \
         {:.1} s behind schedule at the end (every request still sent, late, and counted in \
         queue); add --senders on a machine with spare cores, or ask for less",
        c.held_rate, c.asked_rate, c.behind_s
    )
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
            judge(&all_failed, None, &Gates::default()),
            vec![Failure {
                gate: Gate::AllFailed,
                message: "every measured request failed (3 of 3: http_5xx 3)".to_owned()
            }]
        );
        assert!(judge(&run(&[(true, 10), (false, 10)]), None, &Gates::default()).is_empty());
        assert_eq!(
            judge(&run(&[]), None, &Gates::default())[0].message,
            "no measured request was sent"
        );
    }

    #[test]
    fn opt_in_gates_name_the_flag_and_the_figures() {
        let half = run(&[(true, 10), (false, 10), (true, 3_000), (false, 10)]);
        assert!(
            judge(
                &half,
                None,
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
                None,
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

    #[test]
    fn a_client_that_fell_behind_fails_by_default_with_the_rate_it_held() {
        // 100 requests asked 1 ms apart (about 1,000 req/s), sent 20 ms apart.
        let mut s = Summarizer::default();
        for i in 0..100u64 {
            let (scheduled, sent) = (i * 1_000_000, i * 20_000_000);
            s.add(&Sample {
                phase: "measure".into(),
                ok: true,
                sent_ns: Some(sent),
                done_ns: Some(sent + 500_000),
                queue_us: Some((sent - scheduled) / 1000),
                ..Sample::default()
            });
        }
        let overall = s.overall();
        let c = s.client(&overall, Some(64), 3).expect("a schedule");
        assert_eq!(c.sent, 100);
        assert!((c.asked_rate - 100.0 / 0.099).abs() < 0.01, "{c:?}");
        assert!((c.held_rate - 100.0 / 1.98).abs() < 0.01, "{c:?}");
        assert!((c.behind_s - 1.881).abs() < 1e-9, "{c:?}");
        assert!(c.fell_behind);
        assert_eq!((c.max_connections, c.waited_for_connection), (Some(64), 3));
        let failed = judge(&overall, Some(&c), &Gates::default());
        assert_eq!(failed.len(), 1);
        assert_eq!(failed[0].gate, Gate::ClientBehind);
        assert!(
            failed[0]
                .message
                .starts_with("client could not keep up: it held 51 req/s of the 1010 req/s asked"),
            "{}",
            failed[0].message
        );
        // On time: no failure.
        let on_time = run(&[(true, 10), (true, 20)]);
        let mut s = Summarizer::default();
        s.add(&Sample {
            phase: "measure".into(),
            ok: true,
            sent_ns: Some(1_000),
            queue_us: Some(0),
            ..Sample::default()
        });
        let c = s.client(&on_time, None, 0).expect("a schedule");
        assert!(!c.fell_behind);
        assert!(judge(&on_time, Some(&c), &Gates::default()).is_empty());
    }
}
