//! Human-readable number formatting for terminal reports.

/// An integer with thousands separators: `19366` → `19,366`.
pub fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A float with three significant digits: `16.128` → `16.1`, `1.3856` → `1.39`,
/// `1020.0` → `1,020`.
pub fn sig3(x: f64) -> String {
    if !x.is_finite() {
        return x.to_string();
    }
    if x.abs() >= 999.5 {
        let r = x.round();
        return if r < 0.0 {
            format!("-{}", thousands(-r as u64))
        } else {
            thousands(r as u64)
        };
    }
    if x == 0.0 {
        return "0".into();
    }
    let digits = 2 - x.abs().log10().floor() as i32;
    let decimals = digits.max(0) as usize;
    format!("{x:.decimals$}")
}

/// A token count or similar figure: whole numbers with separators from 100 up (rounded),
/// one decimal below.
pub fn figure(x: f64) -> String {
    if x.is_finite() && x.abs() >= 99.95 && x.abs() < 1e15 {
        let r = x.round();
        if r < 0.0 {
            format!("-{}", thousands(-r as u64))
        } else {
            thousands(r as u64)
        }
    } else if x.fract() == 0.0 {
        format!("{x:.0}")
    } else {
        format!("{x:.1}")
    }
}

/// A duration or rate with one decimal and thousands separators: `3501.72` → `3,501.7`.
pub fn fixed1(x: f64) -> String {
    if !x.is_finite() || x < 0.0 {
        return format!("{x:.1}");
    }
    let tenths = (x * 10.0).round() as u64;
    format!("{}.{}", thousands(tenths / 10), tenths % 10)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_numbers_for_people() {
        assert_eq!(thousands(19366), "19,366");
        assert_eq!(thousands(100), "100");
        assert_eq!(sig3(16.128), "16.1");
        assert_eq!(sig3(1.3856), "1.39");
        assert_eq!(sig3(3.857), "3.86");
        assert_eq!(sig3(0.012345), "0.0123");
        assert_eq!(sig3(1020.4), "1,020");
        assert_eq!(figure(1020.0), "1,020");
        assert_eq!(figure(128.5), "129");
        assert_eq!(figure(2734.5), "2,735");
        assert_eq!(figure(12.25), "12.2");
        assert_eq!(figure(7.0), "7");
        assert_eq!(fixed1(3501.72), "3,501.7");
    }
}
