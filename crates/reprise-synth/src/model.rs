//! `synth fit`: the workload model of a trace — arrivals (rate over time, the law of the
//! rate-normalized gaps, burstiness), the joint (input, output) length distribution per
//! model, prefix sharing and sessions — as versioned, human-readable JSON.

use std::collections::{BTreeMap, HashMap, HashSet};

use rand::{RngExt, SeedableRng};
use reprise_trace::TraceRecord;
use reprise_trace::stats::{index_of_dispersion, interarrival_cv, quantile_sorted};
use serde::{Deserialize, Serialize};

use crate::SynthError;
use crate::bursts::{
    Choice, Clusters, FIT_GAPS, Hawkes, Process, Selection, denoise, fit_clusters, middle,
    normalized_gaps, rate_profile, select, subsample,
};
use crate::dist::{Candidate, Law, fit_all};

/// The model format written by this version (`/2` added the burst model; `/1` still loads,
/// as a renewal process).
pub const MODEL_FORMAT: &str = "reprise.synth/2";
/// Model formats this version reads.
pub const MODEL_FORMATS_READ: [&str; 2] = ["reprise.synth/1", "reprise.synth/2"];

/// At most this many (input, output) pairs are kept per group.
const PAIRS: usize = 50_000;

/// A fitted workload model.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct WorkloadModel {
    /// `reprise.synth/1`.
    pub format: String,
    /// What it was fitted on.
    pub source: Source,
    /// The arrival process.
    pub arrivals: Arrivals,
    /// Request sizes.
    pub sizes: SizeModel,
    /// Prefix sharing, when the trace has prefix hashes.
    pub prefixes: Option<Prefixes>,
    /// Sessions, when the trace has session ids.
    pub sessions: Option<Sessions>,
}

/// The fitted trace.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Source {
    /// Rows.
    pub rows: u64,
    /// First to last arrival, seconds.
    pub span_s: f64,
    /// First arrival, Unix nanoseconds.
    pub start_ns: i64,
}

/// The arrival process against a piecewise-constant rate (`rates`, one per `window_s`): a
/// renewal process with unit-mean gaps drawn from `law`, run in operational time, or, when
/// `clusters` is set, bursts ([`crate::bursts`]) whose starts follow the rate.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Arrivals {
    /// Mean rate, requests/s.
    pub mean_rate: f64,
    /// Timestamp quantum detected (e.g. 3 s), spread out before fitting; `None` if none.
    pub quantum_s: Option<f64>,
    /// Rate window, seconds.
    pub window_s: f64,
    /// Requests/s in each window from the first arrival: the counts per window with their own
    /// sampling noise taken out ([`crate::bursts::denoise`]; same mean), since the process
    /// adds it back when generating.
    pub rates: Vec<f64>,
    /// The chosen law of rate-normalized gaps (unit mean).
    pub law: Law,
    /// Every law tried, by AIC (best first), with KS distances.
    pub candidates: Vec<Candidate>,
    /// Inter-arrival CV of the trace.
    pub cv: f64,
    /// Index of dispersion of counts at 1 s, 10 s, 60 s, 600 s (null where too short).
    pub idc: Vec<(f64, Option<f64>)>,
    /// Mean rate by hour of day (UTC), when the trace spans two days or more.
    #[serde(default)]
    pub daily: Option<Vec<f64>>,
    /// The burst model, when it reproduced the held-back part of the trace better than the
    /// renewal process (`null`: renewal).
    #[serde(default)]
    pub clusters: Option<Clusters>,
    /// The self-exciting model, when it reproduced the held-back part best (`null`
    /// otherwise).
    #[serde(default)]
    pub hawkes: Option<Hawkes>,
    /// How the process was chosen (`null` in models from reprise.synth/1).
    #[serde(default)]
    pub selection: Option<Selection>,
}

impl Arrivals {
    /// The process to generate from.
    pub fn process(&self) -> Process<'_> {
        match (&self.clusters, &self.hawkes) {
            (Some(c), _) => Process::Cluster(c),
            (None, Some(h)) => Process::Hawkes(h),
            (None, None) => Process::Renewal(&self.law),
        }
    }
}

/// Mean rate by hour of day (UTC) of a rate profile, when it spans two days or more.
pub fn daily_profile(rates: &[f64], window_s: f64, start_ns: i64) -> Option<Vec<f64>> {
    if (rates.len() as f64) * window_s < 2.0 * 86_400.0 {
        return None;
    }
    let (mut sum, mut count) = ([0.0f64; 24], [0u64; 24]);
    for (w, r) in rates.iter().enumerate() {
        let h = hour_of_day(start_ns, w as f64 * window_s);
        sum[h] += r;
        count[h] += 1;
    }
    Some(
        (0..24)
            .map(|h| {
                if count[h] > 0 {
                    sum[h] / count[h] as f64
                } else {
                    0.0
                }
            })
            .collect(),
    )
}

/// The UTC hour of day `offset_s` after `start_ns`.
pub fn hour_of_day(start_ns: i64, offset_s: f64) -> usize {
    let t = start_ns as f64 / 1e9 + offset_s;
    (t.rem_euclid(86_400.0) / 3600.0) as usize % 24
}

/// Sizes: empirical (input, output) pairs per model, sampled jointly so their correlation
/// is kept, with a small multiplicative jitter (`smoothing`) in generation; or, when
/// `parametric`, each group's bivariate lognormal.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SizeModel {
    /// Groups by model.
    pub groups: Vec<SizeGroup>,
    /// Relative jitter applied to sampled lengths (0 = exact resampling).
    pub smoothing: f64,
    /// Generate from the fitted bivariate lognormals instead of the pairs.
    #[serde(default)]
    pub parametric: bool,
}

/// A bivariate lognormal of (input, output): ln input and ln output jointly normal.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct BivariateLognormal {
    /// Mean of ln input.
    pub mu_in: f64,
    /// Standard deviation of ln input.
    pub sigma_in: f64,
    /// Mean of ln output (outputs of 0 count as 1).
    pub mu_out: f64,
    /// Standard deviation of ln output.
    pub sigma_out: f64,
    /// Correlation of ln input and ln output.
    pub rho: f64,
}

impl BivariateLognormal {
    /// Maximum-likelihood fit to pairs.
    pub fn fit(pairs: &[[u32; 2]]) -> Option<Self> {
        if pairs.len() < 2 {
            return None;
        }
        let n = pairs.len() as f64;
        let ln = |v: u32| f64::from(v.max(1)).ln();
        let (mi, mo) = pairs
            .iter()
            .fold((0.0, 0.0), |(a, b), p| (a + ln(p[0]), b + ln(p[1])));
        let (mi, mo) = (mi / n, mo / n);
        let (mut vi, mut vo, mut c) = (0.0, 0.0, 0.0);
        for p in pairs {
            let (x, y) = (ln(p[0]) - mi, ln(p[1]) - mo);
            vi += x * x;
            vo += y * y;
            c += x * y;
        }
        let (si, so) = ((vi / n).sqrt(), (vo / n).sqrt());
        Some(BivariateLognormal {
            mu_in: mi,
            sigma_in: si,
            mu_out: mo,
            sigma_out: so,
            rho: if si > 0.0 && so > 0.0 {
                (c / n / (si * so)).clamp(-1.0, 1.0)
            } else {
                0.0
            },
        })
    }

    /// A sample (rounded, at least 1 token each).
    pub fn sample<R: rand::Rng + ?Sized>(&self, rng: &mut R) -> [u32; 2] {
        use rand_distr::{Distribution, StandardNormal};
        let z1: f64 = StandardNormal.sample(rng);
        let z2: f64 = StandardNormal.sample(rng);
        let x = self.mu_in + self.sigma_in * z1;
        let y = self.mu_out
            + self.sigma_out * (self.rho * z1 + (1.0 - self.rho * self.rho).sqrt() * z2);
        let tokens = |v: f64| v.exp().round().clamp(1.0, f64::from(u32::MAX)) as u32;
        [tokens(x), tokens(y)]
    }
}

/// The sizes of one model's requests.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SizeGroup {
    /// Model id ("" when unspecified).
    pub model: String,
    /// Endpoint of most of its requests.
    pub endpoint: String,
    /// Share of requests.
    pub weight: f64,
    /// (input, output) pairs (all, or an even subsample of 50,000).
    pub pairs: Vec<[u32; 2]>,
    /// The bivariate lognormal fitted to them.
    #[serde(default)]
    pub lognormal: Option<BivariateLognormal>,
}

/// Prefix sharing.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Prefixes {
    /// Tokens per block.
    pub block_tokens: usize,
    /// Share of requests whose first block was seen before.
    pub share_ratio: f64,
    /// Among those, the mean share of their blocks that were seen before, in a row.
    pub shared_fraction: f64,
}

/// Session structure: how many requests belong to conversations, how many turns they have,
/// how long users think between a response and their next turn, and how the context grows.
/// Distributions are kept as 101 quantiles (q = 0, 0.01, ..., 1), sampled by inverse CDF.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Sessions {
    /// Share of requests with a session id.
    pub with_session: f64,
    /// Mean requests per session.
    pub requests_per_session: f64,
    /// Turns per session: (turns, share of sessions). Empty in models of older versions
    /// (then session ids are only spread over requests).
    pub turns: Vec<(u32, f64)>,
    /// Think time (a response's end to the next turn), seconds; empty when the trace has
    /// no ends of turns.
    pub think_s: Vec<f64>,
    /// A turn's response time (what separates its arrival from its end), seconds; empty
    /// when unknown.
    pub service_s: Vec<f64>,
    /// Start-to-start gap between turns, seconds (used when think time is unknown).
    pub gap_s: Vec<f64>,
    /// A later turn's own new tokens: its prompt minus the previous prompt and answer.
    pub growth: Vec<f64>,
    /// First turns' (input, output) tokens, a sample of at most 4,096.
    pub first: Vec<[u32; 2]>,
    /// The arrival process is of openers (first turns and requests without a session),
    /// and this share of openers starts a session; later turns follow their think times.
    pub start_share: f64,
    /// Requests per opener (all requests / openers): what the openers' rate is multiplied
    /// by to give the request rate.
    pub requests_per_opener: f64,
}

/// 101 quantiles of `values` (empty when there are none).
pub fn quantiles(mut values: Vec<f64>) -> Vec<f64> {
    values.retain(|v| v.is_finite());
    values.sort_by(f64::total_cmp);
    if values.is_empty() {
        return Vec::new();
    }
    (0..=100)
        .filter_map(|i| quantile_sorted(&values, f64::from(i) / 100.0))
        .collect()
}

/// A draw from 101 quantiles, by inverse CDF with linear interpolation.
pub fn sample_quantiles<R: rand::Rng + ?Sized>(q: &[f64], rng: &mut R) -> Option<f64> {
    if q.is_empty() {
        return None;
    }
    let u = rng.random::<f64>() * (q.len() - 1) as f64;
    let i = (u.floor() as usize).min(q.len() - 1);
    let j = (i + 1).min(q.len() - 1);
    Some(q[i] + (q[j] - q[i]) * (u - i as f64))
}

/// Options of a fit.
#[derive(Debug, Clone)]
pub struct FitOptions {
    /// Rate window, seconds.
    pub window_s: f64,
    /// `reprise.block_tokens` of the trace.
    pub block_tokens: Option<usize>,
    /// Seed of the de-quantization jitter and subsamples.
    pub seed: u64,
    /// Relative jitter of generated lengths (0 = exact resampling of the pairs).
    pub smoothing: f64,
    /// Generate lengths from the fitted bivariate lognormal rather than the pairs.
    pub parametric_sizes: bool,
}

impl Default for FitOptions {
    fn default() -> Self {
        FitOptions {
            window_s: 60.0,
            block_tokens: None,
            seed: 0,
            smoothing: 0.0,
            parametric_sizes: false,
        }
    }
}

/// A timestamp quantum: most gaps are whole multiples of the smallest positive one and
/// many are zero (requests logged in the same bucket).
pub fn detect_quantum(sorted_secs: &[f64]) -> Option<f64> {
    let gaps: Vec<f64> = sorted_secs.windows(2).map(|w| w[1] - w[0]).collect();
    if gaps.len() < 20 {
        return None;
    }
    let zeros = gaps.iter().filter(|&&g| g <= 0.0).count() as f64 / gaps.len() as f64;
    let q = gaps
        .iter()
        .copied()
        .filter(|&g| g > 0.0)
        .fold(f64::INFINITY, f64::min);
    if !(q.is_finite() && q >= 1e-3 && zeros >= 0.05) {
        return None;
    }
    let positive: Vec<f64> = gaps.iter().copied().filter(|&g| g > 0.0).collect();
    let on_grid = positive
        .iter()
        .filter(|&&g| ((g / q) - (g / q).round()).abs() < 0.01)
        .count() as f64
        / positive.len() as f64;
    (on_grid >= 0.95).then_some(q)
}

/// Fits a model to requests in arrival order.
pub fn fit(requests: &[TraceRecord], opts: &FitOptions) -> Result<WorkloadModel, SynthError> {
    if requests.len() < 2 {
        return Err(SynthError::Degenerate(format!(
            "{} request(s): at least 2 are needed to fit arrivals",
            requests.len()
        )));
    }
    if !(opts.window_s.is_finite() && opts.window_s > 0.0) {
        return Err(SynthError::Setting {
            setting: "rate-window",
            message: format!("{}: must be positive", opts.window_s),
        });
    }
    // Session rows, turns numbered once for the session model and the openers.
    let turns = reprise_trace::sessions::session_turns(requests);
    let sessions = fit_sessions(&turns, requests.len());
    // With conversations, arrivals are the openers' (users arriving: first turns and
    // requests without a session); later turns follow from the session model.
    // `turns` holds the session rows in the requests' order: walk both together.
    let mut session_rows = turns.iter();
    let openers: Vec<&TraceRecord> = requests
        .iter()
        .filter(|r| {
            r.session_id.is_none()
                || session_rows
                    .next()
                    .is_some_and(|t| t.turn.is_none_or(|k| k <= 1))
        })
        .collect();
    let t0 = openers
        .first()
        .map_or(requests[0].arrival.0, |r| r.arrival.0);
    let mut secs: Vec<f64> = openers
        .iter()
        .map(|r| (r.arrival.0 - t0) as f64 / 1e9)
        .collect();
    if secs.len() < 2 {
        return Err(SynthError::Degenerate(format!(
            "{} opener(s) (first turns and requests without a session): at least 2 are needed to fit arrivals",
            secs.len()
        )));
    }
    if secs.windows(2).any(|w| w[1] < w[0]) {
        secs.sort_by(f64::total_cmp);
    }
    let span = secs[secs.len() - 1];
    if span <= 0.0 {
        return Err(SynthError::Degenerate(format!(
            "all {} requests arrive at the same instant: no arrival process to fit",
            requests.len()
        )));
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(opts.seed);
    // Quantized timestamps are spread evenly over their bucket (at random) before fitting,
    // so that a bucket's requests are not taken for a burst.
    let quantum = detect_quantum(&secs);
    if let Some(q) = quantum {
        for s in &mut secs {
            *s += rng.random::<f64>() * q;
        }
        secs.sort_by(f64::total_cmp);
    }
    let span = secs[secs.len() - 1] - secs[0];
    let start = secs[0];
    let window = opts.window_s.max(quantum.map_or(0.0, |q| 5.0 * q));
    // The last window is partial: its rate is over its own length.
    let rates = rate_profile(&secs, start, span, window);
    // Rate-normalized gaps: the gap times the local rate has unit mean in a renewal process
    // run in operational time. Equal timestamps (below the clock's resolution) count as half
    // the smallest gap.
    let gaps = normalized_gaps(&secs, start, &rates, window)
        .ok_or_else(|| SynthError::Degenerate("no positive gap between arrivals".into()))?;
    let candidates = fit_all(&subsample(&gaps, FIT_GAPS));
    let law = candidates
        .first()
        .map(|c| c.fit.unit_mean())
        .ok_or_else(|| SynthError::Degenerate("no law could be fitted to the gaps".into()))?;
    let idc = [1.0, 10.0, 60.0, 600.0]
        .iter()
        .map(|&w| (w, index_of_dispersion(&secs, w)))
        .collect();
    let arrivals = Arrivals {
        mean_rate: (secs.len() - 1) as f64 / span,
        quantum_s: quantum,
        window_s: window,
        rates,
        law,
        candidates,
        cv: interarrival_cv(&secs).unwrap_or(f64::NAN),
        idc,
        daily: None,
        clusters: None,
        hawkes: None,
        selection: None,
    };
    let mut arrivals = arrivals;
    arrivals.daily = daily_profile(&arrivals.rates, window, t0 + (start * 1e9) as i64);
    // Renewal or bursts, decided on held-back data; the winner is fitted to the whole trace.
    let (selection, choice) = select(&secs, window, opts.seed);
    match choice {
        Choice::Renewal => {}
        Choice::Cluster(j, alternating) => {
            arrivals.clusters = fit_clusters(&secs, start, &arrivals.rates, window, j)
                .map(|c| Clusters { alternating, ..c });
        }
        Choice::Hawkes => {
            arrivals.hawkes = Hawkes::fit(middle(&secs), start, &arrivals.rates, window);
        }
    }
    arrivals.selection = Some(selection);
    // The profile without the counts' own noise, which the process adds back.
    arrivals.rates = denoise(&arrivals.rates, window, arrivals.process(), opts.seed, true);
    Ok(WorkloadModel {
        format: MODEL_FORMAT.to_owned(),
        source: Source {
            rows: requests.len() as u64,
            span_s: span,
            start_ns: t0,
        },
        arrivals,
        sizes: fit_sizes(requests, opts, &mut rng)?,
        prefixes: fit_prefixes(requests, opts.block_tokens),
        sessions,
    })
}

fn fit_sizes(
    requests: &[TraceRecord],
    opts: &FitOptions,
    rng: &mut rand::rngs::StdRng,
) -> Result<SizeModel, SynthError> {
    // Per model: its (input, output) pairs and how many requests went to each endpoint.
    type Group<'a> = (Vec<[u32; 2]>, HashMap<&'a str, u64>);
    let mut by_model: BTreeMap<&str, Group<'_>> = BTreeMap::new();
    for r in requests {
        let (Some(i), Some(o)) = (r.input_tokens, r.output_tokens) else {
            continue;
        };
        if r.failure.is_some() || i == 0 {
            continue;
        }
        let e = by_model.entry(r.model.as_str()).or_default();
        e.0.push([i, o]);
        *e.1.entry(r.endpoint.as_str()).or_default() += 1;
    }
    let total: usize = by_model.values().map(|(p, _)| p.len()).sum();
    if total == 0 {
        return Err(SynthError::Degenerate(
            "no request has both input and output tokens (failed and zero-token rows are left out)"
                .into(),
        ));
    }
    let groups = by_model
        .into_iter()
        .map(|(model, (mut pairs, endpoints))| {
            let weight = pairs.len() as f64 / total as f64;
            if pairs.len() > PAIRS {
                // A uniform subsample keeps the joint distribution.
                for i in 0..PAIRS {
                    let j = rng.random_range(i..pairs.len());
                    pairs.swap(i, j);
                }
                pairs.truncate(PAIRS);
            }
            let endpoint = endpoints
                .into_iter()
                .max_by_key(|&(e, n)| (n, std::cmp::Reverse(e)))
                .map(|(e, _)| e.to_owned())
                .unwrap_or_default();
            SizeGroup {
                model: model.to_owned(),
                endpoint,
                weight,
                lognormal: BivariateLognormal::fit(&pairs),
                pairs,
            }
        })
        .collect();
    Ok(SizeModel {
        groups,
        smoothing: opts.smoothing,
        parametric: opts.parametric_sizes,
    })
}

fn fit_prefixes(requests: &[TraceRecord], block_tokens: Option<usize>) -> Option<Prefixes> {
    let block_tokens = block_tokens?;
    let mut seen: HashSet<u64> = HashSet::new();
    let (mut with, mut sharing, mut fraction) = (0u64, 0u64, 0.0);
    for r in requests {
        let Some(h) = r.prefix_hashes.as_ref().filter(|h| !h.is_empty()) else {
            continue;
        };
        with += 1;
        let shared = h.iter().take_while(|x| seen.contains(x)).count();
        if shared > 0 {
            sharing += 1;
            fraction += shared as f64 / h.len() as f64;
        }
        seen.extend(h.iter().copied());
    }
    (with > 0).then(|| Prefixes {
        block_tokens,
        share_ratio: sharing as f64 / with as f64,
        shared_fraction: if sharing > 0 {
            fraction / sharing as f64
        } else {
            0.0
        },
    })
}

/// The session model of `slim` (a trace's [`reprise_trace::sessions::session_turns`]) out
/// of `rows` requests in all.
fn fit_sessions(slim: &[TraceRecord], rows: usize) -> Option<Sessions> {
    if slim.is_empty() {
        return None;
    }
    let mut per: HashMap<&str, Vec<&TraceRecord>> = HashMap::new();
    for r in slim {
        per.entry(r.session_id.as_deref().unwrap_or(""))
            .or_default()
            .push(r);
    }
    let mut turns: std::collections::BTreeMap<u32, u64> = std::collections::BTreeMap::new();
    let (mut think, mut service, mut gap, mut growth, mut first) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for list in per.values_mut() {
        list.sort_by_key(|r| (r.turn, r.arrival));
        *turns.entry(list.len() as u32).or_default() += 1;
        if let (Some(i), Some(o)) = (list[0].input_tokens, list[0].output_tokens) {
            first.push([i, o]);
        }
        for w in list.windows(2) {
            let (prev, r) = (w[0], w[1]);
            if let Some(t) = r.think_us {
                think.push(t as f64 / 1e6);
            }
            if let Some(e) = prev.e2e_us {
                service.push(e as f64 / 1e6);
            }
            gap.push((r.arrival.0 - prev.arrival.0) as f64 / 1e9);
            if let (Some(i0), Some(o0), Some(i1)) =
                (prev.input_tokens, prev.output_tokens, r.input_tokens)
            {
                growth.push((f64::from(i1) - f64::from(i0) - f64::from(o0)).max(0.0));
            }
        }
    }
    let n = per.len() as f64;
    if first.len() > 4096 {
        // Every k-th, evenly over the trace.
        let step = first.len().div_ceil(4096);
        first = first.into_iter().step_by(step).collect();
    }
    Some(Sessions {
        start_share: n / ((rows - slim.len()) as f64 + n),
        requests_per_opener: rows as f64 / ((rows - slim.len()) as f64 + n),
        with_session: slim.len() as f64 / rows as f64,
        requests_per_session: slim.len() as f64 / n,
        turns: turns.into_iter().map(|(k, c)| (k, c as f64 / n)).collect(),
        think_s: quantiles(think),
        service_s: quantiles(service),
        gap_s: quantiles(gap),
        growth: quantiles(growth),
        first,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use reprise_trace::Timestamp;

    fn at(secs: &[f64]) -> Vec<TraceRecord> {
        secs.iter()
            .enumerate()
            .map(|(i, &s)| {
                let mut r = TraceRecord::new(format!("{i}"), Timestamp((s * 1e9) as i64));
                r.input_tokens = Some(100 + i as u32);
                r.output_tokens = Some(10);
                r
            })
            .collect()
    }

    #[test]
    fn degenerate_traces_say_why() {
        let e = fit(&at(&[1.0]), &FitOptions::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("at least 2"), "{e}");
        let e = fit(&at(&[5.0; 10]), &FitOptions::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("same instant"), "{e}");
        let mut zero = at(&[0.0, 1.0, 2.0]);
        for r in &mut zero {
            r.output_tokens = None;
        }
        let e = fit(&zero, &FitOptions::default()).unwrap_err().to_string();
        assert!(e.contains("input and output"), "{e}");
    }

    #[test]
    fn a_gap_of_hours_is_a_quiet_window_not_an_error() {
        let mut secs: Vec<f64> = (0..100).map(|i| i as f64 * 0.5).collect();
        secs.extend((0..100).map(|i| 7200.0 + i as f64 * 0.5));
        let m = fit(&at(&secs), &FitOptions::default()).unwrap();
        assert!(m.arrivals.rates.iter().filter(|&&r| r == 0.0).count() > 100);
        assert!((m.arrivals.mean_rate - 199.0 / (7200.0 + 49.5)).abs() < 1e-9);
    }

    #[test]
    fn a_trace_of_days_gets_its_hour_of_day_profile() {
        // Three days: 1 request/s from 12:00 to 18:00 UTC, one every 10 s otherwise.
        let mut secs = Vec::new();
        let mut t = 0.0;
        while t < 3.0 * 86_400.0 {
            let hour = (t % 86_400.0) / 3600.0;
            secs.push(t);
            t += if (12.0..18.0).contains(&hour) {
                1.0
            } else {
                10.0
            };
        }
        let m = fit(&at(&secs), &FitOptions::default()).unwrap();
        let daily = m.arrivals.daily.expect("two days or more");
        assert_eq!(daily.len(), 24);
        assert!(
            (daily[14] - 1.0).abs() < 0.05 && (daily[3] - 0.1).abs() < 0.01,
            "{daily:?}"
        );
        let short = fit(&at(&secs[..1000]), &FitOptions::default()).unwrap();
        assert_eq!(short.arrivals.daily, None);
    }

    #[test]
    fn the_bivariate_lognormal_recovers_its_parameters() {
        let truth = BivariateLognormal {
            mu_in: 6.5,
            sigma_in: 1.0,
            mu_out: 4.5,
            sigma_out: 0.7,
            rho: 0.6,
        };
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let pairs: Vec<[u32; 2]> = (0..50_000).map(|_| truth.sample(&mut rng)).collect();
        let f = BivariateLognormal::fit(&pairs).unwrap();
        assert!(
            (f.mu_in - 6.5).abs() < 0.02 && (f.sigma_in - 1.0).abs() < 0.02,
            "{f:?}"
        );
        assert!(
            (f.mu_out - 4.5).abs() < 0.02 && (f.sigma_out - 0.7).abs() < 0.02,
            "{f:?}"
        );
        assert!((f.rho - 0.6).abs() < 0.02, "{f:?}");
    }

    #[test]
    fn quantized_timestamps_are_detected() {
        // 3-second buckets with several requests each.
        let secs: Vec<f64> = (0..600).map(|i| (i / 4) as f64 * 3.0).collect();
        assert_eq!(detect_quantum(&secs), Some(3.0));
        let even: Vec<f64> = (0..600).map(|i| i as f64 * 0.37).collect();
        assert_eq!(detect_quantum(&even), None);
        let m = fit(&at(&secs), &FitOptions::default()).unwrap();
        assert_eq!(m.arrivals.quantum_s, Some(3.0));
        // Spread over their buckets, four requests per 3 s are regular, not bursts.
        assert!(m.arrivals.law.cv() < 1.2, "{:?}", m.arrivals.law);
    }
}
