//! The continuous-batching engine model: pure bookkeeping, no clock.
//!
//! Each [`Engine::step`] is one iteration of a vLLM-like scheduler:
//!
//! 1. every running sequence past prefill decodes one token (taking a new KV block every
//!    `block_size` tokens; when none is free, the newest running sequence is preempted and
//!    recomputed later, or — without preemption — the sequence stalls this step);
//! 2. sequences still in prefill continue it in chunks, within the step's token budget;
//! 3. waiting sequences are admitted, oldest first, while `max_num_seqs`, the token budget
//!    and free KV blocks allow. Prompt blocks already in the prefix cache are not prefilled.
//!
//! A sequence whose prefill completes in a step emits its first token in that step. The
//! step's duration comes from the profile's roofline model; the driver sleeps it.

use std::collections::{BTreeMap, HashMap, VecDeque};

use crate::profile::Profile;

/// Engine-wide sequence id.
pub type SeqId = u64;

/// A request handed to the engine.
#[derive(Debug, Clone, PartialEq)]
pub struct SeqSpec {
    /// Id chosen by the caller.
    pub id: SeqId,
    /// Prompt tokens.
    pub prompt_tokens: u32,
    /// Tokens to generate (at least 1).
    pub output_tokens: u32,
    /// Chained hashes of the prompt's full blocks (for prefix caching).
    pub block_hashes: Vec<u64>,
}

/// What a step produced for one sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Emit {
    /// One more token.
    Token(SeqId),
    /// The last token: the sequence is finished.
    Last(SeqId),
}

/// The outcome of one step.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StepOutcome {
    /// Step duration from the profile, µs (0 when nothing ran).
    pub duration_us: f64,
    /// Tokens emitted, in order.
    pub emits: Vec<Emit>,
    /// Sequences in the batch (decoding or prefilling).
    pub batch: usize,
    /// Prefill tokens computed.
    pub prefill_tokens: u64,
    /// Sequences admitted this step.
    pub admitted: Vec<SeqId>,
    /// Each admitted sequence's prompt tokens served from the prefix cache (same order).
    pub cached_tokens: Vec<u32>,
    /// Prompt tokens admitted this step, and how many of them hit the prefix cache.
    pub prefix_queried_tokens: u64,
    /// Prefix-cache hit tokens among `prefix_queried_tokens`.
    pub prefix_hit_tokens: u64,
    /// Sequences preempted this step.
    pub preempted: u64,
}

#[derive(Debug)]
struct Seq {
    spec: SeqSpec,
    /// Tokens generated so far.
    generated: u32,
    /// Tokens whose KV is computed.
    computed: u32,
    /// Tokens to compute before decoding (prompt, plus generated ones after a preemption).
    prefill_target: u32,
    /// Shared (content-addressed) prompt blocks this sequence holds.
    shared: Vec<u64>,
    /// Blocks of its own.
    private: u64,
}

impl Seq {
    fn blocks(&self) -> u64 {
        self.shared.len() as u64 + self.private
    }

    fn decoding(&self) -> bool {
        self.computed >= self.prefill_target
    }
}

#[derive(Debug, Clone, Copy)]
struct SharedBlock {
    refs: u32,
    last_used: u64,
}

/// The engine state.
#[derive(Debug)]
pub struct Engine {
    profile: Profile,
    waiting: VecDeque<Seq>,
    running: Vec<Seq>,
    shared: HashMap<u64, SharedBlock>,
    /// Cached (unreferenced) shared blocks by last use, for LRU eviction.
    lru: BTreeMap<(u64, u64), ()>,
    used_blocks: u64,
    clock: u64,
}

/// Why a request was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// The waiting queue is full.
    QueueFull,
    /// Prompt plus output exceed the KV cache: it could never run.
    TooLarge,
}

impl Engine {
    /// A new, empty engine.
    pub fn new(profile: Profile) -> Self {
        Engine {
            profile,
            waiting: VecDeque::new(),
            running: Vec::new(),
            shared: HashMap::new(),
            lru: BTreeMap::new(),
            used_blocks: 0,
            clock: 0,
        }
    }

    /// The profile.
    pub fn profile(&self) -> &Profile {
        &self.profile
    }

    /// Queues a request.
    pub fn submit(&mut self, spec: SeqSpec) -> Result<(), Rejection> {
        if self.waiting.len() >= self.profile.max_queue {
            return Err(Rejection::QueueFull);
        }
        let bs = u64::from(self.profile.block_size);
        let need = (u64::from(spec.prompt_tokens) + u64::from(spec.output_tokens)).div_ceil(bs);
        if need > self.profile.kv_blocks() {
            return Err(Rejection::TooLarge);
        }
        let prefill_target = spec.prompt_tokens.max(1);
        self.waiting.push_back(Seq {
            spec,
            generated: 0,
            computed: 0,
            prefill_target,
            shared: Vec::new(),
            private: 0,
        });
        Ok(())
    }

    /// Drops a sequence (its client went away); returns whether it was known.
    pub fn abort(&mut self, id: SeqId) -> bool {
        if let Some(i) = self.running.iter().position(|s| s.spec.id == id) {
            let mut seq = self.running.remove(i);
            self.clock += 1;
            self.release(&mut seq);
            return true;
        }
        if let Some(i) = self.waiting.iter().position(|s| s.spec.id == id) {
            let mut seq = self.waiting.remove(i).expect("index is valid");
            self.release(&mut seq);
            return true;
        }
        false
    }

    /// Sequences running.
    pub fn running(&self) -> usize {
        self.running.len()
    }

    /// Sequences waiting.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Whether there is anything to do.
    pub fn is_idle(&self) -> bool {
        self.running.is_empty() && self.waiting.is_empty()
    }

    /// KV blocks in use by running sequences (cached prefix blocks excluded).
    pub fn used_blocks(&self) -> u64 {
        self.used_blocks
    }

    /// Share of the KV cache in use, 0..=1 (vLLM's `gpu_cache_usage_perc`).
    pub fn cache_usage(&self) -> f64 {
        self.used_blocks as f64 / self.profile.kv_blocks().max(1) as f64
    }

    /// KV tokens computed across running sequences.
    pub fn kv_tokens(&self) -> u64 {
        self.running.iter().map(|s| u64::from(s.computed)).sum()
    }

    fn free_blocks(&self) -> u64 {
        // Cached blocks count as free: they are evicted on demand.
        self.profile.kv_blocks().saturating_sub(self.used_blocks)
    }

    fn cached_blocks(&self) -> u64 {
        self.lru.len() as u64
    }

    /// Takes `n` new blocks, evicting cached ones (LRU) if needed. Caller checked capacity.
    fn allocate(&mut self, n: u64) {
        let total = self.profile.kv_blocks();
        while self.used_blocks + n + self.cached_blocks() > total {
            let Some((&(used, hash), _)) = self.lru.iter().next() else {
                break;
            };
            self.lru.remove(&(used, hash));
            self.shared.remove(&hash);
        }
        self.used_blocks += n;
    }

    fn release(&mut self, seq: &mut Seq) {
        self.used_blocks -= seq.private;
        seq.private = 0;
        for hash in std::mem::take(&mut seq.shared) {
            if let Some(b) = self.shared.get_mut(&hash) {
                b.refs -= 1;
                if b.refs == 0 {
                    self.used_blocks -= 1;
                    if self.profile.prefix_caching {
                        b.last_used = self.clock;
                        self.lru.insert((self.clock, hash), ());
                    } else {
                        self.shared.remove(&hash);
                    }
                }
            }
        }
    }

    /// Longest run of leading prompt blocks present in the prefix cache.
    fn prefix_hits(&self, seq: &Seq) -> usize {
        if !self.profile.prefix_caching {
            return 0;
        }
        seq.spec
            .block_hashes
            .iter()
            .take_while(|h| self.shared.contains_key(h))
            .count()
    }

    /// Tries to admit the head of the queue; returns whether it was admitted.
    fn try_admit(&mut self, budget: u64) -> bool {
        let Some(seq) = self.waiting.front() else {
            return false;
        };
        if budget == 0 || self.running.len() >= self.profile.max_num_seqs {
            return false;
        }
        let bs = u64::from(self.profile.block_size);
        let hits = self.prefix_hits(seq);
        let total_blocks = (u64::from(seq.prefill_target) + 1).div_ceil(bs);
        let reused_cached = seq.spec.block_hashes[..hits]
            .iter()
            .filter(|h| self.shared.get(h).is_some_and(|b| b.refs == 0))
            .count() as u64;
        let new_blocks = total_blocks.saturating_sub(hits as u64);
        if new_blocks + reused_cached > self.free_blocks() {
            return false;
        }
        let mut seq = self.waiting.pop_front().expect("head exists");
        self.clock += 1;
        for hash in &seq.spec.block_hashes[..hits] {
            let b = self.shared.get_mut(hash).expect("hit blocks are cached");
            if b.refs == 0 {
                self.lru.remove(&(b.last_used, *hash));
                self.used_blocks += 1;
            }
            b.refs += 1;
            b.last_used = self.clock;
            seq.shared.push(*hash);
        }
        self.allocate(new_blocks);
        seq.private = new_blocks;
        // Cached tokens skip prefill; at least the last prompt token is always computed.
        let cached_tokens = (hits as u64 * bs).min(u64::from(seq.prefill_target) - 1) as u32;
        seq.computed = cached_tokens;
        self.running.push(seq);
        true
    }

    /// Publishes a sequence's computed full prompt blocks into the prefix cache.
    fn publish_prompt_blocks(&mut self, idx: usize) {
        if !self.profile.prefix_caching {
            return;
        }
        let seq = &mut self.running[idx];
        let held = seq.shared.len();
        let hashes: Vec<u64> = seq.spec.block_hashes[held..].to_vec();
        for hash in hashes {
            let seq = &mut self.running[idx];
            if seq.private == 0 {
                break;
            }
            match self.shared.get_mut(&hash) {
                Some(b) => {
                    // Someone else computed it meanwhile: share theirs, free ours.
                    if b.refs == 0 {
                        self.lru.remove(&(b.last_used, hash));
                    } else {
                        self.used_blocks -= 1;
                    }
                    b.refs += 1;
                }
                None => {
                    self.shared.insert(
                        hash,
                        SharedBlock {
                            refs: 1,
                            last_used: self.clock,
                        },
                    );
                }
            }
            seq.private -= 1;
            seq.shared.push(hash);
        }
    }

    /// Frees a block for `keep` by preempting the newest other running sequence.
    fn preempt_for(&mut self, keep: usize) -> Option<usize> {
        let victim = (0..self.running.len()).rev().find(|&i| i != keep)?;
        let mut seq = self.running.remove(victim);
        self.release(&mut seq);
        seq.computed = 0;
        seq.prefill_target = seq.spec.prompt_tokens.max(1) + seq.generated;
        self.waiting.push_front(seq);
        Some(victim)
    }

    /// Prefills the next chunk of sequence `i` within the budget; a sequence whose prefill
    /// completes publishes its prompt blocks and emits a token this step.
    fn prefill_chunk(
        &mut self,
        i: usize,
        budget: &mut u64,
        out: &mut StepOutcome,
        emits_idx: &mut Vec<usize>,
    ) {
        let seq = &mut self.running[i];
        let chunk = u64::from(seq.prefill_target - seq.computed).min(*budget) as u32;
        seq.computed += chunk;
        *budget -= u64::from(chunk);
        out.prefill_tokens += u64::from(chunk);
        if seq.decoding() {
            self.publish_prompt_blocks(i);
            emits_idx.push(i);
        }
    }

    /// Runs one step.
    pub fn step(&mut self) -> StepOutcome {
        let mut out = StepOutcome::default();
        let bs = u64::from(self.profile.block_size);
        let mut budget = u64::from(self.profile.max_batched_tokens);
        let mut emits_idx: Vec<usize> = Vec::new();

        // 1. Decode: one token for each sequence past prefill.
        let mut i = 0;
        while i < self.running.len() {
            if !self.running[i].decoding() || budget == 0 {
                i += 1;
                continue;
            }
            let needs_block =
                u64::from(self.running[i].computed) + 1 > self.running[i].blocks() * bs;
            if needs_block {
                if self.free_blocks() == 0
                    && self.profile.preemption
                    && let Some(victim) = self.preempt_for(i)
                {
                    out.preempted += 1;
                    emits_idx.retain(|&e| e != victim);
                    for e in &mut emits_idx {
                        if *e > victim {
                            *e -= 1;
                        }
                    }
                    if victim < i {
                        i -= 1;
                    }
                    continue; // retry this sequence with the freed blocks
                }
                if self.free_blocks() == 0 {
                    i += 1; // stalls this step
                    continue;
                }
                self.allocate(1);
                self.running[i].private += 1;
            }
            self.running[i].computed += 1;
            budget -= 1;
            emits_idx.push(i);
            i += 1;
        }
        let decoded = emits_idx.len();

        // 2. Continue chunked prefills.
        for i in 0..self.running.len() {
            if budget == 0 {
                break;
            }
            if self.running[i].decoding() {
                continue;
            }
            self.prefill_chunk(i, &mut budget, &mut out, &mut emits_idx);
        }

        // 3. Admit waiting sequences and start their prefill.
        while self.try_admit(budget) {
            let i = self.running.len() - 1;
            let seq = &self.running[i];
            if seq.generated == 0 {
                let prompt = u64::from(seq.spec.prompt_tokens);
                out.prefix_queried_tokens += prompt;
                out.prefix_hit_tokens += u64::from(seq.computed).min(prompt);
            }
            out.admitted.push(seq.spec.id);
            out.cached_tokens
                .push(seq.computed.min(seq.spec.prompt_tokens));
            self.prefill_chunk(i, &mut budget, &mut out, &mut emits_idx);
        }

        let prefilling = self.running.iter().filter(|s| !s.decoding()).count();
        out.batch = decoded + (emits_idx.len() - decoded) + prefilling;
        out.duration_us = self
            .profile
            .step_us(out.batch, out.prefill_tokens, self.kv_tokens());

        // Emit tokens; finished sequences leave (highest index first keeps indices valid).
        let mut finished = Vec::new();
        for &i in &emits_idx {
            let seq = &mut self.running[i];
            seq.generated += 1;
            if seq.generated >= seq.spec.output_tokens {
                out.emits.push(Emit::Last(seq.spec.id));
                finished.push(i);
            } else {
                out.emits.push(Emit::Token(seq.spec.id));
            }
        }
        finished.sort_unstable_by(|a, b| b.cmp(a));
        for i in finished {
            let mut seq = self.running.remove(i);
            self.clock += 1;
            self.release(&mut seq);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile() -> Profile {
        let mut p = Profile::named("instant").expect("built-in");
        p.max_num_seqs = 4;
        p.max_batched_tokens = 64;
        p.kv_capacity_tokens = 16 * 40;
        p.max_queue = 100;
        p
    }

    fn spec(id: SeqId, prompt: u32, out: u32, hashes: Vec<u64>) -> SeqSpec {
        SeqSpec {
            id,
            prompt_tokens: prompt,
            output_tokens: out,
            block_hashes: hashes,
        }
    }

    /// Runs until idle; returns (step of first token, step of last token) per id.
    fn run(e: &mut Engine) -> HashMap<SeqId, (usize, usize, u32)> {
        let mut seen: HashMap<SeqId, (usize, usize, u32)> = HashMap::new();
        for step in 0..10_000 {
            if e.is_idle() {
                break;
            }
            for emit in e.step().emits {
                let (id, _) = match emit {
                    Emit::Token(id) => (id, false),
                    Emit::Last(id) => (id, true),
                };
                let entry = seen.entry(id).or_insert((step, step, 0));
                entry.1 = step;
                entry.2 += 1;
            }
        }
        assert!(e.is_idle(), "engine drains");
        assert_eq!(e.used_blocks(), 0, "all blocks released");
        seen
    }

    #[test]
    fn every_sequence_gets_exactly_its_tokens() {
        let mut e = Engine::new(profile());
        for id in 0..10 {
            e.submit(spec(id, 10 + id as u32 * 7, 1 + id as u32 * 3, vec![]))
                .unwrap();
        }
        let seen = run(&mut e);
        for id in 0..10 {
            assert_eq!(seen[&id].2, 1 + id as u32 * 3, "seq {id}");
        }
    }

    #[test]
    fn chunked_prefill_delays_the_first_token() {
        let mut e = Engine::new(profile());
        e.submit(spec(1, 200, 2, vec![])).unwrap(); // 200 tokens at 64 per step: 4 steps
        let seen = run(&mut e);
        assert_eq!(seen[&1].0, 3);
        assert_eq!(seen[&1].1, 4);
    }

    #[test]
    fn max_num_seqs_queues_the_rest() {
        let mut e = Engine::new(profile());
        for id in 0..6 {
            e.submit(spec(id, 4, 5, vec![])).unwrap();
        }
        e.step();
        assert_eq!((e.running(), e.waiting()), (4, 2));
        let seen = run(&mut e);
        assert!(
            seen[&4].0 >= seen[&0].1,
            "the fifth starts when one of the first finishes"
        );
    }

    #[test]
    fn prefix_cache_hits_skip_prefill() {
        let mut e = Engine::new(profile());
        let hashes: Vec<u64> = (1..=12).collect(); // 192 tokens of shared prefix
        e.submit(spec(1, 200, 1, hashes.clone())).unwrap();
        let first = run(&mut e);
        e.submit(spec(2, 200, 1, hashes)).unwrap();
        let mut out = e.step();
        assert_eq!(out.prefix_hit_tokens, 192);
        assert_eq!(
            out.emits,
            vec![Emit::Last(2)],
            "8 tokens left to prefill: first token in step 0"
        );
        assert_eq!(first[&1].0, 3, "without the cache it took 4 steps");
        out = e.step();
        assert!(out.emits.is_empty());
    }

    #[test]
    fn kv_exhaustion_preempts_and_still_completes() {
        let mut p = profile();
        p.kv_capacity_tokens = 16 * 6; // 6 blocks
        p.max_batched_tokens = 1000;
        let mut e = Engine::new(p);
        e.submit(spec(1, 16, 40, vec![])).unwrap();
        e.submit(spec(2, 16, 40, vec![])).unwrap();
        let mut preempted = 0;
        let mut counts: HashMap<SeqId, u32> = HashMap::new();
        while !e.is_idle() {
            let out = e.step();
            preempted += out.preempted;
            for emit in out.emits {
                let id = match emit {
                    Emit::Token(id) | Emit::Last(id) => id,
                };
                *counts.entry(id).or_default() += 1;
            }
        }
        assert!(preempted > 0);
        assert_eq!((counts[&1], counts[&2]), (40, 40));
        assert_eq!(e.used_blocks(), 0);
    }

    #[test]
    fn abort_releases_blocks() {
        let mut e = Engine::new(profile());
        e.submit(spec(1, 40, 100, vec![])).unwrap();
        e.submit(spec(2, 40, 100, vec![])).unwrap();
        e.step();
        assert!(e.used_blocks() > 0);
        assert!(e.abort(1) && e.abort(2));
        assert!(!e.abort(3));
        assert_eq!(e.used_blocks(), 0);
        assert!(e.is_idle());
    }

    #[test]
    fn rejects_when_the_queue_is_full_or_the_request_never_fits() {
        let mut p = profile();
        p.max_queue = 1;
        let mut e = Engine::new(p);
        e.submit(spec(1, 4, 4, vec![])).unwrap();
        assert_eq!(e.submit(spec(2, 4, 4, vec![])), Err(Rejection::QueueFull));
        let mut e = Engine::new(profile());
        assert_eq!(
            e.submit(spec(3, 16 * 40, 1, vec![])),
            Err(Rejection::TooLarge)
        );
    }
}
