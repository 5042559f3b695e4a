//! Scraping one Prometheus endpoint: one GET with a timeout, the body parsed by
//! [`crate::prom`], the outcome classed (`connect`, `timeout`, `http_status`, `body`,
//! `parse`) so that a dead, slow or garbage endpoint leaves a marked gap instead of
//! stopping anything. The response's `Date` header gives a coarse estimate of the scraped
//! host's clock offset (see [`Offsets`]).

use std::time::{Duration, Instant};

use crate::prom::{self, Sample};

/// Why a scrape failed.
#[derive(Debug, Clone, PartialEq)]
pub struct ScrapeError {
    /// `connect`, `timeout`, `http_status`, `body` or `parse`.
    pub kind: &'static str,
    /// Details in one line.
    pub message: String,
}

/// One scrape.
#[derive(Debug, Clone)]
pub struct Scrape {
    /// The endpoint.
    pub source: String,
    /// Wall-clock time of the scrape's midpoint, ns (the sampling host's clock).
    pub time_ns: i64,
    /// How long it took, s.
    pub duration_s: f64,
    /// The samples, or why there are none.
    pub outcome: Result<Vec<Sample>, ScrapeError>,
    /// The scraped host's clock minus ours, ms, from its `Date` header (±500 ms).
    pub date_offset_ms: Option<f64>,
}

/// Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// [`days_from_civil`] for the importers.
pub(crate) fn days_from_civil_pub(y: i64, m: u32, d: u32) -> i64 {
    days_from_civil(y, m, d)
}

/// Parses an HTTP date (`Sun, 06 Nov 1994 08:49:37 GMT`) to seconds since the epoch.
pub fn parse_http_date(s: &str) -> Option<i64> {
    let p: Vec<&str> = s.split_ascii_whitespace().collect();
    if p.len() != 6 || p[5] != "GMT" {
        return None;
    }
    let day: u32 = p[1].parse().ok()?;
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ]
    .iter()
    .position(|m| *m == p[2])? as u32
        + 1;
    let year: i64 = p[3].parse().ok()?;
    let hms: Vec<i64> = p[4].split(':').filter_map(|x| x.parse().ok()).collect();
    if hms.len() != 3 || !(1..=31).contains(&day) || hms[0] > 23 || hms[1] > 59 || hms[2] > 60 {
        return None;
    }
    Some(days_from_civil(year, month, day) * 86_400 + hms[0] * 3600 + hms[1] * 60 + hms[2])
}

/// Scrapes `url` once. `now_ns` gives the wall-clock time (the run's anchor plus a
/// monotonic elapsed time).
pub async fn scrape(
    client: &reqwest::Client,
    url: &str,
    timeout: Duration,
    now_ns: impl Fn() -> i64,
) -> Scrape {
    let started = Instant::now();
    let t0 = now_ns();
    let result = tokio::time::timeout(timeout, fetch(client, url)).await;
    let t1 = now_ns();
    let mid = t0 + (t1 - t0) / 2;
    let (outcome, date) = match result {
        Err(_) => (
            Err(ScrapeError {
                kind: "timeout",
                message: format!("no complete answer within {} ms", timeout.as_millis()),
            }),
            None,
        ),
        Ok(Err(e)) => (Err(e), None),
        Ok(Ok((body, date))) => (
            prom::parse(&body).map_err(|e| ScrapeError {
                kind: "parse",
                message: e.to_string(),
            }),
            date,
        ),
    };
    Scrape {
        source: url.to_owned(),
        time_ns: mid,
        duration_s: started.elapsed().as_secs_f64(),
        outcome,
        // The Date header truncates to the second: its middle is half a second later.
        date_offset_ms: date.map(|s| (s as f64 + 0.5) * 1000.0 - mid as f64 / 1e6),
    }
}

async fn fetch(client: &reqwest::Client, url: &str) -> Result<(String, Option<i64>), ScrapeError> {
    let resp = client.get(url).send().await.map_err(|e| ScrapeError {
        kind: if e.is_timeout() { "timeout" } else { "connect" },
        message: one_line(&e),
    })?;
    let status = resp.status();
    let date = resp
        .headers()
        .get(reqwest::header::DATE)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_http_date);
    if !status.is_success() {
        return Err(ScrapeError {
            kind: "http_status",
            message: format!("HTTP {}", status.as_u16()),
        });
    }
    let body = resp.text().await.map_err(|e| ScrapeError {
        kind: "body",
        message: one_line(&e),
    })?;
    Ok((body, date))
}

fn one_line(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s.replace('\n', " ")
}

/// Clock-offset estimates of one source: the median of the per-scrape `Date` estimates.
#[derive(Debug, Clone, Default)]
pub struct Offsets {
    values: Vec<f64>,
}

impl Offsets {
    /// Adds one scrape's estimate.
    pub fn add(&mut self, ms: f64) {
        if ms.is_finite() {
            self.values.push(ms);
        }
    }

    /// The median estimate, ms.
    pub fn estimate(&self) -> Option<f64> {
        if self.values.is_empty() {
            return None;
        }
        let mut v = self.values.clone();
        v.sort_by(f64::total_cmp);
        Some(v[v.len() / 2])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_dates() {
        assert_eq!(
            parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(784_111_777)
        );
        assert_eq!(parse_http_date("Thu, 01 Jan 1970 00:00:00 GMT"), Some(0));
        assert_eq!(
            parse_http_date("Sat, 29 Feb 2020 23:59:59 GMT"),
            Some(1_583_020_799)
        );
        for bad in [
            "",
            "Sun, 06 Nov 1994 08:49:37 PST",
            "Sun, 32 Nov 1994 08:49:37 GMT",
            "x y z w v GMT",
            "Sun, 06 Foo 1994 08:49:37 GMT",
        ] {
            assert_eq!(parse_http_date(bad), None, "{bad}");
        }
    }

    #[test]
    fn offsets_take_the_median() {
        let mut o = Offsets::default();
        assert_eq!(o.estimate(), None);
        for v in [100.0, -400.0, 120.0, f64::NAN, 110.0, 9000.0] {
            o.add(v);
        }
        assert_eq!(o.estimate(), Some(110.0));
    }
}
