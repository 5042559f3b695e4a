//! Histogram bucket bounds, in seconds: the one list every live histogram uses.
//!
//! Bounds are `10^(k/25)` times the smallest, rounded to four significant digits, so each
//! bucket's upper bound is at most 9.7% above its lower bound (`10^(1/25) = 1.0965`); the
//! last bound is 600 s. A quantile read from these buckets with `histogram_quantile` is
//! therefore within one bucket, under 10%, of the exact value.

/// Buckets a decade.
pub const PER_DECADE: u32 = 25;

/// The largest finite bound, seconds (10 minutes: longer requests count in `+Inf`).
pub const MAX_S: f64 = 600.0;

/// Bounds from `min_s` to [`MAX_S`], log-spaced.
fn log_bounds(min_s: f64) -> Vec<f64> {
    let mut out = Vec::new();
    for k in 0.. {
        let raw = min_s * 10f64.powf(f64::from(k) / f64::from(PER_DECADE));
        if raw >= MAX_S * 0.999_999 {
            break;
        }
        out.push(round4(raw));
    }
    out.push(MAX_S);
    out
}

/// Rounds to four significant digits.
fn round4(x: f64) -> f64 {
    let digits = 3 - x.log10().floor() as i32;
    let scale = 10f64.powi(digits);
    (x * scale).round() / scale
}

/// Latency bounds (TTFT, ITL, TPOT, E2E): 1 ms to 600 s, 146 bounds.
pub fn latency() -> Vec<f64> {
    log_bounds(1e-3)
}

/// Schedule-lag bounds (sent − scheduled): 1 µs to 600 s, 221 bounds.
pub fn lag() -> Vec<f64> {
    log_bounds(1e-6)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_bucket_is_wider_than_ten_percent() {
        for bounds in [latency(), lag()] {
            assert_eq!(*bounds.last().unwrap(), 600.0);
            for w in bounds.windows(2) {
                assert!(w[1] > w[0], "{w:?}");
                assert!(w[1] / w[0] <= 1.10, "{w:?}");
            }
        }
        assert_eq!(latency()[0], 0.001);
        assert_eq!(lag()[0], 0.000_001);
        assert_eq!(latency().len(), 146);
        assert_eq!(lag().len(), 221);
        // Decades land on round numbers.
        assert!(latency().contains(&0.01));
        assert!(latency().contains(&1.0));
        assert!(lag().contains(&0.001));
    }
}
