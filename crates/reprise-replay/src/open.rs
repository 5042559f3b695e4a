//! The open loop: sender threads, each with a current-thread runtime of its own, release
//! their share of the plan at absolute deadlines `t0 + offset` ([`crate::pace::Pacer`]: a
//! precise OS sleep, then a short spin, while polling connections) and await what they
//! sent. Request i goes to sender i mod n, so no sender's clock is behind another's.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::execute::Shared;
use crate::row::Job;
use crate::send::{SendCtx, build_body, lean_targets, phase_for, send_job};
use crate::workload::{OpenPlan, Planned};
use crate::{ReplayError, pace};

/// Runs the plan on one sender thread per client in `clients` (built before the clock
/// started); `false` when stopped early or not drained.
pub(crate) async fn run(
    plan: OpenPlan,
    mut clients: Vec<reqwest::Client>,
    urls: &[reqwest::Url],
    run: &Shared,
) -> Result<bool, ReplayError> {
    run.ctx
        .progress
        .planned
        .store(plan.expected_len(), Ordering::Relaxed);
    // Sender threads pace and send: each has a runtime of its own that waits for its
    // requests' deadlines while polling its connections (`pace::Pacer`) and spawns each
    // request's task on itself at the deadline, so no wake-up of another thread stands
    // between a deadline and its send, and responses are read as they arrive.
    let senders = clients.len();
    let shares = plan.deal(senders);
    let mut pacers = Vec::new();
    for (k, share) in shares.into_iter().enumerate() {
        // A pool of this runtime's own (see `send::http_client`).
        let ctx = Arc::new(SendCtx {
            client: clients.pop().expect("one client per sender"),
            lean: lean_targets(&run.config, urls),
            ..SendCtx::clone(&run.ctx)
        });
        let run = Shared { ctx, ..run.clone() };
        pacers.push(
            std::thread::Builder::new()
                .name(format!("reprise-pacer{k}"))
                .spawn(move || -> Result<bool, ReplayError> {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .map_err(|e| ReplayError::Config(format!("starting the pacer: {e}")))?;
                    Ok(rt.block_on(open_loop(share, k, senders, run)))
                })
                .map_err(|e| ReplayError::Config(format!("starting the pacer: {e}")))?,
        );
    }
    let joined = tokio::task::spawn_blocking(move || {
        pacers.into_iter().map(|p| p.join()).collect::<Vec<_>>()
    })
    .await
    .map_err(|_| ReplayError::Config("the pacer panicked".into()))?;
    let mut complete = true;
    for j in joined {
        complete &= j.map_err(|_| ReplayError::Config("the pacer panicked".into()))??;
    }
    Ok(complete)
}

/// The open loop, on the pacer's own runtime: each request spawned at its deadline, then
/// the requests in flight awaited (after a stop they get the drain time, then are cancelled,
/// each still ending in a row). `false` when stopped early.
async fn open_loop(
    plan: Box<dyn Iterator<Item = Planned> + Send>,
    first: usize,
    stride: usize,
    run: Shared,
) -> bool {
    let Shared {
        config,
        clock,
        stop,
        sent: sent_counter,
        ctx,
    } = run;
    let n_targets = config.targets.len();
    let mut tasks = tokio::task::JoinSet::new();
    let mut complete = true;
    let mut pacer = pace::Pacer::new();
    for (j, p) in plan.enumerate() {
        let i = first + j * stride;
        let body = build_body(&config, &p.request);
        let deadline = clock.t0 + p.offset;
        pacer.until(deadline).await;
        if stop.load(Ordering::Relaxed) {
            complete = false;
            break;
        }
        let phase = phase_for(&sent_counter, &config, &p.phase);
        let job = Job {
            planned_phase: phase,
            step_value: p.step_value,
            request: p.request,
            scheduled: deadline,
            body,
            target: i % n_targets,
        };
        tasks.spawn(send_job(job, ctx.clone()));
        // Reap finished tasks as we go (costs only what finished).
        while tasks.try_join_next().is_some() {}
    }
    // The requests in flight end on their own: answered, failed, or cancelled once the
    // drain time after a stop has run out (`send::send_job`), each in its row.
    while tasks.join_next().await.is_some() {}
    complete
}
