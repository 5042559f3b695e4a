//! Bursts: the short-scale clustering of arrivals that a renewal process under a smooth rate
//! profile cannot hold.
//!
//! Production LLM traffic comes in bursts — an agent's fan-out, a batch job, a page of users
//! hitting one feature — on top of the rate's slow drift. A renewal process of gaps, whatever
//! its law, spreads a window's requests out; it keeps the mean rate and roughly the gap
//! distribution but loses the index of dispersion at 1-10 s, which decides queueing and the
//! TTFT tail. Two processes keep it. The **cluster process**: burst starts are Poisson under
//! the rate profile divided by the mean burst size, and each burst is a copy of one of the
//! trace's own bursts (a block bootstrap: its size and the shape of its spread kept whole); a
//! burst is a run of arrivals each closer than `join_s` to the one before. The **Hawkes
//! process** ([`Hawkes`]): background arrivals under the profile, each begetting more at
//! exponentially distributed delays — chains rather than blocks.
//!
//! Which process a trace gets is decided on data it was not fitted to: the trace's first 70%
//! fits each candidate (the renewal process, cluster processes at several `join_s`, the
//! Hawkes process by maximum likelihood), each
//! generates the last 30% under that part's own rate profile, and the candidate whose index of
//! dispersion curve and gap distribution are closest to the held-back part wins
//! ([`select`]); another process must beat the renewal one clearly, so that a Poisson-like
//! trace keeps the simpler model. The comparison is kept in the model ([`Selection`]).

use rand::RngExt;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand_distr::Distribution;
use reprise_trace::stats::index_of_dispersion;
use serde::{Deserialize, Serialize};

use crate::dist::{Law, fit_all, ks_two_sample};

/// At most this many gaps go into a law's fit (an even subsample beyond).
pub(crate) const FIT_GAPS: usize = 200_000;
/// At most this many in-burst offsets are kept in a model.
const KEEP: usize = 50_000;
/// Windows of the index-of-dispersion curve the selection compares (those the held-back part
/// has at least [`MIN_WINDOWS`] of).
pub const IDC_WINDOWS: [f64; 4] = [1.0, 10.0, 60.0, 600.0];
/// Fewest windows of a length for its index of dispersion to count in choosing and fitting
/// the process.
pub const MIN_WINDOWS: usize = 10;
/// `join_s` candidates, as fractions of the training part's mean gap.
const JOIN_FRACTIONS: [f64; 8] = [0.05, 0.1, 0.2, 0.35, 0.5, 1.0, 2.0, 5.0];
/// How much lower a cluster process's score must be to replace the renewal process.
const MARGIN: f64 = 0.05;
/// Generated realisations averaged per candidate.
const SEEDS: u64 = 4;
/// At most this many arrivals (the middle of a longer trace) go into the choice of process
/// and the Hawkes fit, whose costs grow with the candidates and the likelihood grid.
pub const SELECT_MAX: usize = 100_000;

/// The middle `SELECT_MAX` arrivals of a longer trace (all of a shorter one).
pub fn middle(secs: &[f64]) -> &[f64] {
    if secs.len() <= SELECT_MAX {
        return secs;
    }
    let from = (secs.len() - SELECT_MAX) / 2;
    &secs[from..from + SELECT_MAX]
}

/// A cluster process of arrivals (see the module docs).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Clusters {
    /// Arrivals closer than this to the previous one belong to its burst, seconds.
    pub join_s: f64,
    /// Mean requests per burst.
    pub mean_size: f64,
    /// The trace's bursts, each as the offsets of its arrivals after its first, seconds
    /// (empty for a lone request); an even subsample of bursts beyond 50,000 offsets in all.
    /// A generated burst is a copy of one of them, so its shape — how its requests spread
    /// out — is the trace's own.
    pub bursts_s: Vec<Vec<f64>>,
    /// The law of the rate-normalised gaps between burst starts (unit mean).
    pub start_law: Law,
    /// Bursts alternate with silences (an on/off process): each burst begins a silence after
    /// the previous one ends, instead of at Poisson times.
    #[serde(default)]
    pub alternating: bool,
    /// The silences from one burst's last arrival to the next burst, seconds, each
    /// multiplied by the rate around it over `mean_rate` (an even subsample beyond 50,000).
    #[serde(default)]
    pub silences_s: Vec<f64>,
    /// The mean rate the silences were normalised with, requests/s.
    #[serde(default)]
    pub mean_rate: f64,
}

/// A self-exciting (Hawkes) process with an exponential kernel: background arrivals at
/// `(1 − branching) · r(t)` (r: the rate profile), each arrival begetting on average
/// `branching` more, at delays Exp(`decay_per_s`) after it — chains of requests that call
/// for more requests (agents, retries, users reacting to an answer).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct Hawkes {
    /// Mean children per arrival (0..1).
    pub branching: f64,
    /// Rate of the kernel's exponential decay, 1/s.
    pub decay_per_s: f64,
}

impl Hawkes {
    /// Log-likelihood of `times` (sorted, from `start`) under this process and the rate
    /// profile, whose integral over the span is `times.len()`.
    fn log_likelihood(&self, times: &[f64], start: f64, rates: &[f64], window: f64) -> f64 {
        let (n, b) = (self.branching, self.decay_per_s);
        let last = times.last().copied().unwrap_or(start);
        let nw = rates.len().max(1);
        let mut ll = 0.0;
        let mut r = 0.0;
        let mut compensator = 0.0;
        for (i, &t) in times.iter().enumerate() {
            if i > 0 {
                r = (-(b * (t - times[i - 1]))).exp() * (1.0 + r);
            }
            let w = (((t - start) / window).max(0.0) as usize).min(nw - 1);
            let lambda = (1.0 - n) * rates.get(w).copied().unwrap_or(0.0) + n * b * r;
            ll += lambda.max(1e-300).ln();
            compensator += 1.0 - (-(b * (last - t))).exp();
        }
        ll - (1.0 - n) * times.len() as f64 - n * compensator
    }

    /// The maximum-likelihood branching ratio and decay of `times` under the profile: a
    /// grid over decays from 1/(10 min) to about 50/s and ratios 0-0.95, then a finer one
    /// around the best. `None` for fewer than 50 arrivals. The profile is assumed to hold
    /// about as many arrivals over their span as there are.
    pub fn fit(times: &[f64], start: f64, rates: &[f64], window: f64) -> Option<Hawkes> {
        if times.len() < 50 {
            return None;
        }
        let mut best = (
            f64::NEG_INFINITY,
            Hawkes {
                branching: 0.0,
                decay_per_s: 1.0,
            },
        );
        let try_grid = |ns: &[f64], bs: &[f64], best: &mut (f64, Hawkes)| {
            for &b in bs {
                for &n in ns {
                    let h = Hawkes {
                        branching: n,
                        decay_per_s: b,
                    };
                    let ll = h.log_likelihood(times, start, rates, window);
                    if ll > best.0 {
                        *best = (ll, h);
                    }
                }
            }
        };
        let ns: Vec<f64> = (0..20).map(|i| f64::from(i) * 0.05).collect();
        let bs: Vec<f64> = (0..28).map(|i| (1.0 / 600.0) * 1.5f64.powi(i)).collect();
        try_grid(&ns, &bs, &mut best);
        let (n0, b0) = (best.1.branching, best.1.decay_per_s);
        let ns: Vec<f64> = (-5..=5)
            .map(|i| (n0 + f64::from(i) * 0.01).clamp(0.0, 0.97))
            .collect();
        let bs: Vec<f64> = (-5..=5)
            .map(|i| b0 * 1.5f64.powf(f64::from(i) / 5.0))
            .collect();
        try_grid(&ns, &bs, &mut best);
        Some(best.1)
    }

    /// One realisation over `duration` against `rates` per `window`, unordered.
    fn stream(
        &self,
        rates: &[f64],
        window: f64,
        duration: f64,
        rng: &mut StdRng,
        out: &mut Vec<f64>,
    ) {
        let background: Vec<f64> = rates.iter().map(|r| r * (1.0 - self.branching)).collect();
        let mut stack = Vec::new();
        renewal_stream(
            &background,
            window,
            duration,
            &Law::Exponential { mean: 1.0 },
            rng,
            &mut stack,
        );
        let children = rand_distr::Poisson::new(self.branching.max(1e-9)).ok();
        let delay = rand_distr::Exp::new(self.decay_per_s).ok();
        while let Some(t) = stack.pop() {
            out.push(t);
            let (Some(children), Some(delay)) = (&children, &delay) else {
                continue;
            };
            let k: f64 = children.sample(rng);
            for _ in 0..k as u64 {
                let c = t + delay.sample(rng);
                if c < duration {
                    stack.push(c);
                }
            }
        }
    }
}

/// One candidate process scored on the held-back part.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Score {
    /// `renewal`, `cluster`, `on/off` or `hawkes`.
    pub process: String,
    /// The cluster process's `join_s`.
    pub join_s: Option<f64>,
    /// The Hawkes process's parameters.
    #[serde(default)]
    pub hawkes: Option<Hawkes>,
    /// Mean |ln(generated IDC / held-back IDC)| over the compared windows.
    pub idc_error: f64,
    /// KS distance between generated and held-back gaps.
    pub gap_ks: f64,
    /// `idc_error + gap_ks` (lower is better).
    pub score: f64,
}

/// How the arrival process was chosen.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Selection {
    /// Length of the held-back part, seconds (0 when the trace was too short to compare).
    pub held_back_s: f64,
    /// The IDC windows compared, seconds.
    pub windows_s: Vec<f64>,
    /// The held-back part's IDC at those windows.
    pub held_back_idc: Vec<f64>,
    /// Every candidate, best first.
    pub scores: Vec<Score>,
    /// `renewal`, `cluster`, `on/off` or `hawkes`.
    pub chosen: String,
    /// Why, in words and numbers.
    pub reason: String,
}

/// Arrival counts per window from `start`, and each window's rate (the last window over its
/// own length).
pub fn rate_profile(secs: &[f64], start: f64, span: f64, window: f64) -> Vec<f64> {
    let n = ((span / window).floor() as usize + 1).max(1);
    let mut counts = vec![0u64; n];
    for &s in secs {
        let w = (((s - start) / window).max(0.0) as usize).min(n - 1);
        counts[w] += 1;
    }
    let last_len = (span - (n - 1) as f64 * window).max(window * 0.05);
    counts
        .iter()
        .enumerate()
        .map(|(i, &c)| c as f64 / if i + 1 == n { last_len } else { window })
        .collect()
}

/// Unit-mean rate-normalised gaps between consecutive `times` (each gap times the local rate
/// of its window, then divided by the mean); equal times count as half the smallest gap.
/// `None` when no gap is positive.
pub fn normalized_gaps(times: &[f64], start: f64, rates: &[f64], window: f64) -> Option<Vec<f64>> {
    let n = rates.len().max(1);
    let mut gaps: Vec<f64> = times
        .windows(2)
        .map(|w| {
            let i = (((w[0] - start) / window).max(0.0) as usize).min(n - 1);
            (w[1] - w[0]) * rates.get(i).copied().unwrap_or(0.0)
        })
        .collect();
    let min_pos = gaps
        .iter()
        .copied()
        .filter(|&g| g > 0.0)
        .fold(f64::INFINITY, f64::min);
    if !min_pos.is_finite() {
        return None;
    }
    for g in &mut gaps {
        if *g <= 0.0 {
            *g = min_pos / 2.0;
        }
    }
    let m = gaps.iter().sum::<f64>() / gaps.len() as f64;
    for g in &mut gaps {
        *g /= m;
    }
    Some(gaps)
}

/// An even subsample of at most `keep` values.
pub(crate) fn subsample<T: Copy>(v: &[T], keep: usize) -> Vec<T> {
    if v.len() <= keep {
        return v.to_vec();
    }
    let step = v.len() as f64 / keep as f64;
    (0..keep).map(|i| v[(i as f64 * step) as usize]).collect()
}

/// The renewal law of `times` under the rate profile: the best of [`fit_all`] by AIC.
pub fn renewal_law(times: &[f64], start: f64, rates: &[f64], window: f64) -> Option<Law> {
    let gaps = normalized_gaps(times, start, rates, window)?;
    fit_all(&subsample(&gaps, FIT_GAPS))
        .first()
        .map(|c| c.fit.unit_mean())
}

/// Fits a cluster process with bursts joined below `join_s`; `None` when there are fewer than
/// 3 bursts or nothing to fit.
pub fn fit_clusters(
    times: &[f64],
    start: f64,
    rates: &[f64],
    window: f64,
    join_s: f64,
) -> Option<Clusters> {
    let mut bursts: Vec<Vec<f64>> = Vec::new();
    let mut first = 0.0;
    for (i, &t) in times.iter().enumerate() {
        if i == 0 || t - times[i - 1] >= join_s {
            bursts.push(Vec::new());
            first = t;
        } else if let Some(b) = bursts.last_mut() {
            b.push(t - first);
        }
    }
    if bursts.len() < 3 {
        return None;
    }
    // Burst starts as a Poisson process under the profile: the profile carries the slow
    // variation and the bursts the fast one; a fitted start law would count the clumping of
    // the starts a second time (a fitted start law over-dispersed the counts at 60-600 s).
    // The alternating variant draws the silences between bursts instead.
    let start_law = Law::Exponential { mean: 1.0 };
    // The silences between bursts, normalised by the rate around them (over 11 windows: a
    // window's own count holds the burst that ends the silence).
    let nw = rates.len().max(1);
    let mean_rate = rates.iter().sum::<f64>() / nw as f64;
    let around = |t: f64| {
        let w = (((t - start) / window).max(0.0) as usize).min(nw - 1);
        let (a, b) = (w.saturating_sub(5), (w + 6).min(rates.len()));
        if a < b {
            rates[a..b].iter().sum::<f64>() / (b - a) as f64
        } else {
            0.0
        }
    };
    let mut silences = Vec::new();
    let mut burst_end: Option<f64> = None;
    for (i, &t) in times.iter().enumerate() {
        if i > 0
            && t - times[i - 1] >= join_s
            && let Some(end) = burst_end
        {
            let r = around(end);
            if r > 0.0 && mean_rate > 0.0 {
                silences.push((t - end) * r / mean_rate);
            }
        }
        burst_end = Some(t);
    }
    let mean_size = times.len() as f64 / bursts.len() as f64;
    // Every k-th burst, k chosen so that the kept offsets stay within KEEP.
    let offsets: usize = bursts.iter().map(Vec::len).sum();
    let every = offsets.div_ceil(KEEP).max(1);
    let bursts_s = bursts.into_iter().step_by(every).collect();
    Some(Clusters {
        join_s,
        mean_size,
        bursts_s,
        start_law,
        alternating: false,
        silences_s: subsample(&silences, KEEP),
        mean_rate,
    })
}

/// Arrival times (seconds) of one renewal stream over `duration` against `rates` per `window`
/// (the profile repeats past its end), in order.
pub fn renewal_stream(
    rates: &[f64],
    window: f64,
    duration: f64,
    law: &Law,
    rng: &mut StdRng,
    out: &mut Vec<f64>,
) {
    let mut carry = law.sample(rng);
    let mut w = 0usize;
    loop {
        let start = w as f64 * window;
        if start >= duration || rates.is_empty() {
            break;
        }
        let len = window.min(duration - start);
        let r = rates[w % rates.len()];
        w += 1;
        if r <= 0.0 {
            continue;
        }
        let cap = r * len;
        let mut pos = 0.0;
        while pos + carry <= cap {
            pos += carry;
            out.push(start + pos / r);
            carry = law.sample(rng);
        }
        carry -= cap - pos;
    }
}

/// Arrival times of one cluster stream over `duration` against `rates` (requests/s) per
/// `window`, appended unordered (bursts overlap).
pub fn cluster_stream(
    c: &Clusters,
    rates: &[f64],
    window: f64,
    duration: f64,
    rng: &mut StdRng,
    out: &mut Vec<f64>,
) {
    if c.alternating && !c.silences_s.is_empty() && !rates.is_empty() {
        alternating_stream(c, rates, window, duration, rng, out);
        return;
    }
    let start_rates: Vec<f64> = rates.iter().map(|r| r / c.mean_size.max(1.0)).collect();
    let mut starts = Vec::new();
    renewal_stream(
        &start_rates,
        window,
        duration,
        &c.start_law,
        rng,
        &mut starts,
    );
    for s in starts {
        out.push(s);
        if c.bursts_s.is_empty() {
            continue;
        }
        let burst = &c.bursts_s[rng.random_range(0..c.bursts_s.len())];
        out.extend(burst.iter().map(|o| s + o).take_while(|&t| t < duration));
    }
}

/// Bursts alternating with silences: a silence (scaled by the fit's mean rate over the rate
/// where it begins), a copy of one of the trace's bursts, a silence, ...; silent windows are
/// skipped.
fn alternating_stream(
    c: &Clusters,
    rates: &[f64],
    window: f64,
    duration: f64,
    rng: &mut StdRng,
    out: &mut Vec<f64>,
) {
    let n = rates.len();
    let mut t = 0.0;
    // Begin inside a silence, as a process that was already running would.
    let mut first = true;
    while t < duration {
        let w = (t / window) as usize;
        let r = rates[w % n];
        if r <= 0.0 {
            t = (w + 1) as f64 * window;
            continue;
        }
        let mut silence = c.silences_s[rng.random_range(0..c.silences_s.len())] * c.mean_rate / r;
        if first {
            silence *= rng.random::<f64>();
            first = false;
        }
        t += silence;
        if t >= duration {
            break;
        }
        out.push(t);
        if let Some(burst) =
            (!c.bursts_s.is_empty()).then(|| &c.bursts_s[rng.random_range(0..c.bursts_s.len())])
        {
            out.extend(burst.iter().map(|o| t + o).take_while(|&x| x < duration));
            t += burst.last().copied().unwrap_or(0.0);
        }
    }
}

/// The arrival process of a model: renewal, clusters or self-exciting.
#[derive(Debug, Clone, Copy)]
pub enum Process<'a> {
    /// Gaps from a unit-mean law in operational time.
    Renewal(&'a Law),
    /// Bursts.
    Cluster(&'a Clusters),
    /// Self-exciting chains.
    Hawkes(&'a Hawkes),
}

impl Process<'_> {
    /// One stream's arrival times over `duration`, sorted.
    pub fn times(&self, rates: &[f64], window: f64, duration: f64, rng: &mut StdRng) -> Vec<f64> {
        let mut out = Vec::new();
        match self {
            Process::Renewal(law) => renewal_stream(rates, window, duration, law, rng, &mut out),
            Process::Cluster(c) => {
                cluster_stream(c, rates, window, duration, rng, &mut out);
                out.sort_unstable_by(f64::total_cmp);
            }
            Process::Hawkes(h) => {
                h.stream(rates, window, duration, rng, &mut out);
                out.sort_unstable_by(f64::total_cmp);
            }
        }
        out
    }
}

/// The rate profile without its own sampling noise. A window's count is the rate times the
/// window plus the process's own fluctuation; generating from the raw counts would add that
/// fluctuation a second time (a Poisson trace would come back with an index of dispersion of
/// 2 at the window's length). The profile's deviations from its mean are shrunk so that
/// their variance is the counts' variance less the process's own (the spread of each
/// window's count over simulated realisations under this profile), which leaves the mean
/// rate as it was.
///
/// With `refine` (and a trace small enough to simulate some forty times), the shrink is then
/// chosen among 0, 0.1, ..., 1 and the estimate above as the one whose simulated index of
/// dispersion is closest to the counts' at the window and at 10 windows: the variance at one
/// window alone leaves the slower scales over- or under-dispersed.
pub fn denoise(
    rates: &[f64],
    window: f64,
    process: Process<'_>,
    seed: u64,
    refine: bool,
) -> Vec<f64> {
    let n = rates.len();
    // Silent windows (a night, an outage) stay silent; the others are shrunk towards their
    // own mean.
    let busy: Vec<usize> = (0..n).filter(|&w| rates[w] > 0.0).collect();
    if busy.len() < 3 {
        return rates.to_vec();
    }
    let counts: Vec<f64> = busy.iter().map(|&w| rates[w] * window).collect();
    let k = counts.len() as f64;
    let m = counts.iter().sum::<f64>() / k;
    let var = counts.iter().map(|c| (c - m).powi(2)).sum::<f64>() / (k - 1.0);
    if !(m > 0.0 && var > 0.0) {
        return rates.to_vec();
    }
    // The process's own variance of a window's count, under this very profile: the spread
    // of each window's count over a few realisations, averaged over the busy windows.
    const REALISATIONS: usize = 8;
    let span = n as f64 * window;
    let mut sims = vec![vec![0.0f64; n]; REALISATIONS];
    for (r, sim) in sims.iter_mut().enumerate() {
        let mut rng = StdRng::seed_from_u64(seed ^ 0xD0_5E ^ r as u64);
        for t in process.times(rates, window, span, &mut rng) {
            sim[((t / window) as usize).min(n - 1)] += 1.0;
        }
    }
    let own = busy
        .iter()
        .map(|&w| {
            let mean = sims.iter().map(|s| s[w]).sum::<f64>() / REALISATIONS as f64;
            sims.iter().map(|s| (s[w] - mean).powi(2)).sum::<f64>() / (REALISATIONS - 1) as f64
        })
        .sum::<f64>()
        / k;
    let mean_rate = m / window;
    let shrunk = |f: f64| -> Vec<f64> {
        rates
            .iter()
            .map(|&r| {
                if r > 0.0 {
                    (mean_rate + (r - mean_rate) * f).max(0.0)
                } else {
                    0.0
                }
            })
            .collect()
    };
    let estimate = ((var - own).max(0.0) / var).sqrt();
    let events = rates.iter().sum::<f64>() * window;
    if !refine || events * 48.0 > 5_000_000.0 {
        return shrunk(estimate);
    }
    // The counts' index of dispersion at the window and at 10 windows (where there are 10 of
    // those), against the simulated ones.
    let idc_of = |counts: &[f64], group: usize| -> Option<f64> {
        let sums: Vec<f64> = counts
            .chunks_exact(group)
            .map(|c| c.iter().sum::<f64>())
            .collect();
        if sums.len() < MIN_WINDOWS {
            return None;
        }
        let k = sums.len() as f64;
        let mean = sums.iter().sum::<f64>() / k;
        let var = sums.iter().map(|s| (s - mean).powi(2)).sum::<f64>() / (k - 1.0);
        (mean > 0.0).then(|| (var / mean).max(1e-6))
    };
    let source: Vec<f64> = rates.iter().map(|r| r * window).collect();
    let scales: Vec<(usize, f64)> = [1usize, 10]
        .iter()
        .filter_map(|&g| Some((g, idc_of(&source, g)?)))
        .collect();
    if scales.is_empty() {
        return shrunk(estimate);
    }
    let error = |f: f64| -> f64 {
        let profile = shrunk(f);
        let mut total = 0.0;
        for r in 0..4u64 {
            let mut rng = StdRng::seed_from_u64(seed ^ 0x5CA1E ^ r);
            let mut sim = vec![0.0f64; n];
            for t in process.times(&profile, window, span, &mut rng) {
                sim[((t / window) as usize).min(n - 1)] += 1.0;
            }
            for &(g, want) in &scales {
                let got = idc_of(&sim, g).unwrap_or(1.0);
                total += (got.max(1e-6) / want).ln().abs();
            }
        }
        total
    };
    let best = (0..=10)
        .map(|i| f64::from(i) / 10.0)
        .chain([estimate])
        .map(|f| (error(f), f))
        .min_by(|a, b| a.0.total_cmp(&b.0))
        .map_or(estimate, |(_, f)| f);
    shrunk(best)
}

/// Share of arrivals in the busiest 1% of `bin`-second bins of their span (at least one
/// bin); `None` for fewer than 2 arrivals.
pub fn busiest_share(sorted_secs: &[f64], bin: f64) -> Option<f64> {
    let (&first, &last) = (sorted_secs.first()?, sorted_secs.last()?);
    if sorted_secs.len() < 2 || bin <= 0.0 {
        return None;
    }
    let n = ((last - first) / bin).floor() as usize + 1;
    let mut counts = vec![0u64; n];
    for &t in sorted_secs {
        counts[(((t - first) / bin) as usize).min(n - 1)] += 1;
    }
    counts.sort_unstable_by(|a, b| b.cmp(a));
    let top = (n as f64 * 0.01).ceil().max(1.0) as usize;
    Some(counts[..top].iter().sum::<u64>() as f64 / sorted_secs.len() as f64)
}

/// The IDC windows a span of `span` seconds has at least [`MIN_WINDOWS`] of.
pub fn comparable_windows(span: f64) -> Vec<f64> {
    IDC_WINDOWS
        .iter()
        .copied()
        .filter(|&w| span / w >= MIN_WINDOWS as f64)
        .collect()
}

/// One fold of the selection: the scores of every candidate (in a fixed order: renewal,
/// each `join_s` fraction, Hawkes; `None` where one could not be fitted) fitted on
/// `[train_from, train_to)` and tested on `[test_from, test_to)`; `None` when either part is
/// too short. A cluster candidate's `join_s` is given as its fraction of the mean gap.
struct Fold {
    test_span: f64,
    windows: Vec<f64>,
    held_idc: Vec<f64>,
    scores: Vec<Option<Score>>,
}

fn fold(
    secs: &[f64],
    train_from: f64,
    train_to: f64,
    test_from: f64,
    test_to: f64,
    window: f64,
    seed: u64,
) -> Option<Fold> {
    let part = |from: f64, to: f64| -> &[f64] {
        let a = secs.partition_point(|&t| t < from);
        let b = secs.partition_point(|&t| t < to).max(a);
        &secs[a..b]
    };
    let train = part(train_from, train_to);
    let test_span = test_to - test_from;
    let test: Vec<f64> = {
        let a = secs.partition_point(|&t| t < test_from);
        let b = if test_to >= secs[secs.len() - 1] {
            secs.len()
        } else {
            secs.partition_point(|&t| t < test_to)
        };
        secs[a..b.max(a)].iter().map(|t| t - test_from).collect()
    };
    let windows: Vec<f64> = comparable_windows(test_span)
        .into_iter()
        .filter(|&w| w * 2.0 >= test_span / test.len().max(1) as f64)
        .collect();
    if train.len() < 200 || test.len() < 100 || windows.is_empty() {
        return None;
    }
    let held_idc: Vec<f64> = windows
        .iter()
        .map(|&w| index_of_dispersion(&test, w).unwrap_or(1.0).max(1e-6))
        .collect();
    let held_gaps: Vec<f64> = {
        let mut g: Vec<f64> = test.windows(2).map(|w| w[1] - w[0]).collect();
        g.sort_by(f64::total_cmp);
        g
    };
    let train_rates = rate_profile(train, train_from, train_to - train_from, window);
    let held_rates = rate_profile(&test, 0.0, test_span, window);
    let mean_gap = (train_to - train_from) / train.len() as f64;

    let score = |process: Process<'_>, name: &str, fraction: Option<f64>| -> Score {
        let hawkes = match process {
            Process::Hawkes(h) => Some(*h),
            _ => None,
        };
        let mut idc = vec![0.0; windows.len()];
        let mut gaps = Vec::new();
        let rates = denoise(&held_rates, window, process, seed, false);
        for k in 0..SEEDS {
            let mut rng = StdRng::seed_from_u64(seed ^ (0x5EED_0000 + k));
            let t = process.times(&rates, window, test_span, &mut rng);
            for (i, &w) in windows.iter().enumerate() {
                idc[i] += index_of_dispersion(&t, w).unwrap_or(1.0) / SEEDS as f64;
            }
            gaps.extend(t.windows(2).map(|w| w[1] - w[0]));
        }
        gaps.sort_by(f64::total_cmp);
        let idc_error = idc
            .iter()
            .zip(&held_idc)
            .map(|(g, h)| (g.max(1e-6) / h).ln().abs())
            .sum::<f64>()
            / windows.len() as f64;
        let gap_ks = if gaps.is_empty() || held_gaps.is_empty() {
            1.0
        } else {
            ks_two_sample(&gaps, &held_gaps)
        };
        Score {
            process: name.into(),
            join_s: fraction,
            hawkes,
            idc_error,
            gap_ks,
            score: idc_error + gap_ks,
        }
    };
    let mut scores = Vec::new();
    scores.push(
        renewal_law(train, train_from, &train_rates, window)
            .map(|law| score(Process::Renewal(&law), "renewal", None)),
    );
    for f in JOIN_FRACTIONS {
        scores.push(
            fit_clusters(train, train_from, &train_rates, window, f * mean_gap)
                // A "burst" of one request on average is the renewal process again.
                .filter(|c| c.mean_size >= 1.05)
                .map(|c| score(Process::Cluster(&c), "cluster", Some(f))),
        );
        scores.push(
            fit_clusters(train, train_from, &train_rates, window, f * mean_gap)
                .filter(|c| c.mean_size >= 1.05 && !c.silences_s.is_empty())
                .map(|c| {
                    let c = Clusters {
                        alternating: true,
                        ..c
                    };
                    score(Process::Cluster(&c), "on/off", Some(f))
                }),
        );
    }
    scores.push(
        Hawkes::fit(train, train_from, &train_rates, window)
            .filter(|h| h.branching > 0.0)
            .map(|h| score(Process::Hawkes(&h), "hawkes", None)),
    );
    Some(Fold {
        test_span,
        windows,
        held_idc,
        scores,
    })
}

/// The process a selection chose, to be fitted to the whole trace.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Choice {
    /// The renewal process.
    Renewal,
    /// Bursts joined below this many seconds; alternating with silences when `true`.
    Cluster(f64, bool),
    /// Self-exciting.
    Hawkes,
}

/// Chooses the arrival process of `secs` (sorted): the renewal process, a cluster process or
/// a Hawkes process, by how each fitted on the first 70% reproduces the last 30% (see the
/// module docs).
pub fn select(secs: &[f64], window: f64, seed: u64) -> (Selection, Choice) {
    let secs = middle(secs);
    let renewal_only = |reason: String| {
        (
            Selection {
                held_back_s: 0.0,
                windows_s: Vec::new(),
                held_back_idc: Vec::new(),
                scores: Vec::new(),
                chosen: "renewal".into(),
                reason,
            },
            Choice::Renewal,
        )
    };
    let (Some(&first), Some(&last)) = (secs.first(), secs.last()) else {
        return renewal_only("no arrivals".into());
    };
    let span = last - first;
    // Two folds: fit on the first 70% and test on the rest, then fit on the last 70% and
    // test on the first 30%; a candidate's score is its mean over both.
    let folds = [
        fold(
            secs,
            first,
            first + 0.7 * span,
            first + 0.7 * span,
            last,
            window,
            seed,
        ),
        fold(
            secs,
            first + 0.3 * span,
            last,
            first,
            first + 0.3 * span,
            window,
            seed,
        ),
    ];
    let [Some(a), Some(b)] = folds else {
        return renewal_only(format!(
            "renewal: too short to compare candidates on held-back data ({} requests over {span:.0} s)",
            secs.len()
        ));
    };
    let held_span = a.test_span;
    let windows = a.windows.clone();
    let held_idc = a.held_idc.clone();
    let mean_gap = span / secs.len() as f64;
    let mut scores: Vec<Score> = a
        .scores
        .iter()
        .zip(&b.scores)
        .filter_map(|(x, y)| {
            let (x, y) = (x.as_ref()?, y.as_ref()?);
            let idc_error = (x.idc_error + y.idc_error) / 2.0;
            let gap_ks = (x.gap_ks + y.gap_ks) / 2.0;
            Some(Score {
                process: x.process.clone(),
                // The fraction of the mean gap both folds used, at the whole trace's.
                join_s: x.join_s.map(|f| f * mean_gap),
                hawkes: x.hawkes,
                idc_error,
                gap_ks,
                score: idc_error + gap_ks,
            })
        })
        .collect();
    scores.sort_by(|a, b| a.score.total_cmp(&b.score));
    let renewal = scores.iter().find(|s| s.process == "renewal").cloned();
    let best = scores.first().cloned();
    let (chosen, join, reason) = match (best, renewal) {
        (Some(b), Some(r)) if b.process != "renewal" && b.score + MARGIN < r.score => {
            let on_off = b.process == "on/off";
            let what = match (b.join_s, b.hawkes) {
                (Some(j), _) if on_off => {
                    format!("on/off (bursts joined below {j:.3} s, alternating with silences)")
                }
                (Some(j), _) => format!("cluster (bursts joined below {j:.3} s, Poisson starts)"),
                (None, Some(h)) => format!(
                    "hawkes (branching ratio {:.2}, kernel decay {:.3}/s)",
                    h.branching, h.decay_per_s
                ),
                _ => b.process.clone(),
            };
            let choice = match b.join_s {
                Some(j) => Choice::Cluster(j, on_off),
                None => Choice::Hawkes,
            };
            (
                b.process.clone(),
                choice,
                format!(
                    "{what}: on held-back data (two folds of 30%), IDC error {:.3} and gap KS {:.3}, against {:.3} and {:.3} for the renewal process",
                    b.idc_error, b.gap_ks, r.idc_error, r.gap_ks
                ),
            )
        }
        (_, Some(r)) => (
            "renewal".to_owned(),
            Choice::Renewal,
            format!(
                "renewal: on held-back data (two folds of 30%), IDC error {:.3} and gap KS {:.3}; no cluster or Hawkes process did better by {MARGIN}",
                r.idc_error, r.gap_ks
            ),
        ),
        _ => (
            "renewal".to_owned(),
            Choice::Renewal,
            "renewal: no candidate could be fitted".into(),
        ),
    };
    (
        Selection {
            held_back_s: held_span,
            windows_s: windows,
            held_back_idc: held_idc,
            scores,
            chosen,
            reason,
        },
        join,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_are_split_at_the_join_threshold() {
        let times = [0.0, 0.1, 0.2, 5.0, 10.0, 10.05, 20.0];
        let c = fit_clusters(&times, 0.0, &[0.35], 100.0, 0.5).unwrap();
        assert_eq!(c.bursts_s.len(), 4);
        assert_eq!(c.mean_size, 7.0 / 4.0);
        let close = |a: &[f64], b: &[f64]| {
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-9)
        };
        assert!(close(&c.bursts_s[0], &[0.1, 0.2]), "{:?}", c.bursts_s);
        assert!(c.bursts_s[1].is_empty() && c.bursts_s[3].is_empty());
        assert!(close(&c.bursts_s[2], &[0.05]), "{:?}", c.bursts_s);
        assert!(fit_clusters(&[0.0, 0.1], 0.0, &[1.0], 10.0, 0.5).is_none());
    }

    #[test]
    fn a_cluster_stream_keeps_the_rate_and_the_burst_sizes() {
        let c = Clusters {
            join_s: 0.5,
            mean_size: 4.0,
            bursts_s: vec![vec![0.01, 0.02, 0.03]],
            start_law: Law::Exponential { mean: 1.0 },
            alternating: false,
            silences_s: Vec::new(),
            mean_rate: 8.0,
        };
        let mut rng = StdRng::seed_from_u64(1);
        let t = Process::Cluster(&c).times(&[8.0], 100.0, 2000.0, &mut rng);
        let rate = t.len() as f64 / 2000.0;
        assert!((rate - 8.0).abs() < 0.4, "{rate}");
        assert!(t.windows(2).all(|w| w[0] <= w[1]));
        // Bursts of 4 within 30 ms: far more dispersed at 1 s than Poisson (IDC ≈ 4).
        let idc = index_of_dispersion(&t, 1.0).unwrap();
        assert!(idc > 3.0 && idc < 5.0, "{idc}");
    }

    #[test]
    fn busiest_share_counts_the_top_one_percent_of_bins() {
        // 200 one-second bins: the top 2 hold 30 + 20 of 248 arrivals.
        let mut t: Vec<f64> = (0..198).map(f64::from).collect();
        t.extend((0..30).map(|i| 198.0 + i as f64 / 100.0));
        t.extend((0..20).map(|i| 199.0 + i as f64 / 100.0));
        t.sort_by(f64::total_cmp);
        let s = busiest_share(&t, 1.0).unwrap();
        assert!((s - 50.0 / 248.0).abs() < 1e-9, "{s}");
    }
}
