//! Small exact statistics used by inspection and reports: percentiles with linear
//! interpolation (numpy's default), coefficient of variation, index of dispersion.

/// The `q`-quantile (0..=1) of sorted values, linearly interpolated between closest ranks
/// (numpy's default `linear` method). `None` for no values.
pub fn quantile_sorted(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let pos = q.clamp(0.0, 1.0) * (sorted.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    let frac = pos - lo as f64;
    Some(sorted[lo] + (sorted[hi] - sorted[lo]) * frac)
}

/// Mean and population standard deviation.
pub fn mean_std(values: &[f64]) -> Option<(f64, f64)> {
    if values.is_empty() {
        return None;
    }
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let var = values.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n;
    Some((mean, var.sqrt()))
}

/// Coefficient of variation (population std / mean) of the gaps between sorted times
/// (seconds). 1 for a Poisson process; above 1 is burstier.
pub fn interarrival_cv(sorted_secs: &[f64]) -> Option<f64> {
    let gaps: Vec<f64> = sorted_secs.windows(2).map(|w| w[1] - w[0]).collect();
    let (mean, std) = mean_std(&gaps)?;
    (mean > 0.0).then(|| std / mean)
}

/// Index of dispersion of counts (population variance / mean of the number of arrivals per
/// window), over the complete windows of `window` seconds from the first arrival (the last,
/// partial window is left out). 1 for Poisson arrivals at any window size; growing with the
/// window size means burstiness at that time scale. `None` with fewer than 2 windows.
pub fn index_of_dispersion(sorted_secs: &[f64], window: f64) -> Option<f64> {
    let (&first, &last) = (sorted_secs.first()?, sorted_secs.last()?);
    let windows = ((last - first) / window).floor() as usize;
    if windows < 2 {
        return None;
    }
    let mut counts = vec![0.0f64; windows];
    for &t in sorted_secs {
        let i = ((t - first) / window).floor() as usize;
        if i < windows {
            counts[i] += 1.0;
        }
    }
    let (mean, std) = mean_std(&counts)?;
    (mean > 0.0).then(|| std * std / mean)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn quantiles_match_numpy_linear() {
        let v = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(quantile_sorted(&v, 0.5), Some(2.5));
        assert_eq!(quantile_sorted(&v, 0.9), Some(3.7));
        assert_eq!(quantile_sorted(&v, 0.0), Some(1.0));
        assert_eq!(quantile_sorted(&v, 1.0), Some(4.0));
        assert_eq!(quantile_sorted(&[], 0.5), None);
    }

    #[test]
    fn regular_arrivals_have_zero_cv_and_dispersion() {
        let t: Vec<f64> = (0..1000).map(|i| i as f64 * 0.1).collect();
        assert!(interarrival_cv(&t).unwrap() < 1e-9);
        assert!(index_of_dispersion(&t, 1.0).unwrap() < 1e-9);
    }

    proptest! {
        #[test]
        fn quantiles_are_monotone_and_bounded(mut v in proptest::collection::vec(-1e6f64..1e6, 1..100), a in 0.0f64..1.0, b in 0.0f64..1.0) {
            v.sort_by(f64::total_cmp);
            let (lo, hi) = if a < b { (a, b) } else { (b, a) };
            let (x, y) = (quantile_sorted(&v, lo).unwrap(), quantile_sorted(&v, hi).unwrap());
            prop_assert!(x <= y + 1e-6);
            prop_assert!(v[0] <= x + 1e-6 && y <= v[v.len() - 1] + 1e-6);
        }
    }
}
