//! The inter-arrival laws, their maximum-likelihood fits, log-likelihoods, CDFs and the
//! Kolmogorov–Smirnov distance. The special functions are written here (ln Γ by Lanczos,
//! digamma/trigamma by recurrence and asymptotic series, the regularized incomplete gamma by
//! series and continued fraction, erfc by a Chebyshev fit), so no statistics crate is needed.

use rand::Rng;
use rand_distr::Distribution;
use serde::{Deserialize, Serialize};

/// A law of positive values (gaps in seconds, or unit-mean gaps).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "law", rename_all = "lowercase")]
pub enum Law {
    /// Exponential with this mean (a Poisson process).
    Exponential {
        /// Mean.
        mean: f64,
    },
    /// Gamma with shape `k` and scale `theta` (CV = 1/sqrt(k)).
    Gamma {
        /// Shape.
        k: f64,
        /// Scale.
        theta: f64,
    },
    /// Weibull with shape `k` and scale `lambda`.
    Weibull {
        /// Shape.
        k: f64,
        /// Scale.
        lambda: f64,
    },
    /// Lognormal: ln x ~ N(mu, sigma²).
    Lognormal {
        /// Mean of ln x.
        mu: f64,
        /// Standard deviation of ln x.
        sigma: f64,
    },
}

/// ln Γ(x) for x > 0 (Lanczos, g = 7, n = 9; about 15 digits).
pub fn ln_gamma(x: f64) -> f64 {
    const G: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        let pi = std::f64::consts::PI;
        return (pi / (pi * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut a = G[0];
    let t = x + 7.5;
    for (i, g) in G.iter().enumerate().skip(1) {
        a += g / (x + i as f64);
    }
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + a.ln()
}

/// ψ(x), the digamma function, x > 0.
pub fn digamma(mut x: f64) -> f64 {
    let mut r = 0.0;
    while x < 10.0 {
        r -= 1.0 / x;
        x += 1.0;
    }
    let f = 1.0 / (x * x);
    r + x.ln() - 0.5 / x - f * (1.0 / 12.0 - f * (1.0 / 120.0 - f * (1.0 / 252.0 - f / 240.0)))
}

/// ψ'(x), the trigamma function, x > 0.
pub fn trigamma(mut x: f64) -> f64 {
    let mut r = 0.0;
    while x < 10.0 {
        r += 1.0 / (x * x);
        x += 1.0;
    }
    let f = 1.0 / (x * x);
    r + 1.0 / x + f / 2.0 + f / x * (1.0 / 6.0 - f * (1.0 / 30.0 - f / 42.0))
}

/// The regularized lower incomplete gamma P(a, x).
pub fn gamma_p(a: f64, x: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    let ln_pre = a * x.ln() - x - ln_gamma(a);
    if x < a + 1.0 {
        // Series.
        let (mut sum, mut term, mut n) = (1.0 / a, 1.0 / a, a);
        for _ in 0..1000 {
            n += 1.0;
            term *= x / n;
            sum += term;
            if term.abs() < sum.abs() * 1e-15 {
                break;
            }
        }
        (sum.ln() + ln_pre).exp().min(1.0)
    } else {
        // Continued fraction for Q (Lentz).
        let tiny = 1e-300;
        let mut b = x + 1.0 - a;
        let mut c = 1.0 / tiny;
        let mut d = 1.0 / b;
        let mut h = d;
        for i in 1..1000 {
            let an = -(i as f64) * (i as f64 - a);
            b += 2.0;
            d = an * d + b;
            if d.abs() < tiny {
                d = tiny;
            }
            c = b + an / c;
            if c.abs() < tiny {
                c = tiny;
            }
            d = 1.0 / d;
            let delta = d * c;
            h *= delta;
            if (delta - 1.0).abs() < 1e-15 {
                break;
            }
        }
        (1.0 - (ln_pre.exp() * h)).clamp(0.0, 1.0)
    }
}

/// erfc(x), relative error below 1.2e-7.
pub fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let r = t
        * (-z * z - 1.265_512_23
            + t * (1.000_023_68
                + t * (0.374_091_96
                    + t * (0.096_784_18
                        + t * (-0.186_288_06
                            + t * (0.278_868_07
                                + t * (-1.135_203_98
                                    + t * (1.488_515_87
                                        + t * (-0.822_152_23 + t * 0.170_872_77)))))))))
            .exp();
    if x >= 0.0 { r } else { 2.0 - r }
}

fn mean(xs: &[f64]) -> f64 {
    xs.iter().sum::<f64>() / xs.len() as f64
}

impl Law {
    /// The name used in reports.
    pub fn name(&self) -> &'static str {
        match self {
            Law::Exponential { .. } => "exponential",
            Law::Gamma { .. } => "gamma",
            Law::Weibull { .. } => "weibull",
            Law::Lognormal { .. } => "lognormal",
        }
    }

    /// Number of fitted parameters (for AIC).
    pub fn parameters(&self) -> usize {
        match self {
            Law::Exponential { .. } => 1,
            _ => 2,
        }
    }

    /// Mean of the law.
    pub fn mean(&self) -> f64 {
        match *self {
            Law::Exponential { mean } => mean,
            Law::Gamma { k, theta } => k * theta,
            Law::Weibull { k, lambda } => lambda * ln_gamma(1.0 + 1.0 / k).exp(),
            Law::Lognormal { mu, sigma } => (mu + sigma * sigma / 2.0).exp(),
        }
    }

    /// Coefficient of variation.
    pub fn cv(&self) -> f64 {
        match *self {
            Law::Exponential { .. } => 1.0,
            Law::Gamma { k, .. } => 1.0 / k.sqrt(),
            Law::Weibull { k, .. } => {
                let g1 = ln_gamma(1.0 + 1.0 / k).exp();
                let g2 = ln_gamma(1.0 + 2.0 / k).exp();
                (g2 / (g1 * g1) - 1.0).max(0.0).sqrt()
            }
            Law::Lognormal { sigma, .. } => ((sigma * sigma).exp() - 1.0).sqrt(),
        }
    }

    /// The same law rescaled to mean 1.
    pub fn unit_mean(&self) -> Law {
        let m = self.mean();
        match *self {
            Law::Exponential { .. } => Law::Exponential { mean: 1.0 },
            Law::Gamma { k, theta } => Law::Gamma {
                k,
                theta: theta / m,
            },
            Law::Weibull { k, lambda } => Law::Weibull {
                k,
                lambda: lambda / m,
            },
            Law::Lognormal { mu, sigma } => Law::Lognormal {
                mu: mu - m.ln(),
                sigma,
            },
        }
    }

    /// Cumulative distribution function.
    pub fn cdf(&self, x: f64) -> f64 {
        if x <= 0.0 {
            return 0.0;
        }
        match *self {
            Law::Exponential { mean } => 1.0 - (-x / mean).exp(),
            Law::Gamma { k, theta } => gamma_p(k, x / theta),
            Law::Weibull { k, lambda } => 1.0 - (-(x / lambda).powf(k)).exp(),
            Law::Lognormal { mu, sigma } => {
                0.5 * erfc(-(x.ln() - mu) / (sigma * std::f64::consts::SQRT_2))
            }
        }
    }

    /// Log-likelihood of positive samples.
    pub fn log_likelihood(&self, xs: &[f64]) -> f64 {
        let n = xs.len() as f64;
        match *self {
            Law::Exponential { mean } => -n * mean.ln() - xs.iter().sum::<f64>() / mean,
            Law::Gamma { k, theta } => {
                let sl: f64 = xs.iter().map(|x| x.ln()).sum();
                let s: f64 = xs.iter().sum();
                (k - 1.0) * sl - s / theta - n * (ln_gamma(k) + k * theta.ln())
            }
            Law::Weibull { k, lambda } => xs
                .iter()
                .map(|&x| {
                    k.ln() - lambda.ln() + (k - 1.0) * (x / lambda).ln() - (x / lambda).powf(k)
                })
                .sum(),
            Law::Lognormal { mu, sigma } => xs
                .iter()
                .map(|&x| {
                    let z = (x.ln() - mu) / sigma;
                    -x.ln() - sigma.ln() - 0.5 * (2.0 * std::f64::consts::PI).ln() - 0.5 * z * z
                })
                .sum(),
        }
    }

    /// A sample.
    pub fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> f64 {
        match *self {
            Law::Exponential { mean } => {
                rand_distr::Exp::new(1.0 / mean).map_or(mean, |d| d.sample(rng))
            }
            Law::Gamma { k, theta } => {
                rand_distr::Gamma::new(k, theta).map_or(k * theta, |d| d.sample(rng))
            }
            Law::Weibull { k, lambda } => {
                rand_distr::Weibull::new(lambda, k).map_or(lambda, |d| d.sample(rng))
            }
            Law::Lognormal { mu, sigma } => {
                rand_distr::LogNormal::new(mu, sigma).map_or(mu.exp(), |d| d.sample(rng))
            }
        }
    }
}

/// Maximum-likelihood exponential.
pub fn fit_exponential(xs: &[f64]) -> Law {
    Law::Exponential { mean: mean(xs) }
}

/// Maximum-likelihood gamma (Minka's start, then Newton on the shape).
pub fn fit_gamma(xs: &[f64]) -> Law {
    let m = mean(xs);
    let s = m.ln() - xs.iter().map(|x| x.ln()).sum::<f64>() / xs.len() as f64;
    if s.is_nan() || s <= 1e-12 {
        return Law::Gamma {
            k: 1e6,
            theta: m / 1e6,
        };
    }
    let mut k = (3.0 - s + ((s - 3.0).powi(2) + 24.0 * s).sqrt()) / (12.0 * s);
    for _ in 0..50 {
        let step = (k.ln() - digamma(k) - s) / (1.0 / k - trigamma(k));
        let next = (k - step).max(k / 10.0);
        if (next - k).abs() < 1e-12 * k {
            k = next;
            break;
        }
        k = next;
    }
    Law::Gamma { k, theta: m / k }
}

/// Maximum-likelihood Weibull (Newton on the shape, bisection as a safeguard).
pub fn fit_weibull(xs: &[f64]) -> Law {
    let lnx: Vec<f64> = xs.iter().map(|x| x.ln()).collect();
    let mean_ln = mean(&lnx);
    // g(k) = Σ x^k ln x / Σ x^k − 1/k − mean ln x, increasing in k.
    let g = |k: f64| {
        let (mut a, mut b) = (0.0, 0.0);
        for (&x, &l) in xs.iter().zip(&lnx) {
            let p = x.powf(k);
            a += p * l;
            b += p;
        }
        a / b - 1.0 / k - mean_ln
    };
    let (mut lo, mut hi) = (0.01f64, 100.0f64);
    for _ in 0..100 {
        let mid = (lo * hi).sqrt();
        if g(mid) > 0.0 {
            hi = mid;
        } else {
            lo = mid;
        }
        if hi / lo < 1.0 + 1e-10 {
            break;
        }
    }
    let k = (lo * hi).sqrt();
    let lambda = (xs.iter().map(|x| x.powf(k)).sum::<f64>() / xs.len() as f64).powf(1.0 / k);
    Law::Weibull { k, lambda }
}

/// Maximum-likelihood lognormal.
pub fn fit_lognormal(xs: &[f64]) -> Law {
    let lnx: Vec<f64> = xs.iter().map(|x| x.ln()).collect();
    let mu = mean(&lnx);
    let var = lnx.iter().map(|l| (l - mu).powi(2)).sum::<f64>() / lnx.len() as f64;
    Law::Lognormal {
        mu,
        sigma: var.sqrt().max(1e-9),
    }
}

/// Kolmogorov–Smirnov distance between sorted samples and a law.
pub fn ks_distance(sorted: &[f64], law: &Law) -> f64 {
    let n = sorted.len() as f64;
    sorted
        .iter()
        .enumerate()
        .map(|(i, &x)| {
            let f = law.cdf(x);
            (f - i as f64 / n).abs().max(((i + 1) as f64 / n - f).abs())
        })
        .fold(0.0, f64::max)
}

/// Two-sample Kolmogorov–Smirnov distance between sorted samples.
pub fn ks_two_sample(a: &[f64], b: &[f64]) -> f64 {
    let (mut i, mut j, mut d) = (0usize, 0usize, 0.0f64);
    let (na, nb) = (a.len() as f64, b.len() as f64);
    while i < a.len() && j < b.len() {
        let x = a[i].min(b[j]);
        while i < a.len() && a[i] <= x {
            i += 1;
        }
        while j < b.len() && b[j] <= x {
            j += 1;
        }
        d = d.max((i as f64 / na - j as f64 / nb).abs());
    }
    d
}

/// A fitted candidate with its goodness of fit.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Candidate {
    /// The fitted law.
    pub fit: Law,
    /// Akaike information criterion (lower is better).
    pub aic: f64,
    /// KS distance to the data.
    pub ks: f64,
}

/// Fits all four laws to positive samples; candidates ordered by AIC, best first.
pub fn fit_all(xs: &[f64]) -> Vec<Candidate> {
    let mut sorted = xs.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mut out: Vec<Candidate> = [
        fit_exponential(xs),
        fit_gamma(xs),
        fit_weibull(xs),
        fit_lognormal(xs),
    ]
    .into_iter()
    .map(|fit| Candidate {
        aic: 2.0 * fit.parameters() as f64 - 2.0 * fit.log_likelihood(xs),
        ks: ks_distance(&sorted, &fit),
        fit,
    })
    .filter(|c| c.aic.is_finite())
    .collect();
    out.sort_by(|a, b| a.aic.total_cmp(&b.aic));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn draw(law: Law, n: usize, seed: u64) -> Vec<f64> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        (0..n).map(|_| law.sample(&mut rng)).collect()
    }

    #[test]
    fn special_functions_match_known_values() {
        assert!((ln_gamma(5.0) - 24f64.ln()).abs() < 1e-12);
        assert!((ln_gamma(0.5) - std::f64::consts::PI.sqrt().ln()).abs() < 1e-12);
        assert!((digamma(1.0) + 0.577_215_664_901_532_9).abs() < 1e-10);
        assert!((trigamma(1.0) - std::f64::consts::PI.powi(2) / 6.0).abs() < 1e-9);
        assert!((gamma_p(1.0, 2.0) - (1.0 - (-2f64).exp())).abs() < 1e-12);
        assert!((gamma_p(3.0, 10.0) - 0.997_230_604_284_488_4).abs() < 1e-10);
        assert!((erfc(0.5) - 0.479_500_122_186_953_5).abs() < 1e-7);
        assert!((erfc(-1.0) - 1.842_700_792_949_715).abs() < 1e-7);
    }

    #[test]
    fn fitters_recover_known_parameters() {
        let n = 50_000;
        let Law::Gamma { k, theta } = fit_gamma(&draw(Law::Gamma { k: 0.6, theta: 2.0 }, n, 1))
        else {
            unreachable!()
        };
        assert!(
            (k - 0.6).abs() < 0.02 && (theta - 2.0).abs() < 0.08,
            "{k} {theta}"
        );
        let Law::Weibull { k, lambda } = fit_weibull(&draw(
            Law::Weibull {
                k: 1.7,
                lambda: 3.0,
            },
            n,
            2,
        )) else {
            unreachable!()
        };
        assert!(
            (k - 1.7).abs() < 0.03 && (lambda - 3.0).abs() < 0.05,
            "{k} {lambda}"
        );
        let Law::Lognormal { mu, sigma } = fit_lognormal(&draw(
            Law::Lognormal {
                mu: -1.0,
                sigma: 0.8,
            },
            n,
            3,
        )) else {
            unreachable!()
        };
        assert!(
            (mu + 1.0).abs() < 0.02 && (sigma - 0.8).abs() < 0.02,
            "{mu} {sigma}"
        );
        let Law::Exponential { mean } =
            fit_exponential(&draw(Law::Exponential { mean: 0.25 }, n, 4))
        else {
            unreachable!()
        };
        assert!((mean - 0.25).abs() < 0.005);
    }

    #[test]
    fn model_selection_picks_the_generating_law() {
        for (law, seed) in [
            (Law::Exponential { mean: 1.0 }, 5),
            (Law::Gamma { k: 0.4, theta: 2.5 }, 6),
            (
                Law::Weibull {
                    k: 2.5,
                    lambda: 1.0,
                },
                7,
            ),
            (
                Law::Lognormal {
                    mu: 0.0,
                    sigma: 1.2,
                },
                8,
            ),
        ] {
            let xs = draw(law, 20_000, seed);
            let best = &fit_all(&xs)[0];
            // The exponential is a gamma with k = 1: either is right for exponential data.
            let ok = best.fit.name() == law.name()
                || (law.name() == "exponential" && best.fit.name() != "lognormal");
            assert!(ok, "{} chose {:?}", law.name(), best.fit);
            assert!(best.ks < 0.015, "{best:?}");
        }
    }

    #[test]
    fn unit_mean_keeps_the_shape() {
        for law in [
            Law::Gamma { k: 0.5, theta: 3.0 },
            Law::Weibull {
                k: 0.8,
                lambda: 2.0,
            },
            Law::Lognormal {
                mu: 1.0,
                sigma: 0.5,
            },
        ] {
            let u = law.unit_mean();
            assert!((u.mean() - 1.0).abs() < 1e-9);
            assert!((u.cv() - law.cv()).abs() < 1e-9);
        }
        let xs = draw(
            Law::Gamma {
                k: 4.0,
                theta: 0.25,
            },
            100_000,
            9,
        );
        let m = mean(&xs);
        let cv = (xs.iter().map(|x| (x - m).powi(2)).sum::<f64>() / xs.len() as f64).sqrt() / m;
        assert!((cv - 0.5).abs() < 0.01, "{cv}");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(12))]
        #[test]
        fn fits_recover_any_shape_and_scale(k in 0.3f64..5.0, scale in 0.01f64..100.0, seed in 0u64..1000) {
            let xs = draw(Law::Gamma { k, theta: scale }, 20_000, seed);
            let Law::Gamma { k: kf, theta } = fit_gamma(&xs) else { unreachable!() };
            proptest::prop_assert!((kf / k - 1.0).abs() < 0.05, "k {} -> {}", k, kf);
            proptest::prop_assert!((kf * theta / (k * scale) - 1.0).abs() < 0.05);
            let xs = draw(Law::Weibull { k, lambda: scale }, 20_000, seed);
            let Law::Weibull { k: kw, .. } = fit_weibull(&xs) else { unreachable!() };
            proptest::prop_assert!((kw / k - 1.0).abs() < 0.05, "weibull k {} -> {}", k, kw);
            // Every candidate is finite and the best fits well.
            let all = fit_all(&xs);
            proptest::prop_assert_eq!(all.len(), 4);
            proptest::prop_assert!(all[0].ks < 0.02);
        }
    }

    #[test]
    fn two_sample_ks() {
        let a: Vec<f64> = (0..100).map(f64::from).collect();
        assert_eq!(ks_two_sample(&a, &a), 0.0);
        let b: Vec<f64> = (50..150).map(f64::from).collect();
        assert!((ks_two_sample(&a, &b) - 0.5).abs() < 1e-9);
    }
}
