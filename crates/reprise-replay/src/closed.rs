//! The closed loop: `users` tasks each send a request, wait for its response, think, and
//! send the next, through the same request path as the open loop ([`crate::send`]). A
//! concurrency ramp runs its steps one after another; after each, the [`StopRule`] looks at
//! the finished step and may end the ramp.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use reprise_trace::TraceRecord;

use crate::execute::Shared;
use crate::row::Job;
use crate::send::{build_body, phase_for, send_job};
use crate::summary::Summarizer;
use crate::{ReplayError, StopRule};

/// One closed-loop run, as [`crate::Pacing::Closed`] describes it.
pub(crate) struct ClosedLoop {
    pub(crate) users: Vec<usize>,
    pub(crate) step_duration: Option<Duration>,
    pub(crate) requests_per_step: Option<u64>,
    pub(crate) think: Duration,
    pub(crate) requests: Vec<TraceRecord>,
}

/// How a closed-loop run ended.
pub(crate) struct Ended {
    /// Every step ran to its end.
    pub(crate) complete: bool,
    /// The stop rule's line, when it ended a ramp.
    pub(crate) stopped_early: Option<String>,
}

/// The phase label of a step: `concurrency=N` in a ramp, `measure` alone.
fn label(ramp: bool, users: usize) -> String {
    if ramp {
        format!("concurrency={users}")
    } else {
        "measure".to_owned()
    }
}

/// Runs the steps in turn, each until its duration or request count is reached (or the
/// run is stopped).
pub(crate) async fn run(
    plan: ClosedLoop,
    run: &Shared,
    summary: &std::sync::Mutex<Summarizer>,
    rule: StopRule,
) -> Result<Ended, ReplayError> {
    if plan.requests.is_empty() {
        return Err(ReplayError::Config("no requests to send".into()));
    }
    let requests = Arc::new(plan.requests);
    let next = Arc::new(AtomicU64::new(0));
    let ramp = plan.users.len() > 1;
    let mut ended = Ended {
        complete: true,
        stopped_early: None,
    };
    for (si, &n_users) in plan.users.iter().enumerate() {
        if run.stop.load(Ordering::Relaxed) {
            ended.complete = false;
            break;
        }
        let label = label(ramp, n_users);
        let step_end = plan.step_duration.map(|d| Instant::now() + d);
        let step_count = Arc::new(AtomicU64::new(0));
        let mut users = tokio::task::JoinSet::new();
        for u in 0..n_users {
            let user = User {
                index: u,
                users: n_users,
                label: label.clone(),
                step_end,
                requests_per_step: plan.requests_per_step,
                think: plan.think,
                requests: requests.clone(),
                next: next.clone(),
                step_count: step_count.clone(),
            };
            users.spawn(user.run(run.clone()));
        }
        while users.join_next().await.is_some() {}
        // The stop rule looks at the finished step.
        if ramp && si + 1 < plan.users.len() {
            // Let the writer catch up with this step's rows.
            tokio::time::sleep(Duration::from_millis(50)).await;
            let step = summary
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .phase(&label);
            if let Some(why) = step.and_then(|step| rule.verdict(&label, &step)) {
                ended.stopped_early = Some(why);
                break;
            }
        }
    }
    Ok(ended)
}

/// One user of a step.
struct User {
    index: usize,
    users: usize,
    label: String,
    step_end: Option<Instant>,
    requests_per_step: Option<u64>,
    think: Duration,
    /// The requests, taken in order and cycled, shared by all users.
    requests: Arc<Vec<TraceRecord>>,
    next: Arc<AtomicU64>,
    step_count: Arc<AtomicU64>,
}

impl User {
    async fn run(self, run: Shared) {
        loop {
            if run.stop.load(Ordering::Relaxed)
                || self.step_end.is_some_and(|e| Instant::now() >= e)
            {
                break;
            }
            if self
                .requests_per_step
                .is_some_and(|r| self.step_count.fetch_add(1, Ordering::Relaxed) >= r)
            {
                break;
            }
            let i = self.next.fetch_add(1, Ordering::Relaxed);
            let request = self.requests[(i % self.requests.len() as u64) as usize].clone();
            let job = Job {
                planned_phase: phase_for(&run.sent, &run.config, &self.label),
                step_value: Some(self.users as f64),
                body: build_body(&run.config, &request),
                request,
                // Closed loop: a user means to send now.
                scheduled: Instant::now(),
                target: (self.index + i as usize) % run.ctx.urls.len(),
                turn: None,
            };
            send_job(job, run.ctx.clone()).await;
            if !self.think.is_zero() {
                tokio::time::sleep(self.think).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_are_labelled_by_concurrency_in_a_ramp_only() {
        assert_eq!(label(true, 8), "concurrency=8");
        assert_eq!(label(false, 8), "measure");
    }
}
