//! Bursts: the short-scale clustering of arrivals that a renewal process under a smooth rate
//! profile cannot hold.
//!
//! Production LLM traffic comes in bursts — an agent's fan-out, a batch job, a page of users
//! hitting one feature — on top of the rate's slow drift. A renewal process of gaps, whatever
//! its law, spreads a window's requests out; it keeps the mean rate and roughly the gap
//! distribution but loses the index of dispersion at 1-10 s, which decides queueing and the
//! TTFT tail. The **cluster process** here keeps them: burst starts follow the rate profile
//! (divided by the mean burst size) with a fitted law of their rate-normalised gaps; each
//! burst has a size drawn from the trace's burst sizes and in-burst gaps drawn from its
//! in-burst gaps. A burst is a run of arrivals each closer than `join_s` to the one before.
//!
//! Which process a trace gets is decided on data it was not fitted to: the trace's first 70%
//! fits each candidate (the renewal process and cluster processes at several `join_s`), each
//! generates the last 30% under that part's own rate profile, and the candidate whose index of
//! dispersion curve and gap distribution are closest to the held-back part wins
//! ([`select`]); a cluster process must beat the renewal one clearly, so that a Poisson-like
//! trace keeps the simpler model. The comparison is kept in the model ([`Selection`]).

use rand::RngExt;
use rand::SeedableRng;
use rand::rngs::StdRng;
use reprise_trace::stats::index_of_dispersion;
use serde::{Deserialize, Serialize};

use crate::dist::{Law, fit_all, ks_two_sample};

/// At most this many burst sizes and in-burst gaps are kept in a model.
const KEEP: usize = 20_000;
/// Windows of the index-of-dispersion curve the selection compares (those the held-back part
/// has at least [`MIN_WINDOWS`] of).
pub const IDC_WINDOWS: [f64; 4] = [1.0, 10.0, 60.0, 600.0];
/// Fewest windows of a length for its index of dispersion to be compared (fewer give an
/// estimate too noisy to judge at ±20%).
pub const MIN_WINDOWS: usize = 10;
/// `join_s` candidates, as fractions of the training part's mean gap.
const JOIN_FRACTIONS: [f64; 6] = [0.05, 0.1, 0.2, 0.35, 0.5, 1.0];
/// How much lower a cluster process's score must be to replace the renewal process.
const MARGIN: f64 = 0.05;
/// Generated realisations averaged per candidate.
const SEEDS: u64 = 4;

/// A cluster process of arrivals (see the module docs).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Clusters {
    /// Arrivals closer than this to the previous one belong to its burst, seconds.
    pub join_s: f64,
    /// Mean requests per burst.
    pub mean_size: f64,
    /// Requests per burst, as observed (an even subsample beyond 20,000).
    pub sizes: Vec<u32>,
    /// Gaps inside bursts, seconds, as observed (an even subsample beyond 20,000).
    pub gaps_s: Vec<f64>,
    /// The law of the rate-normalised gaps between burst starts (unit mean).
    pub start_law: Law,
}

/// One candidate process scored on the held-back part.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Score {
    /// `renewal` or `cluster`.
    pub process: String,
    /// The cluster process's `join_s`.
    pub join_s: Option<f64>,
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
    /// `renewal` or `cluster`.
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
fn subsample<T: Copy>(v: &[T], keep: usize) -> Vec<T> {
    if v.len() <= keep {
        return v.to_vec();
    }
    let step = v.len() as f64 / keep as f64;
    (0..keep).map(|i| v[(i as f64 * step) as usize]).collect()
}

/// The renewal law of `times` under the rate profile: the best of [`fit_all`] by AIC.
pub fn renewal_law(times: &[f64], start: f64, rates: &[f64], window: f64) -> Option<Law> {
    let gaps = normalized_gaps(times, start, rates, window)?;
    fit_all(&subsample(&gaps, 200_000))
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
    let mut sizes = Vec::new();
    let mut gaps = Vec::new();
    let mut starts = Vec::new();
    let mut size = 0u32;
    for (i, &t) in times.iter().enumerate() {
        if i == 0 || t - times[i - 1] >= join_s {
            if size > 0 {
                sizes.push(size);
            }
            starts.push(t);
            size = 1;
        } else {
            gaps.push(t - times[i - 1]);
            size += 1;
        }
    }
    if size > 0 {
        sizes.push(size);
    }
    if starts.len() < 3 {
        return None;
    }
    // Burst starts as a Poisson process under the profile: the profile carries the slow
    // variation and the bursts the fast one; a fitted start law would count the clumping of
    // the starts a second time.
    let _ = (start, rates, window);
    let start_law = Law::Exponential { mean: 1.0 };
    let mean_size = sizes.iter().map(|&s| f64::from(s)).sum::<f64>() / sizes.len() as f64;
    Some(Clusters {
        join_s,
        mean_size,
        sizes: subsample(&sizes, KEEP),
        gaps_s: subsample(&gaps, KEEP),
        start_law,
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
        let size = if c.sizes.is_empty() {
            1
        } else {
            c.sizes[rng.random_range(0..c.sizes.len())]
        };
        let mut t = s;
        out.push(t);
        for _ in 1..size {
            if c.gaps_s.is_empty() {
                break;
            }
            t += c.gaps_s[rng.random_range(0..c.gaps_s.len())];
            if t >= duration {
                break;
            }
            out.push(t);
        }
    }
}

/// The arrival process of a model: renewal, or clusters.
#[derive(Debug, Clone, Copy)]
pub enum Process<'a> {
    /// Gaps from a unit-mean law in operational time.
    Renewal(&'a Law),
    /// Bursts.
    Cluster(&'a Clusters),
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
pub fn denoise(rates: &[f64], window: f64, process: Process<'_>, seed: u64) -> Vec<f64> {
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
    let shrink = ((var - own).max(0.0) / var).sqrt();
    let mean_rate = m / window;
    rates
        .iter()
        .map(|&r| {
            if r > 0.0 {
                (mean_rate + (r - mean_rate) * shrink).max(0.0)
            } else {
                0.0
            }
        })
        .collect()
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

/// Chooses the arrival process of `secs` (sorted, from `start`): the renewal process or a
/// cluster process, by how each fitted on the first 70% reproduces the last 30% (see the
/// module docs). Returns the selection and the chosen `join_s` (`None`: renewal).
pub fn select(secs: &[f64], window: f64, seed: u64) -> (Selection, Option<f64>) {
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
            None,
        )
    };
    let (Some(&first), Some(&last)) = (secs.first(), secs.last()) else {
        return renewal_only("no arrivals".into());
    };
    let span = last - first;
    let split = first + 0.7 * span;
    let cut = secs.partition_point(|&t| t < split);
    let (train, held) = (&secs[..cut], &secs[cut..]);
    let held_span = span - 0.7 * span;
    let windows: Vec<f64> = comparable_windows(held_span)
        .into_iter()
        .filter(|&w| w * 2.0 >= held_span / held.len().max(1) as f64)
        .collect();
    if train.len() < 200 || held.len() < 100 || windows.is_empty() {
        return renewal_only(format!(
            "renewal: too short to compare candidates on held-back data ({} requests over {span:.0} s)",
            secs.len()
        ));
    }
    let held: Vec<f64> = held.iter().map(|t| t - split).collect();
    let held_idc: Vec<f64> = windows
        .iter()
        .map(|&w| index_of_dispersion(&held, w).unwrap_or(1.0).max(1e-6))
        .collect();
    let held_gaps: Vec<f64> = {
        let mut g: Vec<f64> = held.windows(2).map(|w| w[1] - w[0]).collect();
        g.sort_by(f64::total_cmp);
        g
    };
    let train_rates = rate_profile(train, first, split - first, window);
    let held_rates = rate_profile(&held, 0.0, held_span, window);
    let mean_gap = (split - first) / train.len() as f64;

    let score = |process: Process<'_>, name: &str, join_s: Option<f64>| -> Score {
        let mut idc = vec![0.0; windows.len()];
        let mut gaps = Vec::new();
        let rates = denoise(&held_rates, window, process, seed);
        for k in 0..SEEDS {
            let mut rng = StdRng::seed_from_u64(seed ^ (0x5EED_0000 + k));
            let t = process.times(&rates, window, held_span, &mut rng);
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
            join_s,
            idc_error,
            gap_ks,
            score: idc_error + gap_ks,
        }
    };
    let mut scores = Vec::new();
    if let Some(law) = renewal_law(train, first, &train_rates, window) {
        scores.push(score(Process::Renewal(&law), "renewal", None));
    }
    for f in JOIN_FRACTIONS {
        let join = f * mean_gap;
        if let Some(c) = fit_clusters(train, first, &train_rates, window, join) {
            // A "burst" of one request on average is the renewal process again.
            if c.mean_size >= 1.05 {
                scores.push(score(Process::Cluster(&c), "cluster", Some(join)));
            }
        }
    }
    scores.sort_by(|a, b| a.score.total_cmp(&b.score));
    let renewal = scores.iter().find(|s| s.process == "renewal").cloned();
    let best = scores.first().cloned();
    let (chosen, join, reason) = match (best, renewal) {
        (Some(b), Some(r)) if b.process == "cluster" && b.score + MARGIN < r.score => (
            "cluster",
            b.join_s,
            format!(
                "cluster (bursts joined below {:.3} s): on the last 30% held back, IDC error {:.3} and gap KS {:.3}, against {:.3} and {:.3} for the renewal process",
                b.join_s.unwrap_or(0.0),
                b.idc_error,
                b.gap_ks,
                r.idc_error,
                r.gap_ks
            ),
        ),
        (_, Some(r)) => (
            "renewal",
            None,
            format!(
                "renewal: on the last 30% held back, IDC error {:.3} and gap KS {:.3}; no cluster process did better by {MARGIN}",
                r.idc_error, r.gap_ks
            ),
        ),
        _ => (
            "renewal",
            None,
            "renewal: no candidate could be fitted".into(),
        ),
    };
    (
        Selection {
            held_back_s: held_span,
            windows_s: windows,
            held_back_idc: held_idc,
            scores,
            chosen: chosen.into(),
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
        assert_eq!(c.sizes, vec![3, 1, 2, 1]);
        assert_eq!(c.mean_size, 7.0 / 4.0);
        assert!(
            c.gaps_s
                .iter()
                .zip([0.1, 0.1, 0.05])
                .all(|(a, b)| (a - b).abs() < 1e-9)
        );
        assert!(fit_clusters(&[0.0, 0.1], 0.0, &[1.0], 10.0, 0.5).is_none());
    }

    #[test]
    fn a_cluster_stream_keeps_the_rate_and_the_burst_sizes() {
        let c = Clusters {
            join_s: 0.5,
            mean_size: 4.0,
            sizes: vec![4],
            gaps_s: vec![0.01],
            start_law: Law::Exponential { mean: 1.0 },
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
