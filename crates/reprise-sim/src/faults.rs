//! Faults on demand: what can go wrong with a request, and how often.

use serde::{Deserialize, Serialize};

/// Fault rates (0..=1 each) and their parameters. Set by flags at start and replaced at run
/// time with `POST /admin/faults`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// Share of requests answered at once with `error_status` and an OpenAI error body.
    pub error_rate: f64,
    /// Status of injected errors (default 500).
    pub error_status: u16,
    /// Share of requests whose connection is closed before any response.
    pub reset_rate: f64,
    /// Share of streamed requests cut (connection aborted) after `cut_after_tokens` tokens.
    pub cut_rate: f64,
    /// Tokens sent before a cut.
    pub cut_after_tokens: u32,
    /// Share of streamed requests that stall (no bytes) for `stall_ms` after
    /// `stall_after_tokens` tokens.
    pub stall_rate: f64,
    /// Stall length, ms (scaled by `--speedup`).
    pub stall_ms: u64,
    /// Tokens sent before a stall.
    pub stall_after_tokens: u32,
    /// Share of streamed requests that get one malformed SSE event (bad JSON) mid-stream.
    pub malformed_rate: f64,
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            error_rate: 0.0,
            error_status: 500,
            reset_rate: 0.0,
            cut_rate: 0.0,
            cut_after_tokens: 4,
            stall_rate: 0.0,
            stall_ms: 1000,
            stall_after_tokens: 2,
            malformed_rate: 0.0,
        }
    }
}

impl Faults {
    /// Checks rates and statuses.
    pub fn check(&self) -> Result<(), String> {
        let rates = [
            ("error_rate", self.error_rate),
            ("reset_rate", self.reset_rate),
            ("cut_rate", self.cut_rate),
            ("stall_rate", self.stall_rate),
            ("malformed_rate", self.malformed_rate),
        ];
        for (name, r) in rates {
            if !(0.0..=1.0).contains(&r) {
                return Err(format!("`{name}` must be between 0 and 1, got {r}"));
            }
        }
        if !(400..600).contains(&self.error_status) {
            return Err(format!(
                "`error_status` must be a 4xx or 5xx status, got {}",
                self.error_status
            ));
        }
        Ok(())
    }
}

/// The faults drawn for one request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Drawn {
    /// Answer with this error status.
    pub error: Option<u16>,
    /// Close the connection before responding.
    pub reset: bool,
    /// Abort the stream after this many tokens.
    pub cut_after: Option<u32>,
    /// Stall after this many tokens for this many ms.
    pub stall: Option<(u32, u64)>,
    /// Send one malformed event after this many tokens.
    pub malformed_after: Option<u32>,
}

impl Faults {
    /// Draws the faults of one request from uniform numbers in 0..1 (one per fault kind).
    pub fn draw(&self, u: [f64; 5]) -> Drawn {
        let hit = |i: usize, rate: f64| rate > 0.0 && u[i] < rate;
        Drawn {
            error: hit(0, self.error_rate).then_some(self.error_status),
            reset: hit(1, self.reset_rate),
            cut_after: hit(2, self.cut_rate).then_some(self.cut_after_tokens),
            stall: hit(3, self.stall_rate).then_some((self.stall_after_tokens, self.stall_ms)),
            malformed_after: hit(4, self.malformed_rate).then_some(1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_follow_rates() {
        let f = Faults {
            error_rate: 0.5,
            cut_rate: 1.0,
            ..Faults::default()
        };
        let d = f.draw([0.4, 0.0, 0.99, 0.0, 0.0]);
        assert_eq!(d.error, Some(500));
        assert!(!d.reset, "zero rate never fires");
        assert_eq!(d.cut_after, Some(4));
        assert_eq!(f.draw([0.6, 0.0, 0.0, 0.0, 0.0]).error, None);
    }

    #[test]
    fn checks_ranges() {
        assert!(
            Faults {
                error_rate: 1.5,
                ..Faults::default()
            }
            .check()
            .is_err()
        );
        assert!(
            Faults {
                error_status: 200,
                ..Faults::default()
            }
            .check()
            .is_err()
        );
        assert!(Faults::default().check().is_ok());
    }
}
