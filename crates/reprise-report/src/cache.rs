//! Prefix-cache fidelity: the hit rate the server reported during the replay (its
//! `usage.prompt_tokens_details.cached_tokens`) beside the hit rate the trace implies (its
//! `prefix_hashes`, requests in the order they were sent, through an unbounded cache and,
//! given the server's size, an LRU cache). TTFT depends on it: a replay whose hit rate is
//! not production's does not measure production's TTFT.

use std::collections::{BTreeSet, HashMap, HashSet};

use polars::prelude::*;
use serde::Serialize;

use crate::ReportError;
use crate::load::Run;

/// How far apart (percentage points) the observed and implied hit rates may be before the
/// report says so.
pub const POINTS: f64 = 10.0;

/// Observed and implied prefix-cache hit rates of a run (shares of prompt tokens), both over
/// the successful measured requests.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct CacheFidelity {
    /// Cached / prompt tokens over the measured successful requests whose server said.
    pub observed: Option<f64>,
    /// What the trace's prefix hashes imply with an unbounded cache.
    pub implied_unbounded: Option<f64>,
    /// The cache size of the LRU figure, in blocks of `block_tokens`.
    pub cache_blocks: Option<u64>,
    /// What they imply with an LRU cache of `cache_blocks`.
    pub implied_lru: Option<f64>,
    /// Tokens a prefix hash covers (`reprise.block_tokens` of the trace).
    pub block_tokens: Option<u32>,
    /// Set when observed and implied differ by more than [`POINTS`].
    pub warning: Option<String>,
}

/// An LRU set of block hashes of a fixed capacity.
struct Lru {
    capacity: u64,
    last_used: HashMap<u64, u64>,
    order: BTreeSet<(u64, u64)>,
    clock: u64,
}

impl Lru {
    fn new(capacity: u64) -> Lru {
        Lru {
            capacity,
            last_used: HashMap::new(),
            order: BTreeSet::new(),
            clock: 0,
        }
    }

    fn contains(&self, h: u64) -> bool {
        self.last_used.contains_key(&h)
    }

    fn touch(&mut self, h: u64) {
        self.clock += 1;
        if let Some(old) = self.last_used.insert(h, self.clock) {
            self.order.remove(&(old, h));
        }
        self.order.insert((self.clock, h));
        while self.order.len() as u64 > self.capacity {
            let Some((_, evicted)) = self.order.pop_first() else {
                break;
            };
            self.last_used.remove(&evicted);
        }
    }
}

/// Leading blocks of `hashes` found by `hit` (a prefix cache matches from the start).
fn leading(hashes: &[u64], hit: impl Fn(u64) -> bool) -> u64 {
    hashes.iter().take_while(|h| hit(**h)).count() as u64
}

/// Hit tokens of one request: its leading hit blocks, never the whole prompt (a server
/// always computes the last prompt token).
fn hit_tokens(blocks: u64, block_tokens: u32, prompt: u64) -> u64 {
    (blocks * u64::from(block_tokens)).min(prompt.saturating_sub(1))
}

/// The hit rates `requests` imply, in send order: (unbounded, LRU of `cache_blocks`), each
/// the hit tokens over the prompt tokens of the requests that count (`measured`).
/// `requests`: (prompt tokens, prefix hashes, measured).
pub fn implied(
    requests: &[(u64, Vec<u64>, bool)],
    block_tokens: u32,
    cache_blocks: Option<u64>,
) -> (Option<f64>, Option<f64>) {
    let mut seen: HashSet<u64> = HashSet::new();
    let mut lru = cache_blocks.map(Lru::new);
    let (mut prompt, mut hits, mut lru_hits) = (0u64, 0u64, 0u64);
    for (tokens, hashes, measured) in requests {
        let unbounded = leading(hashes, |h| seen.contains(&h));
        let bounded = lru.as_ref().map(|l| leading(hashes, |h| l.contains(h)));
        if *measured {
            prompt += tokens;
            hits += hit_tokens(unbounded, block_tokens, *tokens);
            lru_hits += bounded.map_or(0, |b| hit_tokens(b, block_tokens, *tokens));
        }
        seen.extend(hashes.iter().copied());
        if let Some(l) = lru.as_mut() {
            for h in hashes {
                l.touch(*h);
            }
        }
    }
    if prompt == 0 {
        return (None, None);
    }
    let rate = |h: u64| h as f64 / prompt as f64;
    (Some(rate(hits)), lru.map(|_| rate(lru_hits)))
}

/// The run's cache fidelity; `None` when neither the server nor the trace says anything.
pub fn fidelity(
    run: &Run,
    observed: Option<f64>,
    cache_blocks: Option<u64>,
) -> Result<Option<CacheFidelity>, ReportError> {
    let mut implied_rates = (None, None);
    if let Some(block_tokens) = run.block_tokens {
        let mut lf = crate::load::scan(&run.files)?;
        let has_hashes = lf
            .collect_schema()
            .map(|s| s.contains("prefix_hashes"))
            .unwrap_or(false);
        if has_hashes {
            // Only requests the server served enter its cache (a refused one never does).
            let served = col("status")
                .cast(DataType::Int64)
                .gt_eq(lit(200))
                .and(col("status").cast(DataType::Int64).lt(lit(300)))
                .and(col("error_kind").is_null())
                .fill_null(lit(false));
            let df = lf
                .filter(
                    col("sent")
                        .is_not_null()
                        .and(col("prefix_hashes").is_not_null())
                        .and(served),
                )
                .select([
                    col("sent").cast(DataType::Int64),
                    col("input_tokens").cast(DataType::UInt64),
                    col("prefix_hashes"),
                    col("phase").neq(lit("warmup")).alias("measured"),
                ])
                .sort(["sent"], SortMultipleOptions::default())
                .collect()?;
            let tokens = df.column("input_tokens")?.u64()?.clone();
            let measured = df.column("measured")?.bool()?.clone();
            let lists = df.column("prefix_hashes")?.list()?.clone();
            let mut requests = Vec::with_capacity(df.height());
            for i in 0..df.height() {
                let hashes: Vec<u64> = match lists.get_as_series(i) {
                    Some(s) => s.u64()?.iter().flatten().collect(),
                    None => Vec::new(),
                };
                requests.push((
                    tokens.get(i).unwrap_or(0),
                    hashes,
                    measured.get(i).unwrap_or(false),
                ));
            }
            implied_rates = implied(&requests, block_tokens, cache_blocks);
        }
    }
    let (implied_unbounded, implied_lru) = implied_rates;
    if observed.is_none() && implied_unbounded.is_none() {
        return Ok(None);
    }
    let compared = implied_lru.or(implied_unbounded);
    let warning = match (observed, compared) {
        (Some(o), Some(i)) if ((o - i) * 100.0).abs() > POINTS => Some(format!(
            "the server's prefix-cache hit rate ({:.1}%) differs from the trace's ({:.1}%{}) by {:.1} points: TTFT here is not the trace's",
            o * 100.0,
            i * 100.0,
            if implied_lru.is_some() {
                format!(", LRU of {} blocks", cache_blocks.unwrap_or(0))
            } else {
                ", unbounded cache".to_owned()
            },
            ((o - i) * 100.0).abs()
        )),
        _ => None,
    };
    Ok(Some(CacheFidelity {
        observed,
        implied_unbounded,
        cache_blocks: implied_lru.and(cache_blocks),
        implied_lru,
        block_tokens: run.block_tokens,
        warning,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_prefixes_hit_from_the_second_request_on() {
        // Three requests of 4 blocks of 10 tokens sharing their first 2 blocks, then one
        // unrelated.
        let requests = vec![
            (40, vec![1, 2, 3, 4], true),
            (40, vec![1, 2, 5, 6], true),
            (40, vec![1, 2, 7, 8], true),
            (40, vec![9, 10, 11, 12], true),
        ];
        let (unbounded, lru) = implied(&requests, 10, None);
        // 0 + 20 + 20 + 0 hit tokens of 160.
        assert_eq!(unbounded, Some(40.0 / 160.0));
        assert_eq!(lru, None);
        // A cache of 4 blocks: after the first request it holds 1-4; the second hits 1, 2
        // and leaves 1, 2, 5, 6; the third hits 1, 2.
        assert_eq!(implied(&requests, 10, Some(4)).1, Some(40.0 / 160.0));
        // A cache of 2 blocks keeps only the last request's tail: no hits.
        assert_eq!(implied(&requests, 10, Some(2)).1, Some(0.0));
    }

    #[test]
    fn a_whole_prompt_in_the_cache_still_computes_its_last_token_and_warmup_does_not_count() {
        let requests = vec![(20, vec![1, 2], false), (20, vec![1, 2], true)];
        // The warm-up request fills the cache; the measured one hits 19 of its 20 tokens.
        assert_eq!(implied(&requests, 10, None).0, Some(19.0 / 20.0));
        // A match stops at the first miss: a later equal block does not count.
        let gap = vec![(30, vec![1, 2, 3], true), (30, vec![9, 2, 3], true)];
        assert_eq!(implied(&gap, 10, None).0, Some(0.0));
        assert_eq!(implied(&[], 10, None), (None, None));
    }
}
