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
    let scale = match opts.rate {
        Some(r) if r > 0.0 => r / profile_mean,
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
    for (i, &t) in times.iter().enumerate() {
        let x = rng.random::<f64>() * cumulative.last().copied().unwrap_or(1.0);
        let g = &groups[cumulative
            .iter()
            .position(|&c| x < c)
            .unwrap_or(groups.len() - 1)];
        let [input, output] = match (model.sizes.parametric, &g.lognormal) {
            (true, Some(l)) => l.sample(&mut rng),
            _ => g.pairs[rng.random_range(0..g.pairs.len())],
        };
        let jitter = |n: u32, rng: &mut StdRng| {
            let s = model.sizes.smoothing;
            let f = if s > 0.0 {
                1.0 + s * (rng.random::<f64>() * 2.0 - 1.0)
            } else {
                1.0
            };
            ((f64::from(n) * f * opts.length_scale).round() as u32).max(1)
        };
        let mut r = TraceRecord::new(format!("syn-{i:09}"), Timestamp(anchor + (t * 1e9) as i64));
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
        if let Some(s) = &model.sessions
            && rng.random::<f64>() < s.with_session
        {
            let new =
                sessions.is_empty() || rng.random::<f64>() < 1.0 / s.requests_per_session.max(1.0);
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
        sink(r).map_err(|e| SynthError::Output(e.to_string()))?;
    }
    Ok(GenSummary {
        requests: times.len() as u64,
        duration_s: duration,
        scale,
    })
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
}
