//! Sessions: the turns of a conversation (rows sharing a `session_id`), numbered, with the
//! think time between them and cumulative prompt lengths (see `docs/formats.md`,
//! "Sessions").
//!
//! [`SessionTracker`] fills `turn` and `think_us` row by row as a trace is written (import,
//! record), and turns per-turn prompt lengths into cumulative ones; [`derive()`] does the
//! same over a whole trace in memory (replay, for traces written before trace/1.1).
//! [`SessionStats`] sums a trace's sessions up for people.

use std::collections::HashMap;

use crate::TraceRecord;

/// How a source counts a turn's prompt tokens.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum TurnLengths {
    /// The whole prompt sent, the conversation so far included (what `usage` reports).
    #[default]
    Cumulative,
    /// Only the turn's new message: the conversation so far is added on import.
    PerTurn,
}

/// What the tracker keeps of a session's last turn.
#[derive(Debug, Clone, Copy)]
struct Last {
    turn: u32,
    /// When the turn's response ended (arrival + e2e), ns.
    end_ns: Option<i64>,
    /// Its cumulative prompt and its output, tokens.
    input: Option<u32>,
    output: Option<u32>,
    /// The latest arrival seen of the session, for eviction.
    touched_ns: i64,
}

/// Sessions open at once beyond which the least recently seen half is forgotten (a turn of
/// a forgotten session starts again at 1): bounds memory on endless captures.
const MAX_OPEN: usize = 1 << 20;

/// Fills `turn` and `think_us` of rows as they come (in arrival order within a session).
#[derive(Debug, Default)]
pub struct SessionTracker {
    lengths: TurnLengths,
    open: HashMap<String, Last>,
}

impl SessionTracker {
    /// A tracker for a source whose prompt lengths are counted as `lengths`.
    pub fn new(lengths: TurnLengths) -> Self {
        SessionTracker {
            lengths,
            open: HashMap::new(),
        }
    }

    /// Numbers `r` within its session (unless it has a turn), sets its think time when the
    /// previous turn's end is known and came before it, and makes a per-turn prompt length
    /// cumulative. Rows without a session are left alone.
    pub fn observe(&mut self, r: &mut TraceRecord) {
        let Some(session) = r.session_id.as_deref() else {
            return;
        };
        let last = self.open.get(session).copied();
        if r.turn.is_none() {
            r.turn = Some(last.map_or(1, |l| l.turn.saturating_add(1)));
        }
        if let Some(last) = last {
            if r.think_us.is_none() {
                r.think_us = last
                    .end_ns
                    .filter(|&end| r.arrival.0 >= end)
                    .map(|end| ((r.arrival.0 - end) / 1000) as u64);
            }
            if self.lengths == TurnLengths::PerTurn
                && let (Some(own), Some(before)) = (r.input_tokens, last.input)
            {
                let total =
                    u64::from(own) + u64::from(before) + u64::from(last.output.unwrap_or(0));
                r.input_tokens = Some(total.min(u64::from(u32::MAX)) as u32);
            }
        }
        let entry = Last {
            turn: r.turn.unwrap_or(1),
            end_ns: r
                .e2e_us
                .map(|e| r.arrival.0.saturating_add(e as i64 * 1000)),
            input: r.input_tokens,
            output: r.output_tokens,
            touched_ns: r.arrival.0.max(last.map_or(i64::MIN, |l| l.touched_ns)),
        };
        if last.is_none() && self.open.len() >= MAX_OPEN {
            self.forget_oldest_half();
        }
        self.open.insert(session.to_owned(), entry);
    }

    fn forget_oldest_half(&mut self) {
        let mut touched: Vec<i64> = self.open.values().map(|l| l.touched_ns).collect();
        let mid = touched.len() / 2;
        let (_, &mut cut, _) = touched.select_nth_unstable(mid);
        self.open.retain(|_, l| l.touched_ns > cut);
    }
}

/// Fills `turn` and `think_us` where they are null, over a whole trace: each session's rows
/// are taken in `turn` order where every row has one, else in arrival order. Prompt lengths
/// are left as they are (a trace's are cumulative).
pub fn derive(records: &mut [TraceRecord]) {
    let mut by_session: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, r) in records.iter().enumerate() {
        if let Some(s) = r.session_id.as_deref() {
            by_session.entry(s).or_default().push(i);
        }
    }
    let mut groups: Vec<Vec<usize>> = by_session.into_values().collect();
    for g in &mut groups {
        let numbered = g.iter().all(|&i| records[i].turn.is_some());
        if numbered {
            g.sort_by_key(|&i| (records[i].turn, records[i].arrival));
        } else {
            g.sort_by_key(|&i| (records[i].arrival, i));
        }
    }
    for g in groups {
        let mut tracker = SessionTracker::new(TurnLengths::Cumulative);
        for i in g {
            tracker.observe(&mut records[i]);
        }
    }
}

/// The session rows of `records` (in their order), reduced to what sessions need —
/// arrival, session, turn, think time, end-to-end latency, prompt and output tokens — with
/// turns numbered and think times derived where missing ([`derive()`]).
pub fn session_turns(records: &[TraceRecord]) -> Vec<TraceRecord> {
    let mut turns: Vec<TraceRecord> = records
        .iter()
        .filter(|r| r.session_id.is_some())
        .map(|r| {
            let mut t = TraceRecord::new(String::new(), r.arrival);
            t.session_id = r.session_id.clone();
            t.turn = r.turn;
            t.think_us = r.think_us;
            t.e2e_us = r.e2e_us;
            t.input_tokens = r.input_tokens;
            t.output_tokens = r.output_tokens;
            t
        })
        .collect();
    derive(&mut turns);
    turns
}

/// A trace's sessions in figures.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct SessionStats {
    /// Distinct sessions.
    pub sessions: u64,
    /// Rows that belong to a session.
    pub turns: u64,
    /// Turns per session: median and maximum.
    pub turns_p50: u32,
    /// The longest session, turns.
    pub turns_max: u32,
    /// Think time, seconds: median and 90th percentile (turns that have one).
    pub think_p50_s: Option<f64>,
    /// 90th percentile of think time, seconds.
    pub think_p90_s: Option<f64>,
}

impl SessionStats {
    /// Sums up the sessions of `records` (whose `turn`/`think_us` may be null: they are
    /// derived first, [`session_turns`]).
    pub fn of(records: &[TraceRecord]) -> Option<SessionStats> {
        let mut turns: HashMap<&str, u32> = HashMap::new();
        let mut thinks = Vec::new();
        let copy = session_turns(records);
        if copy.is_empty() {
            return None;
        }
        for r in &copy {
            *turns
                .entry(r.session_id.as_deref().unwrap_or(""))
                .or_default() += 1;
            if let Some(t) = r.think_us {
                thinks.push(t as f64 / 1e6);
            }
        }
        let mut per: Vec<u32> = turns.values().copied().collect();
        per.sort_unstable();
        thinks.sort_by(f64::total_cmp);
        let pick = |v: &[f64], q: f64| {
            // Nearest rank: the smallest value with at least q of the values at or below it.
            (!v.is_empty()).then(|| v[((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1])
        };
        Some(SessionStats {
            sessions: per.len() as u64,
            turns: copy.len() as u64,
            turns_p50: per[(per.len() - 1) / 2],
            turns_max: *per.last().unwrap_or(&0),
            think_p50_s: pick(&thinks, 0.5),
            think_p90_s: pick(&thinks, 0.9),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Timestamp;
    use proptest::prelude::*;

    fn row(id: &str, session: Option<&str>, at_ms: i64, e2e_ms: Option<u64>) -> TraceRecord {
        let mut r = TraceRecord::new(id, Timestamp(at_ms * 1_000_000));
        r.session_id = session.map(str::to_owned);
        r.e2e_us = e2e_ms.map(|e| e * 1000);
        r
    }

    #[test]
    fn turns_are_numbered_and_think_time_runs_from_the_previous_end() {
        let mut rows = vec![
            row("a1", Some("a"), 0, Some(400)),
            row("x", None, 100, Some(50)),
            row("b1", Some("b"), 200, None),
            row("a2", Some("a"), 1_400, Some(300)),
            row("b2", Some("b"), 900, Some(10)),
            // Sent while a2 was still running (an agent's parallel call): no think time.
            row("a3", Some("a"), 1_500, Some(100)),
        ];
        derive(&mut rows);
        let got: Vec<_> = rows.iter().map(|r| (r.turn, r.think_us)).collect();
        assert_eq!(
            got,
            [
                (Some(1), None),
                (None, None),
                (Some(1), None),
                (Some(2), Some(1_000_000)),
                (Some(2), None), // b1's end is unknown
                (Some(3), None),
            ]
        );
    }

    #[test]
    fn given_turns_order_a_session_and_given_think_times_are_kept() {
        let mut rows = vec![
            row("s2", Some("s"), 0, Some(10)),
            row("s1", Some("s"), 5, Some(10)),
        ];
        rows[0].turn = Some(2);
        rows[1].turn = Some(1);
        derive(&mut rows);
        // s2 arrived before s1 ended (recorded clocks disagree): no think time made up.
        assert_eq!(rows[0].think_us, None);
        rows[0].think_us = Some(42);
        derive(&mut rows);
        assert_eq!(rows[0].think_us, Some(42));
    }

    #[test]
    fn per_turn_lengths_become_cumulative() {
        let mut t = SessionTracker::new(TurnLengths::PerTurn);
        let mut turns: Vec<TraceRecord> = [(100, 20), (30, 40), (5, 1)]
            .iter()
            .enumerate()
            .map(|(k, &(i, o))| {
                let mut r = row(&format!("t{k}"), Some("s"), k as i64 * 1000, Some(10));
                r.input_tokens = Some(i);
                r.output_tokens = Some(o);
                r
            })
            .collect();
        for r in &mut turns {
            t.observe(r);
        }
        let inputs: Vec<_> = turns.iter().map(|r| r.input_tokens.unwrap()).collect();
        // 100; 100 + 20 + 30; 150 + 40 + 5.
        assert_eq!(inputs, [100, 150, 195]);
        assert_eq!(turns[2].think_us, Some(990_000));
    }

    #[test]
    fn stats_count_sessions_turns_and_think_times() {
        let rows = vec![
            row("a1", Some("a"), 0, Some(1_000)),
            row("a2", Some("a"), 3_000, Some(1_000)),
            row("a3", Some("a"), 8_000, Some(1_000)),
            row("b1", Some("b"), 0, Some(1_000)),
            row("x", None, 0, None),
        ];
        let s = SessionStats::of(&rows).unwrap();
        assert_eq!(
            (s.sessions, s.turns, s.turns_p50, s.turns_max),
            (2, 4, 1, 3)
        );
        assert_eq!(s.think_p50_s, Some(2.0));
        assert_eq!(s.think_p90_s, Some(4.0));
        assert_eq!(SessionStats::of(&rows[4..]), None);
    }

    #[test]
    fn forgetting_keeps_the_recent_half() {
        let mut t = SessionTracker::default();
        for k in 0..10 {
            let mut r = row("r", Some(&format!("s{k}")), k, None);
            t.observe(&mut r);
        }
        t.forget_oldest_half();
        assert_eq!(t.open.len(), 4);
        assert!(t.open.contains_key("s9") && !t.open.contains_key("s5"));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]
        /// Whatever the order of rows, each session's turns are 1..=n in arrival order and
        /// a think time never exceeds the gap since the previous arrival.
        #[test]
        fn turns_are_a_permutation_in_arrival_order(
            rows in proptest::collection::vec((0u8..4, 0i64..10_000, proptest::option::of(0u64..3_000)), 0..60)
        ) {
            let mut records: Vec<TraceRecord> = rows.iter().enumerate()
                .map(|(i, &(s, at, e2e))| row(&format!("{i}"), Some(&format!("s{s}")), at, e2e))
                .collect();
            derive(&mut records);
            for s in 0..4 {
                let key = format!("s{s}");
                let mut mine: Vec<&TraceRecord> = records.iter()
                    .filter(|r| r.session_id.as_deref() == Some(key.as_str())).collect();
                mine.sort_by_key(|r| r.turn);
                for (k, r) in mine.iter().enumerate() {
                    prop_assert_eq!(r.turn, Some(k as u32 + 1));
                    if k > 0 {
                        prop_assert!(mine[k - 1].arrival <= r.arrival);
                        if let Some(t) = r.think_us {
                            let gap = (r.arrival.0 - mine[k - 1].arrival.0) / 1000;
                            prop_assert!(t as i64 <= gap);
                        }
                    } else {
                        prop_assert_eq!(r.think_us, None);
                    }
                }
            }
        }
    }
}
