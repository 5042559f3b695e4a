//! Exact UTC date-time parsing and formatting for timestamps in datasets (no time-zone
//! database: offsets are numeric, naive times are UTC).

use crate::column::Timestamp;

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
pub fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = month as i64;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + day as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day count since 1970-01-01.
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        _ => 28,
    }
}

fn digits(s: &[u8], what: &str) -> Result<u32, String> {
    if s.is_empty() || !s.iter().all(u8::is_ascii_digit) {
        return Err(format!("bad {what}"));
    }
    Ok(s.iter().fold(0u32, |acc, d| acc * 10 + u32::from(d - b'0')))
}

/// Parses `YYYY-MM-DD HH:MM:SS[.fraction][Z|±HH:MM|±HHMM]` (a `T` may separate date and
/// time). Up to 9 fractional digits are exact; further digits are truncated. A time without
/// an offset is UTC.
pub fn parse_datetime(text: &str) -> Result<Timestamp, String> {
    let s = text.trim().as_bytes();
    let fail = |why: &str| format!("invalid date-time `{}`: {why}", text.trim());
    if s.len() < 19 {
        return Err(fail("expected YYYY-MM-DD HH:MM:SS"));
    }
    if s[4] != b'-'
        || s[7] != b'-'
        || !matches!(s[10], b' ' | b'T')
        || s[13] != b':'
        || s[16] != b':'
    {
        return Err(fail("expected YYYY-MM-DD HH:MM:SS"));
    }
    let year = digits(&s[0..4], "year").map_err(|e| fail(&e))? as i64;
    let month = digits(&s[5..7], "month").map_err(|e| fail(&e))?;
    let day = digits(&s[8..10], "day").map_err(|e| fail(&e))?;
    let hour = digits(&s[11..13], "hour").map_err(|e| fail(&e))?;
    let minute = digits(&s[14..16], "minute").map_err(|e| fail(&e))?;
    let second = digits(&s[17..19], "second").map_err(|e| fail(&e))?;
    if !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) {
        return Err(fail("no such date"));
    }
    if hour > 23 || minute > 59 || second > 60 {
        return Err(fail("no such time"));
    }
    let mut rest = &s[19..];
    let mut nanos: i64 = 0;
    if let Some(frac) = rest.strip_prefix(b".") {
        let n = frac.iter().take_while(|b| b.is_ascii_digit()).count();
        if n == 0 {
            return Err(fail("empty fraction"));
        }
        for (i, d) in frac[..n].iter().enumerate().take(9) {
            nanos += i64::from(d - b'0') * 10i64.pow(8 - i as u32);
        }
        rest = &frac[n..];
    }
    let offset_secs: i64 = match rest {
        [] | b"Z" | b"z" | b" UTC" | b"UTC" => 0,
        [sign @ (b'+' | b'-'), tail @ ..] => {
            let (h, m) = match tail {
                [h1, h2, b':', m1, m2] | [h1, h2, m1, m2] => ([*h1, *h2], [*m1, *m2]),
                [h1, h2] => ([*h1, *h2], [b'0', b'0']),
                _ => return Err(fail("bad UTC offset")),
            };
            let h = digits(&h, "offset").map_err(|e| fail(&e))? as i64;
            let m = digits(&m, "offset").map_err(|e| fail(&e))? as i64;
            let v = h * 3600 + m * 60;
            if *sign == b'-' { -v } else { v }
        }
        _ => return Err(fail("unexpected text after the time")),
    };
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + i64::from(hour) * 3600 + i64::from(minute) * 60 + i64::from(second)
        - offset_secs;
    secs.checked_mul(1_000_000_000)
        .and_then(|ns| ns.checked_add(nanos))
        .map(Timestamp)
        .ok_or_else(|| fail("out of range"))
}

/// Formats as RFC 3339 in UTC with nanoseconds: `2023-11-16T18:15:46.680590000Z`.
pub fn format_rfc3339(ts: Timestamp) -> String {
    let secs = ts.0.div_euclid(1_000_000_000);
    let nanos = ts.0.rem_euclid(1_000_000_000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (y, mo, d) = civil_from_days(days);
    format!(
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}.{nanos:09}Z",
        sod / 3600,
        (sod / 60) % 60,
        sod % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_azure_2023_timestamps_as_utc() {
        let t = parse_datetime("2023-11-16 18:15:46.6805900").unwrap();
        assert_eq!(t.0, 1_700_158_546_680_590_000);
        assert_eq!(format_rfc3339(t), "2023-11-16T18:15:46.680590000Z");
    }

    #[test]
    fn parses_offsets_and_missing_fractions() {
        let a = parse_datetime("2024-05-10 00:00:00+00:00").unwrap();
        let b = parse_datetime("2024-05-10T02:00:00+02:00").unwrap();
        let c = parse_datetime("2024-05-10 00:00:00").unwrap();
        assert_eq!(a, b);
        assert_eq!(a, c);
        let d = parse_datetime("2024-05-10 00:00:00.5Z").unwrap();
        assert_eq!(d.0 - a.0, 500_000_000);
    }

    #[test]
    fn rejects_bad_dates_with_the_reason() {
        assert_eq!(
            parse_datetime("2023-02-30 00:00:00").unwrap_err(),
            "invalid date-time `2023-02-30 00:00:00`: no such date"
        );
        assert!(parse_datetime("yesterday").is_err());
        assert!(parse_datetime("2023-11-16 18:15:46.").is_err());
        assert!(parse_datetime("2023-11-16 18:15:46 PST").is_err());
    }

    proptest! {
        #[test]
        fn format_then_parse_is_identity(ns in -2_000_000_000_000_000_000i64..4_000_000_000_000_000_000i64) {
            let t = Timestamp(ns);
            prop_assert_eq!(parse_datetime(&format_rfc3339(t)).unwrap(), t);
        }

        #[test]
        fn parser_never_panics(s in "\\PC{0,40}") {
            let _ = parse_datetime(&s);
        }

        #[test]
        fn civil_round_trip(days in -1_000_000i64..1_000_000) {
            let (y, m, d) = civil_from_days(days);
            prop_assert_eq!(days_from_civil(y, m, d), days);
        }
    }
}
