//! Run summary from HDR histograms (3 significant digits): the metrics of
//! `docs/metrics.md` for the measured phase, plus a row per step of a ramp. Exact
//! percentiles over the stored values are the analyzer's job; these are for the terminal.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;

pub use reprise_trace::run::{
    CLIENT_BEHIND_MS, ClientSummary, Latency, PhaseSummary, SessionsSummary,
};

#[derive(Debug, Clone)]
struct Hist(Histogram<u64>);

impl Hist {
    fn new() -> Self {
        Hist(Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds"))
    }
    fn record_us(&mut self, us: u64) {
        self.0.saturating_record(us.max(1));
    }
    fn latency(&self) -> Option<Latency> {
        let h = &self.0;
        if h.is_empty() {
            return None;
        }
        let ms = |v: u64| v as f64 / 1000.0;
        Some(Latency {
            count: h.len(),
            mean: h.mean() / 1000.0,
            p50: ms(h.value_at_quantile(0.5)),
            p90: ms(h.value_at_quantile(0.9)),
            p95: ms(h.value_at_quantile(0.95)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
        })
    }
}

/// Everything measured for one request, as the summary needs it (µs; ns times).
#[derive(Debug, Clone, Default)]
pub struct Sample {
    /// Phase label.
    pub phase: String,
    /// Step value.
    pub step_value: Option<f64>,
    /// Success.
    pub ok: bool,
    /// Error class.
    pub error_kind: Option<String>,
    /// Send time, ns since the run's start.
    pub sent_ns: Option<u64>,
    /// Done time, ns since the run's start.
    pub done_ns: Option<u64>,
    /// Queue, µs.
    pub queue_us: Option<u64>,
    /// TTFT from sent, µs.
    pub ttft_us: Option<u64>,
    /// TTFT from scheduled, µs.
    pub ttft_sched_us: Option<u64>,
    /// E2E from sent, µs.
    pub e2e_us: Option<u64>,
    /// E2E from scheduled, µs.
    pub e2e_sched_us: Option<u64>,
    /// TPOT, µs.
    pub tpot_us: Option<u64>,
    /// Inter-token gaps, µs.
    pub itl_us: Vec<u32>,
    /// Prompt tokens (usage, else requested).
    pub n_in: u64,
    /// Output tokens (usage, else counted).
    pub n_out: u64,
    /// Requested prompt tokens, and whether usage disagreed.
    pub input_mismatch: Option<bool>,
    /// Requested output tokens, and whether usage disagreed.
    pub output_mismatch: Option<bool>,
}

#[derive(Debug, Clone)]
struct Acc {
    step_value: Option<f64>,
    requests: u64,
    ok: u64,
    errors: BTreeMap<String, u64>,
    first_sent: Option<u64>,
    last_done: Option<u64>,
    n_in: u64,
    n_out: u64,
    queue: Hist,
    ttft: Hist,
    ttft_sched: Hist,
    e2e: Hist,
    e2e_sched: Hist,
    tpot: Hist,
    itl: Hist,
    in_checked: u64,
    in_mismatch: u64,
    out_checked: u64,
    out_mismatch: u64,
}

impl Acc {
    fn new(step_value: Option<f64>) -> Self {
        Acc {
            step_value,
            requests: 0,
            ok: 0,
            errors: BTreeMap::new(),
            first_sent: None,
            last_done: None,
            n_in: 0,
            n_out: 0,
            queue: Hist::new(),
            ttft: Hist::new(),
            ttft_sched: Hist::new(),
            e2e: Hist::new(),
            e2e_sched: Hist::new(),
            tpot: Hist::new(),
            itl: Hist::new(),
            in_checked: 0,
            in_mismatch: 0,
            out_checked: 0,
            out_mismatch: 0,
        }
    }

    fn add(&mut self, s: &Sample) {
        self.requests += 1;
        if let Some(t) = s.sent_ns {
            self.first_sent = Some(self.first_sent.map_or(t, |f| f.min(t)));
        }
        if let Some(q) = s.queue_us {
            self.queue.record_us(q);
        }
        if !s.ok {
            *self
                .errors
                .entry(s.error_kind.clone().unwrap_or_else(|| "unknown".into()))
                .or_default() += 1;
            return;
        }
        self.ok += 1;
        if let Some(t) = s.done_ns {
            self.last_done = Some(self.last_done.map_or(t, |l| l.max(t)));
        }
        self.n_in += s.n_in;
        self.n_out += s.n_out;
        for (h, v) in [
            (&mut self.ttft, s.ttft_us),
            (&mut self.ttft_sched, s.ttft_sched_us),
            (&mut self.e2e, s.e2e_us),
            (&mut self.e2e_sched, s.e2e_sched_us),
            (&mut self.tpot, s.tpot_us),
        ] {
            if let Some(v) = v {
                h.record_us(v);
            }
        }
        for &g in &s.itl_us {
            self.itl.record_us(u64::from(g));
        }
        if let Some(m) = s.input_mismatch {
            self.in_checked += 1;
            self.in_mismatch += u64::from(m);
        }
        if let Some(m) = s.output_mismatch {
            self.out_checked += 1;
            self.out_mismatch += u64::from(m);
        }
    }

    fn report(&self, phase: &str) -> PhaseSummary {
        let duration_s = match (self.first_sent, self.last_done) {
            (Some(a), Some(b)) if b > a => (b - a) as f64 / 1e9,
            _ => 0.0,
        };
        let per_s = |x: f64| {
            if duration_s > 0.0 {
                x / duration_s
            } else {
                0.0
            }
        };
        PhaseSummary {
            phase: phase.to_owned(),
            step_value: self.step_value,
            requests: self.requests,
            ok: self.ok,
            errors: self.errors.clone(),
            error_rate: if self.requests > 0 {
                (self.requests - self.ok) as f64 / self.requests as f64
            } else {
                0.0
            },
            duration_s,
            request_throughput: per_s(self.ok as f64),
            output_tokens_per_s: per_s(self.n_out as f64),
            total_tokens_per_s: per_s((self.n_in + self.n_out) as f64),
            input_tokens: self.n_in,
            output_tokens: self.n_out,
            queue_ms: self.queue.latency(),
            ttft_ms: self.ttft.latency(),
            ttft_sched_ms: self.ttft_sched.latency(),
            tpot_ms: self.tpot.latency(),
            itl_ms: self.itl.latency(),
            e2e_ms: self.e2e.latency(),
            e2e_sched_ms: self.e2e_sched.latency(),
            input_token_mismatch_rate: (self.in_checked > 0)
                .then(|| self.in_mismatch as f64 / self.in_checked as f64),
            output_token_mismatch_rate: (self.out_checked > 0)
                .then(|| self.out_mismatch as f64 / self.out_checked as f64),
        }
    }
}

/// The measured requests' figures as `histograms.json` keeps them: counts, and each
/// latency's HDR histogram (hdrhistogram's V2 + deflate encoding, 3 significant digits,
/// µs, in hex), so that runs can be merged exactly as their histograms allow
/// ([`merge_exports`]) without reading their rows.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Export {
    /// `hdr/1`.
    pub format: String,
    /// Requests.
    pub requests: u64,
    /// Successful requests.
    pub ok: u64,
    /// Failed requests per error class.
    pub errors: BTreeMap<String, u64>,
    /// First send, ns from the run's start (shared by the workers of a distributed run).
    pub first_sent_ns: Option<u64>,
    /// Last response end, ns from the run's start.
    pub last_done_ns: Option<u64>,
    /// Prompt tokens of successful requests.
    pub n_in: u64,
    /// Output tokens of successful requests.
    pub n_out: u64,
    /// Requests whose prompt count the server reported, and of those mismatching.
    pub in_checked: u64,
    /// See `in_checked`.
    pub in_mismatch: u64,
    /// Requests whose output count was checked, and of those mismatching.
    pub out_checked: u64,
    /// See `out_checked`.
    pub out_mismatch: u64,
    /// Per latency (`queue`, `ttft`, `ttft_sched`, `e2e`, `e2e_sched`, `tpot`, `itl`).
    pub histograms: BTreeMap<String, String>,
}

/// The format of [`Export`].
pub const EXPORT_FORMAT: &str = "hdr/1";

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn from_hex(text: &str) -> Option<Vec<u8>> {
    (text.len().is_multiple_of(2))
        .then(|| {
            (0..text.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
                .collect()
        })
        .flatten()
}

impl Acc {
    fn hists_mut(&mut self) -> [(&'static str, &mut Hist); 7] {
        [
            ("queue", &mut self.queue),
            ("ttft", &mut self.ttft),
            ("ttft_sched", &mut self.ttft_sched),
            ("e2e", &mut self.e2e),
            ("e2e_sched", &mut self.e2e_sched),
            ("tpot", &mut self.tpot),
            ("itl", &mut self.itl),
        ]
    }

    fn export(&mut self) -> Export {
        let mut histograms = BTreeMap::new();
        for (name, h) in self.hists_mut() {
            let mut bytes = Vec::new();
            if hdrhistogram::serialization::Serializer::serialize(
                &mut hdrhistogram::serialization::V2DeflateSerializer::new(),
                &h.0,
                &mut bytes,
            )
            .is_ok()
            {
                histograms.insert(name.to_owned(), to_hex(&bytes));
            }
        }
        Export {
            format: EXPORT_FORMAT.into(),
            requests: self.requests,
            ok: self.ok,
            errors: self.errors.clone(),
            first_sent_ns: self.first_sent,
            last_done_ns: self.last_done,
            n_in: self.n_in,
            n_out: self.n_out,
            in_checked: self.in_checked,
            in_mismatch: self.in_mismatch,
            out_checked: self.out_checked,
            out_mismatch: self.out_mismatch,
            histograms,
        }
    }

    /// Adds an export's counts and histograms to these.
    fn absorb(&mut self, e: &Export) -> Result<(), String> {
        self.requests += e.requests;
        self.ok += e.ok;
        for (k, v) in &e.errors {
            *self.errors.entry(k.clone()).or_default() += v;
        }
        self.first_sent = match (self.first_sent, e.first_sent_ns) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.last_done = match (self.last_done, e.last_done_ns) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        self.n_in += e.n_in;
        self.n_out += e.n_out;
        self.in_checked += e.in_checked;
        self.in_mismatch += e.in_mismatch;
        self.out_checked += e.out_checked;
        self.out_mismatch += e.out_mismatch;
        let mut decoder = hdrhistogram::serialization::Deserializer::new();
        for (name, h) in self.hists_mut() {
            let Some(text) = e.histograms.get(name) else {
                continue;
            };
            let bytes = from_hex(text).ok_or_else(|| format!("histogram `{name}`: not hex"))?;
            let other: Histogram<u64> = decoder
                .deserialize(&mut bytes.as_slice())
                .map_err(|err| format!("histogram `{name}`: {err:?}"))?;
            h.0.add(&other)
                .map_err(|err| format!("histogram `{name}`: {err:?}"))?;
        }
        Ok(())
    }
}

/// The measured requests' figures of several runs (the workers of a distributed replay),
/// from their [`Export`]s alone: counts summed, histograms added, the span from the first
/// send to the last end over all of them.
pub fn merge_exports(exports: &[Export]) -> Result<PhaseSummary, String> {
    let mut acc = Acc::new(None);
    for e in exports {
        if e.format != EXPORT_FORMAT {
            return Err(format!(
                "histograms of format `{}`, expected {EXPORT_FORMAT}",
                e.format
            ));
        }
        acc.absorb(e)?;
    }
    Ok(acc.report("all"))
}

/// One finished turn of a closed session, as the session figures need it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TurnSample {
    /// Its session's first turn.
    pub first: bool,
    /// Its session's last turn.
    pub last: bool,
    /// Sent a think time after its predecessor's end.
    pub after_end: bool,
    /// `scheduled − recorded arrival`, ns (negative: earlier than recorded).
    pub delay_ns: i64,
    /// `sent − scheduled`, µs, when it was sent.
    pub queue_us: Option<u64>,
    /// Cancelled by a stop's drain.
    pub cancelled: bool,
}

/// Accumulates the turns of a closed-session replay.
#[derive(Debug, Clone)]
struct Sessions {
    figures: SessionsSummary,
    delay: Hist,
    think_error: Hist,
}

impl Sessions {
    fn add(&mut self, t: &TurnSample) {
        let f = &mut self.figures;
        let sent = t.queue_us.is_some();
        if !sent {
            return;
        }
        f.turns += 1;
        f.started += u64::from(t.first);
        f.completed += u64::from(t.last && !t.cancelled);
        if !t.first {
            f.later_turns += 1;
            if t.delay_ns > 1_000_000 {
                f.delayed += 1;
                self.delay.record_us((t.delay_ns / 1000) as u64);
            } else if t.delay_ns < 0 {
                f.earlier += 1;
            }
            if let (true, Some(q)) = (t.after_end, t.queue_us) {
                self.think_error.record_us(q);
            }
        }
    }

    fn report(&self) -> SessionsSummary {
        SessionsSummary {
            mode: "closed".into(),
            delay_ms: self.delay.latency(),
            think_error_ms: self.think_error.latency(),
            ..self.figures.clone()
        }
    }
}

/// Accumulates samples per phase and overall (warm-up excluded from the overall figures).
#[derive(Debug, Clone)]
pub struct Summarizer {
    overall: Acc,
    phases: Vec<(String, Acc)>,
    sessions: Option<Sessions>,
    client: ClientAcc,
}

/// The client's own figures over every request sent (all phases): the span of the
/// schedule, the span of the sends, and its own failures.
#[derive(Debug, Clone, Default)]
struct ClientAcc {
    sent: u64,
    first_scheduled: Option<u64>,
    last_scheduled: Option<u64>,
    /// The latest send and how late it was, ns.
    last_sent: Option<(u64, u64)>,
    client_errors: u64,
}

impl ClientAcc {
    fn add(&mut self, s: &Sample) {
        if s.error_kind.as_deref() == Some(crate::client::CLIENT_ERROR) {
            self.client_errors += 1;
        }
        let (Some(sent), Some(queue_us)) = (s.sent_ns, s.queue_us) else {
            return;
        };
        let late = queue_us * 1000;
        let scheduled = sent.saturating_sub(late);
        self.sent += 1;
        self.first_scheduled = Some(self.first_scheduled.map_or(scheduled, |f| f.min(scheduled)));
        self.last_scheduled = Some(self.last_scheduled.map_or(scheduled, |l| l.max(scheduled)));
        if self.last_sent.is_none_or(|(t, _)| sent >= t) {
            self.last_sent = Some((sent, late));
        }
    }
}

impl Default for Summarizer {
    fn default() -> Self {
        Summarizer {
            overall: Acc::new(None),
            phases: Vec::new(),
            sessions: None,
            client: ClientAcc::default(),
        }
    }
}

impl Summarizer {
    /// Adds one turn of a closed session (beside its request's [`Sample`]).
    pub fn add_turn(&mut self, t: &TurnSample) {
        self.sessions
            .get_or_insert_with(|| Sessions {
                figures: SessionsSummary::default(),
                delay: Hist::new(),
                think_error: Hist::new(),
            })
            .add(t);
    }

    /// The measured requests' figures with their histograms, for `histograms.json`.
    pub fn export(&self) -> Export {
        self.overall.clone().export()
    }

    /// The session figures, in a closed-session replay.
    pub fn sessions(&self) -> Option<SessionsSummary> {
        self.sessions.as_ref().map(Sessions::report)
    }

    /// Adds one request.
    pub fn add(&mut self, s: &Sample) {
        let i = match self.phases.iter().position(|(p, _)| *p == s.phase) {
            Some(i) => i,
            None => {
                self.phases.push((s.phase.clone(), Acc::new(s.step_value)));
                self.phases.len() - 1
            }
        };
        self.phases[i].1.add(s);
        self.client.add(s);
        if s.phase != "warmup" {
            self.overall.add(s);
        }
    }

    /// How the client kept to its schedule, given the measured requests' figures
    /// (`overall`) and what the run knows of its connections; `None` when no request had a
    /// schedule (nothing sent, or a closed loop).
    pub fn client(
        &self,
        overall: &PhaseSummary,
        max_connections: Option<usize>,
        waited_for_connection: u64,
    ) -> Option<ClientSummary> {
        let c = &self.client;
        let (first, last, (last_sent, behind)) =
            (c.first_scheduled?, c.last_scheduled?, c.last_sent?);
        let rate = |span_ns: u64| {
            if span_ns == 0 {
                0.0
            } else {
                c.sent as f64 / (span_ns as f64 / 1e9)
            }
        };
        Some(ClientSummary {
            sent: c.sent,
            asked_rate: rate(last - first),
            held_rate: rate(last_sent - first),
            behind_s: behind as f64 / 1e9,
            fell_behind: overall
                .queue_ms
                .as_ref()
                .is_some_and(|q| q.p99 > CLIENT_BEHIND_MS),
            max_connections,
            waited_for_connection,
            client_errors: c.client_errors,
        })
    }

    /// Figures of the measured requests.
    pub fn overall(&self) -> PhaseSummary {
        self.overall.report("all")
    }

    /// Figures per phase, in first-seen order.
    pub fn phases(&self) -> Vec<PhaseSummary> {
        self.phases.iter().map(|(p, a)| a.report(p)).collect()
    }

    /// Figures of one phase.
    pub fn phase(&self, phase: &str) -> Option<PhaseSummary> {
        self.phases
            .iter()
            .find(|(p, _)| p == phase)
            .map(|(p, a)| a.report(p))
    }

    /// Requests seen so far (all phases).
    pub fn requests(&self) -> u64 {
        self.phases.iter().map(|(_, a)| a.requests).sum()
    }
}

/// One figure of a latency, ms, to one decimal (`-` when there is none).
pub fn fmt_ms(l: &Option<Latency>, f: impl Fn(&Latency) -> f64) -> String {
    l.as_ref()
        .map_or_else(|| "-".into(), |l| format!("{:.1}", f(l)))
}

/// The terminal lines of a closed-session replay's figures.
pub fn render_sessions(s: &SessionsSummary) -> String {
    let mut out = format!(
        "sessions {} started, {} completed; {} turns ({} after a first)\n",
        s.started, s.completed, s.turns, s.later_turns
    );
    out.push_str(&format!(
        "turns delayed by the target {} (p50 {} ms, p99 {} ms, max {} ms later than recorded), {} earlier than recorded\n",
        s.delayed,
        fmt_ms(&s.delay_ms, |l| l.p50),
        fmt_ms(&s.delay_ms, |l| l.p99),
        fmt_ms(&s.delay_ms, |l| l.max),
        s.earlier
    ));
    if let Some(t) = &s.think_error_ms {
        out.push_str(&format!(
            "think-time error (sent − previous end − think) p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms\n",
            t.p50, t.p99, t.max
        ));
    }
    out
}

/// The client's line: the rate asked and held, how late the last request went out, the
/// connection bound and the waits for it, and the client's own failures.
pub fn render_client(c: &ClientSummary) -> String {
    let mut out = format!(
        "client: held {:.1} req/s of {:.1} asked (last request {:.3} s late)",
        c.held_rate, c.asked_rate, c.behind_s
    );
    if let Some(max) = c.max_connections {
        out.push_str(&format!(
            "; connections at most {max}, {} requests waited for one",
            c.waited_for_connection
        ));
    }
    out.push('\n');
    if c.client_errors > 0 {
        out.push_str(&format!(
            "client errors: {} requests failed for the load generator's own shortage (file \
             descriptors, local ports), not the target's (class `client`); lower --max-connections\n",
            c.client_errors
        ));
    }
    if c.fell_behind {
        out.push_str(&format!("WARNING: {}\n", crate::gate::client_behind(c)));
    }
    out
}

/// The terminal table of a summary.
///
/// `intended_s` is how long the workload was meant to last: throughput is given over it
/// beside the measured span (first send to last response), both labelled.
pub fn render(
    overall: &PhaseSummary,
    phases: &[PhaseSummary],
    queue_limit_ms: f64,
    intended_s: Option<f64>,
) -> String {
    let mut out = String::new();
    let o = overall;
    out.push_str(&format!(
        "requests {} ok, {} failed ({:.2}%){}\n",
        o.ok,
        o.requests - o.ok,
        o.error_rate * 100.0,
        if o.errors.is_empty() {
            String::new()
        } else {
            format!(": {:?}", o.errors)
        }
    ));
    match intended_s.filter(|s| *s > 0.0) {
        Some(intended) => {
            out.push_str(&format!(
                "duration {:.1} s measured (first send to last response), {intended:.1} s intended\n",
                o.duration_s
            ));
            out.push_str(&format!(
                "throughput {:.2} req/s measured, {:.2} req/s intended; {:.0} output tok/s, {:.0} total tok/s measured\n",
                o.request_throughput,
                o.ok as f64 / intended,
                o.output_tokens_per_s,
                o.total_tokens_per_s
            ));
        }
        None => out.push_str(&format!(
            "duration {:.1} s measured (first send to last response)   throughput {:.2} req/s, {:.0} output tok/s, {:.0} total tok/s\n",
            o.duration_s, o.request_throughput, o.output_tokens_per_s, o.total_tokens_per_s
        )),
    }
    out.push_str("metric (ms)          p50       p90       p99     p99.9      mean       max\n");
    let rows: [(&str, &Option<Latency>); 7] = [
        ("TTFT", &o.ttft_ms),
        ("TTFT (scheduled)", &o.ttft_sched_ms),
        ("TPOT", &o.tpot_ms),
        ("ITL", &o.itl_ms),
        ("E2E", &o.e2e_ms),
        ("E2E (scheduled)", &o.e2e_sched_ms),
        ("queue", &o.queue_ms),
    ];
    for (name, l) in rows {
        out.push_str(&format!(
            "{name:<18}{:>9}{:>10}{:>10}{:>10}{:>10}{:>10}\n",
            fmt_ms(l, |l| l.p50),
            fmt_ms(l, |l| l.p90),
            fmt_ms(l, |l| l.p99),
            fmt_ms(l, |l| l.p999),
            fmt_ms(l, |l| l.mean),
            fmt_ms(l, |l| l.max)
        ));
    }
    if let (Some(i), Some(oo)) = (o.input_token_mismatch_rate, o.output_token_mismatch_rate) {
        out.push_str(&format!(
            "token counts vs usage: prompt mismatches {:.2}%, output mismatches {:.2}%\n",
            i * 100.0,
            oo * 100.0
        ));
    }
    if let Some(q) = &o.queue_ms
        && q.p99 > queue_limit_ms
    {
        out.push_str(&format!(
            "WARNING: client could not keep up: queue p99 {:.2} ms > {queue_limit_ms} ms (latencies from `scheduled` include it)\n",
            q.p99
        ));
    }
    let steps: Vec<&PhaseSummary> = phases.iter().filter(|p| p.step_value.is_some()).collect();
    if steps.len() > 1 {
        out.push_str("\n| step | QPS | output tok/s | P99 TTFT ms | P99 TPOT ms | P99 E2E ms | error rate |\n|---|---:|---:|---:|---:|---:|---:|\n");
        for p in steps {
            out.push_str(&format!(
                "| {} | {:.2} | {:.0} | {} | {} | {} | {:.1}% |\n",
                p.phase,
                p.request_throughput,
                p.output_tokens_per_s,
                fmt_ms(&p.ttft_ms, |l| l.p99),
                fmt_ms(&p.tpot_ms, |l| l.p99),
                fmt_ms(&p.e2e_ms, |l| l.p99),
                p.error_rate * 100.0
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(i: u64, ok: bool) -> Sample {
        Sample {
            phase: "measure".into(),
            ok,
            error_kind: (!ok).then(|| "timeout".to_owned()),
            sent_ns: Some(i * 1_000_000),
            done_ns: Some(i * 1_000_000 + 50_000_000),
            queue_us: Some(10 + i % 7),
            ttft_us: Some(1_000 + i * 37 % 5_000),
            e2e_us: Some(50_000 + i),
            n_in: 10,
            n_out: 5,
            ..Sample::default()
        }
    }

    #[test]
    fn exports_merge_as_one_run_would_have_summed() {
        // Three workers' shares of one run, and the run whole.
        let mut whole = Summarizer::default();
        let mut parts = [
            Summarizer::default(),
            Summarizer::default(),
            Summarizer::default(),
        ];
        for i in 0..3000u64 {
            let s = sample(i, i % 50 != 0);
            whole.add(&s);
            parts[(i % 3) as usize].add(&s);
        }
        let exports: Vec<Export> = parts.iter().map(Summarizer::export).collect();
        // Through JSON, as histograms.json holds them.
        let exports: Vec<Export> = exports
            .iter()
            .map(|e| serde_json::from_str(&serde_json::to_string(e).unwrap()).unwrap())
            .collect();
        let merged = merge_exports(&exports).unwrap();
        assert_eq!(merged, whole.overall());
        assert_eq!(merged.requests, 3000);
        assert_eq!(merged.errors["timeout"], 60);
        let mut bad = exports[0].clone();
        bad.histograms.insert("ttft".into(), "zz".into());
        assert!(
            merge_exports(&[bad])
                .unwrap_err()
                .contains("histogram `ttft`")
        );
    }

    #[test]
    fn session_figures_count_turns_delays_and_think_errors() {
        let mut s = Summarizer::default();
        assert_eq!(s.sessions(), None);
        let turn = |first, last, delay_ms: i64, queue_us| TurnSample {
            first,
            last,
            after_end: !first,
            delay_ns: delay_ms * 1_000_000,
            queue_us,
            cancelled: false,
        };
        s.add_turn(&turn(true, false, 0, Some(10)));
        s.add_turn(&turn(false, false, 250, Some(40)));
        s.add_turn(&turn(false, true, -30, Some(20)));
        s.add_turn(&turn(true, true, 0, Some(5)));
        // A second session's later turn never sent (a stop): not counted.
        s.add_turn(&turn(false, true, 0, None));
        let f = s.sessions().unwrap();
        assert_eq!(
            (
                f.started,
                f.completed,
                f.turns,
                f.later_turns,
                f.delayed,
                f.earlier
            ),
            (2, 2, 4, 2, 1, 1)
        );
        // HDR precision: 3 significant digits.
        let max = f.delay_ms.as_ref().map_or(0.0, |l| l.max);
        assert!((max - 250.0).abs() <= 0.25, "{max}");
        assert_eq!(f.think_error_ms.as_ref().map(|l| l.count), Some(2));
        let text = render_sessions(&f);
        assert!(
            text.contains("sessions 2 started, 2 completed; 4 turns (2 after a first)"),
            "{text}"
        );
        assert!(
            text.contains("turns delayed by the target 1 (p50 250.1 ms"),
            "{text}"
        );
    }

    #[test]
    fn warmup_is_excluded_and_rates_use_sent_to_done() {
        let mut s = Summarizer::default();
        let sample = |phase: &str, sent: u64, done: u64, ok: bool| Sample {
            phase: phase.into(),
            ok,
            error_kind: (!ok).then(|| "http_5xx".into()),
            sent_ns: Some(sent),
            done_ns: Some(done),
            queue_us: Some(10),
            ttft_us: Some(1000),
            e2e_us: Some(2000),
            n_in: 10,
            n_out: 5,
            ..Default::default()
        };
        s.add(&sample("warmup", 0, 1_000_000_000, true));
        s.add(&sample("measure", 1_000_000_000, 2_000_000_000, true));
        s.add(&sample("measure", 1_500_000_000, 3_000_000_000, true));
        s.add(&sample("measure", 1_600_000_000, 1_700_000_000, false));
        let o = s.overall();
        assert_eq!((o.requests, o.ok), (3, 2));
        assert_eq!(o.errors["http_5xx"], 1);
        assert!((o.duration_s - 2.0).abs() < 1e-9);
        assert!((o.request_throughput - 1.0).abs() < 1e-9);
        assert!((o.output_tokens_per_s - 5.0).abs() < 1e-9);
        assert_eq!(o.ttft_ms.as_ref().unwrap().p50, 1.0);
        assert_eq!(s.phases().len(), 2);
        let text = render(&o, &s.phases(), 1.0, Some(4.0));
        assert!(text.contains("requests 2 ok, 1 failed"), "{text}");
        // Both throughputs, labelled: 2 ok over the 2 s measured span and the 4 s intended.
        assert!(
            text.contains(
                "duration 2.0 s measured (first send to last response), 4.0 s intended\n"
            ) && text.contains("throughput 1.00 req/s measured, 0.50 req/s intended;"),
            "{text}"
        );
        let without = render(&o, &s.phases(), 1.0, None);
        assert!(
            without.contains(
                "duration 2.0 s measured (first send to last response)   throughput 1.00 req/s"
            ),
            "{without}"
        );
    }
}
