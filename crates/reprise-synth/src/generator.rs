//! `synth gen`: a workload drawn from a model, rescaled the way the question needs.
//!
//! Arrivals follow the model's process ([`crate::bursts::Process`]): a renewal process run in
//! operational time (unit-mean gaps from the fitted law mapped through the cumulative rate of
//! the piecewise-constant profile, so the local rate follows the profile and the short-term
//! burstiness the law), or bursts whose starts follow the profile. Every mode delivers the
//! asked factor of requests exactly: the expected count of the scaled profile over the run
//! (random arrivals removed, or added from further realisations, to reach it). What each
//! mode does to the index of dispersion curve IDC(w): `superpose` keeps it (independent
//! copies: variance and mean both grow K-fold), `model` keeps its short-scale part while the
//! profile's part grows with K (one stream at K times the rate), `compress` shifts it
//! (IDC_gen(w) = IDC_src(K·w): bursts concentrate as replaying at `--speed K` does), `thin`
//! moves it towards 1 (IDC − 1 shrinks by K).

use std::collections::VecDeque;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use reprise_trace::{Timestamp, TraceRecord};
use serde::{Deserialize, Serialize};

use crate::SynthError;
use crate::bursts::Process;
use crate::dist::Law;
use crate::model::{WorkloadModel, hour_of_day};

/// How `--scale K` is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// K independent streams (more users): time scales and burstiness kept, fluctuations of
    /// different streams independent (each follows the rate trend with its own residuals),
    /// prefixes and sessions per stream.
    Superpose,
    /// The same users K times faster: time compressed by K (every gap shrinks, bursts
    /// concentrate: the index of dispersion at a fixed window rises).
    Compress,
    /// Down only (K ≤ 1): each request kept with probability K.
    Thin,
    /// The fitted rate profile times K, one stream.
    Model,
}

/// Options of a generation.
#[derive(Debug, Clone)]
pub struct GenOptions {
    /// Seconds to generate (default: the source's span).
    pub duration_s: Option<f64>,
    /// Seed: the same seed and options give the same workload.
    pub seed: u64,
    /// Load factor.
    pub scale: f64,
    /// How the factor is applied.
    pub mode: Mode,
    /// A target mean rate instead of `scale` (requests/s).
    pub rate: Option<f64>,
    /// A burstiness: the CV of the gaps (a gamma law replaces the fitted one).
    pub cv: Option<f64>,
    /// Lengths multiplied by this.
    pub length_scale: f64,
    /// A prefix-sharing ratio instead of the fitted one.
    pub prefix_share: Option<f64>,
    /// Only this part of the source's time (seconds from its start), e.g. a busy hour.
    pub window: Option<(f64, f64)>,
}

impl Default for GenOptions {
    fn default() -> Self {
        GenOptions {
            duration_s: None,
            seed: 0,
            scale: 1.0,
            mode: Mode::Superpose,
            rate: None,
            cv: None,
            length_scale: 1.0,
            prefix_share: None,
            window: None,
        }
    }
}

/// What was generated.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GenSummary {
    /// Requests.
    pub requests: u64,
    /// Seconds covered.
    pub duration_s: f64,
    /// The load factor applied (from `scale` or `rate`).
    pub scale: f64,
}

/// Expected arrivals of a rate profile (repeating past its end) over `length` seconds.
fn profile_count(rates: &[f64], window: f64, length: f64) -> f64 {
    let mut total = 0.0;
    let mut w = 0usize;
    while !rates.is_empty() && (w as f64) * window < length {
        let len = window.min(length - w as f64 * window);
        total += rates[w % rates.len()] * len;
        w += 1;
    }
    total
}

/// Makes `times` exactly `target` long: random arrivals removed, or taken at random from
/// further independent realisations (`more`), then sorted. The structure of the process is
/// kept up to the few percent of arrivals moved.
fn pin_count(
    times: &mut Vec<f64>,
    target: usize,
    rng: &mut StdRng,
    mut more: impl FnMut(u64) -> Vec<f64>,
) {
    let mut round = 0u64;
    while times.len() < target && round < 1000 {
        round += 1;
        let mut extra = more(round);
        let need = target - times.len();
        if extra.len() > need {
            // A random subset of `need`: a partial Fisher-Yates shuffle.
            for i in 0..need {
                let j = rng.random_range(i..extra.len());
                extra.swap(i, j);
            }
            extra.truncate(need);
        }
        times.extend(extra);
    }
    if times.len() > target {
        let surplus = times.len() - target;
        let mut drop = vec![false; times.len()];
        let mut idx: Vec<usize> = (0..times.len()).collect();
        for i in 0..surplus {
            let j = rng.random_range(i..idx.len());
            idx.swap(i, j);
            drop[idx[i]] = true;
        }
        let mut k = 0;
        times.retain(|_| {
            k += 1;
            !drop[k - 1]
        });
    }
    times.sort_unstable_by(f64::total_cmp);
}

/// The rate shared by independent streams: the model's hour-of-day profile where it has
/// one, else the overall mean.
fn common_profile(model: &WorkloadModel, rates: &[f64], window: f64, first: usize) -> Vec<f64> {
    let mean = rates.iter().sum::<f64>() / rates.len().max(1) as f64;
    match &model.arrivals.daily {
        Some(daily) if daily.len() == 24 => (0..rates.len())
            .map(|w| daily[hour_of_day(model.source.start_ns, (first + w) as f64 * window)])
            .collect(),
        _ => vec![mean; rates.len()],
    }
}

/// Pearson correlation of `a` with `b` shifted circularly by `offset` (0 when either is flat).
fn correlation(a: &[f64], b: &[f64], offset: usize) -> f64 {
    let n = a.len() as f64;
    let (ma, mb) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
    let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
    for (w, x) in a.iter().enumerate() {
        let y = b[(w + offset) % b.len()];
        sab += (x - ma) * (y - mb);
        saa += (x - ma).powi(2);
        sbb += (y - mb).powi(2);
    }
    if saa > 0.0 && sbb > 0.0 {
        sab / (saa * sbb).sqrt()
    } else {
        0.0
    }
}

/// Generates the workload, handing each request to `sink` in arrival order.
pub fn generate<E>(
    model: &WorkloadModel,
    opts: &GenOptions,
    mut sink: impl FnMut(TraceRecord) -> Result<(), E>,
) -> Result<GenSummary, SynthError>
where
    E: std::fmt::Display,
{
    let a = &model.arrivals;
    let mut rates = a.rates.clone();
    let mut first_window = 0usize;
    if let Some((from, to)) = opts.window {
        let (i, j) = (
            (from / a.window_s) as usize,
            (to / a.window_s).ceil() as usize,
        );
        if !(from >= 0.0 && to > from && i < rates.len()) {
            return Err(SynthError::Setting {
                setting: "window",
                message: format!(
                    "{from}..{to}: outside the source's 0..{:.0} s",
                    model.source.span_s
                ),
            });
        }
        rates = rates[i..j.min(rates.len())].to_vec();
        first_window = i;
    }
    let profile_mean = rates.iter().sum::<f64>() / rates.len().max(1) as f64;
    if profile_mean.is_nan() || profile_mean <= 0.0 {
        return Err(SynthError::Degenerate("the rate profile is empty".into()));
    }
    // With conversations the profile is the openers'; each brings its later turns.
    let per_opener = model
        .sessions
        .as_ref()
        .filter(|s| !s.turns.is_empty())
        .map_or(1.0, |s| s.requests_per_opener.max(1.0));
    let scale = match opts.rate {
        Some(r) if r > 0.0 => r / (profile_mean * per_opener),
        Some(r) => {
            return Err(SynthError::Setting {
                setting: "rate",
                message: format!("{r}: must be positive"),
            });
        }
        None => opts.scale,
    };
    if !(scale.is_finite() && scale > 0.0) {
        return Err(SynthError::Setting {
            setting: "scale",
            message: format!("{scale}: must be positive"),
        });
    }
    if opts.mode == Mode::Thin && scale > 1.0 {
        return Err(SynthError::Setting {
            setting: "mode",
            message: format!(
                "thin only scales down (got {scale:.3}); use superpose, compress or model"
            ),
        });
    }
    if !(opts.length_scale.is_finite() && opts.length_scale > 0.0) {
        return Err(SynthError::Setting {
            setting: "length-scale",
            message: format!("{}: must be positive", opts.length_scale),
        });
    }
    let source_duration = match opts.window {
        Some((from, to)) => to - from,
        None => model.source.span_s,
    };
    let duration = opts.duration_s.unwrap_or(source_duration);
    if !(duration.is_finite() && duration > 0.0) {
        return Err(SynthError::Setting {
            setting: "duration",
            message: format!("{duration}: must be positive"),
        });
    }
    let law = match opts.cv {
        Some(cv) if cv > 0.0 => Some(Law::Gamma {
            k: 1.0 / (cv * cv),
            theta: cv * cv,
        }),
        Some(cv) => {
            return Err(SynthError::Setting {
                setting: "cv",
                message: format!("{cv}: must be positive"),
            });
        }
        None => None,
    };
    // A burstiness asked for replaces the fitted process by a renewal one with that CV.
    let process = match &law {
        Some(l) => Process::Renewal(l),
        None => a.process(),
    };
    let mut rng = StdRng::seed_from_u64(opts.seed);
    // The streams' shared profile and residuals, for superpose.
    let tr = common_profile(model, &rates, a.window_s, first_window);
    let resid: Vec<f64> = rates
        .iter()
        .zip(&tr)
        .map(|(r, t)| if *t > 0.0 { r / t } else { 0.0 })
        .collect();
    // One realisation of the asked load (`seed` makes it; the pinning below asks for more).
    let draw = |seed: u64| -> Vec<f64> {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut times = Vec::new();
        match opts.mode {
            Mode::Model => {
                let scaled: Vec<f64> = rates.iter().map(|r| r * scale).collect();
                times = process.times(&scaled, a.window_s, duration, &mut rng);
            }
            Mode::Compress => {
                times = process.times(&rates, a.window_s, duration * scale, &mut rng);
                for t in &mut times {
                    *t /= scale;
                }
            }
            Mode::Thin => {
                times = process.times(&rates, a.window_s, duration, &mut rng);
                times.retain(|_| rng.random::<f64>() < scale);
            }
            Mode::Superpose => {
                // What all streams share is the time-of-day profile (when the source spans
                // two days or more); the rest of the fluctuation is each stream's own: stream
                // s follows the residuals shifted by its own offset, so streams are
                // independent and the index of dispersion stays what it was.
                let whole = scale.floor() as usize;
                let frac = scale - whole as f64;
                let n = rates.len();
                // The residuals of the streams so far, summed: each new stream takes, among
                // 64 random offsets, the one least correlated with them (a circular shift of
                // a short profile is not independent by itself).
                let mut sum = vec![0.0; n];
                for s in 0..whole + usize::from(frac > 1e-9) {
                    let offset = if s == 0 {
                        0
                    } else {
                        (0..64)
                            .map(|_| rng.random_range(0..n))
                            .min_by(|&a, &b| {
                                let ca = correlation(&sum, &resid, a).abs();
                                let cb = correlation(&sum, &resid, b).abs();
                                ca.total_cmp(&cb)
                            })
                            .unwrap_or(0)
                    };
                    for (w, v) in sum.iter_mut().enumerate() {
                        *v += resid[(w + offset) % n];
                    }
                    let keep = if s == whole { frac } else { 1.0 };
                    let own: Vec<f64> = (0..n)
                        .map(|w| tr[w] * resid[(w + offset) % n] * keep)
                        .collect();
                    let mut srng =
                        StdRng::seed_from_u64(seed.wrapping_add(0x9E37 * (s as u64 + 1)));
                    times.extend(process.times(&own, a.window_s, duration, &mut srng));
                }
                times.sort_unstable_by(f64::total_cmp);
            }
        }
        times
    };
    let mut times = draw(opts.seed);
    // The asked factor of requests, exactly: the expected count of the scaled profile over
    // the run, not left to chance (a bursty process's count varies by several percent).
    let expected = match opts.mode {
        Mode::Compress => profile_count(&rates, a.window_s, duration * scale),
        _ => scale * profile_count(&rates, a.window_s, duration),
    };
    pin_count(&mut times, expected.round() as usize, &mut rng, |k| {
        draw(opts.seed ^ 0xA5A5_0000_0000_0000 ^ k)
    });

    let groups = &model.sizes.groups;
    let cumulative: Vec<f64> = groups
        .iter()
        .scan(0.0, |acc, g| {
            *acc += g.weight;
            Some(*acc)
        })
        .collect();
    let share = opts
        .prefix_share
        .or(model.prefixes.as_ref().map(|p| p.share_ratio));
    let mut history: VecDeque<Vec<u64>> = VecDeque::with_capacity(4096);
    let mut sessions: Vec<String> = Vec::new();
    let mut next_session = 0u64;
    let anchor = model.source.start_ns;
    let end_ns = anchor + (duration * 1e9) as i64;
    // Conversations (a model fitted on a trace with sessions): arrivals are openers, a
    // share of which start a session whose later turns follow its think times.
    let conversations = model.sessions.as_ref().filter(|s| !s.turns.is_empty());
    let time_factor = if opts.mode == Mode::Compress {
        1.0 / scale
    } else {
        1.0
    };
    let mut pending: std::collections::BinaryHeap<Later> = std::collections::BinaryHeap::new();
    let mut emitted = 0u64;
    let mut emit = |mut r: TraceRecord| -> Result<(), SynthError> {
        r.request_id = format!("syn-{emitted:09}");
        emitted += 1;
        sink(r).map_err(|e| SynthError::Output(e.to_string()))
    };
    for &t in &times {
        let at = anchor + (t * 1e9) as i64;
        while pending.peek().is_some_and(|l| l.0.arrival.0 <= at) {
            emit(pending.pop().expect("peeked").0)?;
        }
        let x = rng.random::<f64>() * cumulative.last().copied().unwrap_or(1.0);
        let g = &groups[cumulative
            .iter()
            .position(|&c| x < c)
            .unwrap_or(groups.len() - 1)];
        let [mut input, mut output] = match (model.sizes.parametric, &g.lognormal) {
            (true, Some(l)) => l.sample(&mut rng),
            _ => g.pairs[rng.random_range(0..g.pairs.len())],
        };
        let mut starts_session = false;
        if let Some(c) = conversations
            && rng.random::<f64>() < c.start_share
        {
            starts_session = true;
            if !c.first.is_empty() {
                [input, output] = c.first[rng.random_range(0..c.first.len())];
            }
        }
        let jitter = |n: u32, rng: &mut StdRng| {
            let s = model.sizes.smoothing;
            let f = if s > 0.0 {
                1.0 + s * (rng.random::<f64>() * 2.0 - 1.0)
            } else {
                1.0
            };
            ((f64::from(n) * f * opts.length_scale).round() as u32).max(1)
        };
        let mut r = TraceRecord::new(String::new(), Timestamp(at));
        r.model = g.model.clone();
        r.endpoint = g.endpoint.clone();
        r.input_tokens = Some(jitter(input, &mut rng));
        r.output_tokens = Some(jitter(output, &mut rng));
        r.input_tokens_source = "synthetic".into();
        if let Some(p) = &model.prefixes {
            let blocks = r.input_tokens.unwrap_or(0) as usize / p.block_tokens.max(1);
            let mut hashes = Vec::with_capacity(blocks);
            if let Some(share) = share
                && !history.is_empty()
                && rng.random::<f64>() < share
            {
                let prev = &history[rng.random_range(0..history.len())];
                let k = ((p.shared_fraction * blocks as f64).round() as usize)
                    .clamp(1, blocks.max(1))
                    .min(prev.len());
                hashes.extend_from_slice(&prev[..k]);
            }
            while hashes.len() < blocks {
                hashes.push(rng.random());
            }
            if history.len() == 4096 {
                history.pop_front();
            }
            history.push_back(hashes.clone());
            r.prefix_hashes = Some(hashes);
        }
        match (conversations, &model.sessions) {
            (Some(c), _) if starts_session => {
                let id = format!("syn-s{next_session}");
                next_session += 1;
                r.session_id = Some(id);
                r.turn = Some(1);
                let later = later_turns(&r, c, model, opts.length_scale, time_factor, &mut rng);
                pending.extend(
                    later
                        .into_iter()
                        .filter(|l| l.arrival.0 < end_ns)
                        .map(Later),
                );
            }
            (Some(_), _) => {}
            // A model without turns: session ids spread over requests.
            (None, Some(s)) if rng.random::<f64>() < s.with_session => {
                let new = sessions.is_empty()
                    || rng.random::<f64>() < 1.0 / s.requests_per_session.max(1.0);
                if new {
                    if sessions.len() == 256 {
                        sessions.swap_remove(rng.random_range(0..256));
                    }
                    sessions.push(format!("syn-s{next_session}"));
                    next_session += 1;
                    r.session_id = sessions.last().cloned();
                } else {
                    r.session_id = Some(sessions[rng.random_range(0..sessions.len())].clone());
                }
            }
            (None, _) => {}
        }
        emit(r)?;
    }
    while let Some(l) = pending.pop() {
        emit(l.0)?;
    }
    Ok(GenSummary {
        requests: emitted,
        duration_s: duration,
        scale,
    })
}

/// A session's later turn, waiting in the generator until its arrival (earliest first).
struct Later(TraceRecord);

impl PartialEq for Later {
    fn eq(&self, other: &Self) -> bool {
        self.0.arrival == other.0.arrival
    }
}
impl Eq for Later {}
impl PartialOrd for Later {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Later {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        other.0.arrival.cmp(&self.0.arrival)
    }
}

/// The later turns of a session whose first turn is `first`: turns per session, think
/// times, response times and context growth drawn from the model. Each turn's prompt holds
/// the previous prompt, its answer and new tokens; its prefix hashes extend the previous
/// turn's; its arrival is the previous arrival + a response time + a think time (times
/// `time_factor`), or a start-to-start gap when the model has no think times.
fn later_turns(
    first: &TraceRecord,
    c: &crate::model::Sessions,
    model: &WorkloadModel,
    length_scale: f64,
    time_factor: f64,
    rng: &mut StdRng,
) -> Vec<TraceRecord> {
    use crate::model::sample_quantiles;
    let x = rng.random::<f64>();
    let mut acc = 0.0;
    let n = c
        .turns
        .iter()
        .find(|(_, share)| {
            acc += share;
            x < acc
        })
        .or(c.turns.last())
        .map_or(1, |(k, _)| *k);
    let mut out = Vec::new();
    let mut prev = first.clone();
    for turn in 2..=n {
        let mut r = TraceRecord::new(String::new(), prev.arrival);
        let secs = |v: f64| (v.max(0.0) * time_factor * 1e9) as i64;
        match (
            sample_quantiles(&c.think_s, rng),
            sample_quantiles(&c.service_s, rng),
        ) {
            (Some(think), Some(service)) => {
                r.arrival.0 = prev.arrival.0 + secs(service) + secs(think);
                r.think_us = Some((secs(think) / 1000) as u64);
            }
            _ => {
                let gap = sample_quantiles(&c.gap_s, rng).unwrap_or(0.0);
                r.arrival.0 = prev.arrival.0 + secs(gap);
            }
        }
        let growth = sample_quantiles(&c.growth, rng).unwrap_or(0.0) * length_scale;
        let before =
            u64::from(prev.input_tokens.unwrap_or(0)) + u64::from(prev.output_tokens.unwrap_or(0));
        r.input_tokens =
            Some((before + growth.round().max(1.0) as u64).min(u64::from(u32::MAX)) as u32);
        let output = if c.first.is_empty() {
            prev.output_tokens.unwrap_or(1)
        } else {
            c.first[rng.random_range(0..c.first.len())][1]
        };
        r.output_tokens = Some(((f64::from(output) * length_scale).round() as u32).max(1));
        r.input_tokens_source = "synthetic".into();
        r.model = prev.model.clone();
        r.endpoint = prev.endpoint.clone();
        r.session_id = prev.session_id.clone();
        r.turn = Some(turn);
        if let (Some(p), Some(h)) = (&model.prefixes, &prev.prefix_hashes) {
            let blocks = r.input_tokens.unwrap_or(0) as usize / p.block_tokens.max(1);
            let mut hashes = h.clone();
            hashes.truncate(blocks);
            while hashes.len() < blocks {
                hashes.push(rng.random());
            }
            r.prefix_hashes = Some(hashes);
        }
        out.push(r.clone());
        prev = r;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Lengths, plain_model};
    use reprise_trace::stats::index_of_dispersion;

    fn run(model: &WorkloadModel, opts: &GenOptions) -> Vec<TraceRecord> {
        let mut out = Vec::new();
        generate(model, opts, |r| {
            out.push(r);
            Ok::<_, String>(())
        })
        .unwrap();
        out
    }

    fn secs(rows: &[TraceRecord]) -> Vec<f64> {
        rows.iter().map(|r| r.arrival.0 as f64 / 1e9).collect()
    }

    /// A bursty source: a rate drawn between 2 and 18 req/s for each 60 s window, 2 hours.
    fn bursty() -> WorkloadModel {
        let mut m = plain_model(10.0, 1.0, Lengths::Fixed(100), Lengths::Fixed(10), 1).unwrap();
        m.arrivals.window_s = 60.0;
        let mut rng = StdRng::seed_from_u64(42);
        m.arrivals.rates = (0..120).map(|_| 2.0 + 16.0 * rng.random::<f64>()).collect();
        m.source.span_s = 7200.0;
        m
    }

    #[test]
    fn the_same_seed_gives_the_same_workload() {
        let m = bursty();
        let opts = GenOptions {
            seed: 7,
            duration_s: Some(600.0),
            ..GenOptions::default()
        };
        assert_eq!(run(&m, &opts), run(&m, &opts));
        let other = GenOptions {
            seed: 8,
            ..opts.clone()
        };
        assert_ne!(run(&m, &opts).len(), 0);
        assert_ne!(run(&m, &opts), run(&m, &other));
    }

    #[test]
    fn poisson_at_a_rate_is_poisson() {
        let m = plain_model(50.0, 1.0, Lengths::Fixed(10), Lengths::Fixed(5), 0).unwrap();
        let rows = run(
            &m,
            &GenOptions {
                duration_s: Some(2000.0),
                ..GenOptions::default()
            },
        );
        let t = secs(&rows);
        let rate = rows.len() as f64 / 2000.0;
        assert!((rate - 50.0).abs() < 0.5, "{rate}");
        for w in [1.0, 10.0] {
            let idc = index_of_dispersion(&t, w).unwrap();
            assert!((idc - 1.0).abs() < 0.1, "IDC@{w} {idc}");
        }
        // A gamma with CV 2 is burstier at short windows.
        let m = plain_model(50.0, 2.0, Lengths::Fixed(10), Lengths::Fixed(5), 0).unwrap();
        let t = secs(&run(
            &m,
            &GenOptions {
                duration_s: Some(2000.0),
                ..GenOptions::default()
            },
        ));
        let idc = index_of_dispersion(&t, 10.0).unwrap();
        assert!(
            (idc - 4.0).abs() < 0.6,
            "renewal IDC tends to CV² = 4: {idc}"
        );
    }

    #[test]
    fn each_mode_scales_as_the_theory_says() {
        let m = bursty();
        let base = GenOptions {
            seed: 3,
            ..GenOptions::default()
        };
        let t1 = secs(&run(&m, &base));
        let idc1 = index_of_dispersion(&t1, 60.0).unwrap();
        let rate1 = t1.len() as f64 / 7200.0;
        assert!((rate1 - 10.0).abs() < 0.2, "{rate1}");
        // Superpose: twice the rate, the index of dispersion kept (the streams' bursts are
        // independent).
        let t2 = secs(&run(
            &m,
            &GenOptions {
                scale: 2.0,
                ..base.clone()
            },
        ));
        let (rate2, idc2) = (
            t2.len() as f64 / 7200.0,
            index_of_dispersion(&t2, 60.0).unwrap(),
        );
        assert!((rate2 / rate1 - 2.0).abs() < 0.04, "{rate2}");
        assert!((idc2 / idc1 - 1.0).abs() < 0.2, "{idc1} -> {idc2}");
        // Model: one stream on the doubled profile: the dispersion doubles.
        let tm = secs(&run(
            &m,
            &GenOptions {
                scale: 2.0,
                mode: Mode::Model,
                ..base.clone()
            },
        ));
        let idcm = index_of_dispersion(&tm, 60.0).unwrap();
        assert!((idcm / idc1 - 2.0).abs() < 0.3, "{idc1} -> {idcm}");
        // Compress: twice the rate in half the time; each 60 s burst now lasts 30 s, so at a
        // fixed 30 s window the counts vary more (the index of dispersion rises).
        let tc = secs(&run(
            &m,
            &GenOptions {
                scale: 2.0,
                mode: Mode::Compress,
                duration_s: Some(3600.0),
                ..base.clone()
            },
        ));
        let ratec = tc.len() as f64 / 3600.0;
        assert!((ratec / rate1 - 2.0).abs() < 0.05, "{ratec}");
        let idc_c = index_of_dispersion(&tc, 30.0).unwrap();
        let idc_1 = index_of_dispersion(&t1, 30.0).unwrap();
        assert!(
            idc_c > 1.5 * idc_1,
            "compressed bursts at a fixed window: {idc_1} -> {idc_c}"
        );
        // Thin: half the rate; up is refused.
        let tt = secs(&run(
            &m,
            &GenOptions {
                scale: 0.5,
                mode: Mode::Thin,
                ..base.clone()
            },
        ));
        assert!((tt.len() as f64 / 7200.0 / rate1 - 0.5).abs() < 0.03);
        let e = generate(
            &m,
            &GenOptions {
                scale: 2.0,
                mode: Mode::Thin,
                ..base
            },
            |_| Ok::<_, String>(()),
        );
        assert!(e.unwrap_err().to_string().contains("only scales down"));
    }

    #[test]
    fn what_if_overrides_apply() {
        let m = bursty();
        let rows = run(
            &m,
            &GenOptions {
                rate: Some(30.0),
                length_scale: 0.5,
                window: Some((0.0, 1200.0)),
                ..GenOptions::default()
            },
        );
        let rate = rows.len() as f64 / 1200.0;
        assert!((rate - 30.0).abs() < 1.0, "{rate}");
        assert!(
            rows.iter()
                .all(|r| r.input_tokens == Some(50) && r.output_tokens == Some(5))
        );
        let e = generate(
            &m,
            &GenOptions {
                window: Some((9000.0, 9999.0)),
                ..GenOptions::default()
            },
            |_| Ok::<_, String>(()),
        );
        assert!(e.unwrap_err().to_string().contains("outside"));
    }

    #[test]
    fn prefixes_and_sessions_follow_the_model() {
        let mut m = plain_model(20.0, 1.0, Lengths::Fixed(64), Lengths::Fixed(4), 0).unwrap();
        m.prefixes = Some(crate::model::Prefixes {
            block_tokens: 16,
            share_ratio: 0.4,
            shared_fraction: 0.5,
        });
        m.sessions = Some(crate::model::Sessions {
            with_session: 1.0,
            requests_per_session: 5.0,
            ..crate::model::Sessions::default()
        });
        let rows = run(
            &m,
            &GenOptions {
                duration_s: Some(500.0),
                ..GenOptions::default()
            },
        );
        let mut seen = std::collections::HashSet::new();
        let mut shared = 0;
        for r in &rows {
            let h = r.prefix_hashes.as_ref().unwrap();
            assert_eq!(h.len(), 4);
            shared += usize::from(!seen.insert(h[0]));
        }
        let ratio = shared as f64 / rows.len() as f64;
        assert!((ratio - 0.4).abs() < 0.04, "{ratio}");
        let sessions: std::collections::HashSet<_> =
            rows.iter().filter_map(|r| r.session_id.clone()).collect();
        let per = rows.len() as f64 / sessions.len() as f64;
        assert!((per - 5.0).abs() < 0.6, "{per}");
    }

    #[test]
    fn conversations_follow_the_fitted_turns_think_times_and_growth() {
        // A source of 3-turn conversations: 2 s responses, 10 s think time, 50 new tokens
        // a turn; and as many requests without a session.
        let mut source = Vec::new();
        for s in 0..400u32 {
            let start = f64::from(s) * 3.0;
            let mut input = 100;
            for k in 0..3u32 {
                let at = start + f64::from(k) * 12.0;
                let mut r = TraceRecord::new(format!("{s}-{k}"), Timestamp::from_secs_f64(at));
                r.session_id = Some(format!("s{s}"));
                r.input_tokens = Some(input);
                r.output_tokens = Some(20);
                r.e2e_us = Some(2_000_000);
                source.push(r);
                input += 20 + 50;
            }
            let mut r = TraceRecord::new(format!("x{s}"), Timestamp::from_secs_f64(start + 1.5));
            r.input_tokens = Some(300);
            r.output_tokens = Some(30);
            source.push(r);
        }
        source.sort_by_key(|r| r.arrival);
        let m = crate::model::fit(&source, &crate::model::FitOptions::default()).unwrap();
        let c = m.sessions.as_ref().unwrap();
        assert_eq!(c.turns, [(3, 1.0)]);
        assert!((c.think_s[50] - 10.0).abs() < 1e-9, "{:?}", c.think_s);
        assert!((c.growth[50] - 50.0).abs() < 1e-9);
        assert!((c.with_session - 0.75).abs() < 1e-9);
        let rows = run(
            &m,
            &GenOptions {
                seed: 3,
                ..GenOptions::default()
            },
        );
        // The request count is kept in expectation (sessions cut at the end lose turns).
        let n = rows.len() as f64 / source.len() as f64;
        assert!((0.85..1.1).contains(&n), "{n}");
        let mut by: std::collections::HashMap<&str, Vec<&TraceRecord>> = Default::default();
        for r in &rows {
            if let Some(s) = &r.session_id {
                by.entry(s).or_default().push(r);
            }
        }
        let mut full = 0;
        for turns in by.values() {
            assert_eq!(turns[0].turn, Some(1));
            full += usize::from(turns.len() == 3);
            for w in turns.windows(2) {
                // Arrival = previous arrival + 2 s response + 10 s think; the prompt holds
                // the previous prompt and answer and 50 new tokens.
                assert_eq!(w[1].think_us, Some(10_000_000));
                assert_eq!((w[1].arrival.0 - w[0].arrival.0) / 1_000_000, 12_000);
                assert_eq!(
                    w[1].input_tokens.unwrap(),
                    w[0].input_tokens.unwrap() + w[0].output_tokens.unwrap() + 50
                );
                assert_eq!(w[1].turn.unwrap(), w[0].turn.unwrap() + 1);
            }
        }
        assert!(full * 10 >= by.len() * 9, "{full} of {}", by.len());
        // Rows come in arrival order.
        assert!(rows.windows(2).all(|w| w[0].arrival <= w[1].arrival));
        let share =
            rows.iter().filter(|r| r.session_id.is_some()).count() as f64 / rows.len() as f64;
        assert!((share - 0.75).abs() < 0.06, "{share}");
        // `synth check` compares the conversations too.
        let report = crate::check::check(&source, &rows, 1.0);
        let find = |m: &str| report.rows.iter().find(|r| r.metric == m).unwrap().clone();
        for m in [
            "share of requests in sessions",
            "turns per session (mean)",
            "think time p50 (s)",
            "new tokens per later turn p50",
        ] {
            assert_eq!(find(m).pass, Some(true), "{:?}", find(m));
        }
        assert!((find("turns per session (mean)").generated.unwrap() - 3.0).abs() < 0.2);
        // A workload without sessions fails the session rows.
        let plain: Vec<TraceRecord> = rows
            .iter()
            .cloned()
            .map(|mut r| {
                r.session_id = None;
                r
            })
            .collect();
        let report = crate::check::check(&source, &plain, 1.0);
        assert!(!report.pass);
        assert_eq!(
            report
                .rows
                .iter()
                .find(|r| r.metric == "turns per session (mean)")
                .unwrap()
                .pass,
            Some(false)
        );
    }
}
