//! Prompts with an exact token count under the default tokenizer, built deterministically so
//! that requests with equal `prefix_hashes` share exactly that prefix and no others collide.
//!
//! Prompts are made of [`reprise_tokenizer::OUTPUT_WORDS`]: words that are one cl100k token
//! each and never merge with their neighbours, so `n` words are exactly `n` tokens. Block `i`
//! of a prompt is derived from its `i`-th prefix hash alone (the hash already encodes the
//! whole prefix), so equal hashes give equal text; the remainder comes from the request id.
//! With 32 words per position, two different 16-token blocks collide with probability 2^-80.
//!
//! A turn of a session ([`Conversations`]) repeats the conversation so far: the first
//! turn's prompt, a stand-in answer of each earlier turn's output length, each earlier
//! turn's own message, then its own, cut or filled to its exact count. So turn k's prompt
//! begins with turn k−1's prompt, as a chat client's does, and a server's prefix cache sees
//! the sharing the conversation has. The whole conversation is one user message: role
//! markers would add chat-template tokens the trace does not count.

use std::collections::HashMap;
use std::sync::Arc;

use reprise_tokenizer::OUTPUT_WORDS;

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// FNV-1a of a text: the same on every platform and build (prompts, shard ownership).
pub(crate) fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn push_words(out: &mut String, seed: u64, n: usize) {
    let mut state = seed;
    let mut bits = 0u64;
    let mut left = 0;
    for _ in 0..n {
        if left == 0 {
            state = splitmix(state);
            bits = state;
            left = 12; // 12 words of 5 bits per 64-bit draw
        }
        out.push_str(OUTPUT_WORDS[(bits & 31) as usize]);
        bits >>= 5;
        left -= 1;
    }
}

/// One conversation: its first turn and every turn's prompt and output lengths.
#[derive(Debug, Clone, PartialEq)]
pub struct Conversation {
    /// The first turn's request id (its prompt seeds the conversation).
    pub first_id: String,
    /// The first turn's prefix hashes (a shared system prompt, say).
    pub first_hashes: Option<Vec<u64>>,
    /// Per turn: cumulative prompt tokens and output tokens.
    pub turns: Vec<(u32, u32)>,
}

/// The conversations of a replay, by the request id of each of their turns.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Conversations {
    by_request: HashMap<String, (Arc<Conversation>, usize)>,
}

impl Conversations {
    /// Adds a conversation whose turns have these request ids (in turn order).
    pub fn add(&mut self, ids: &[String], conversation: Conversation) {
        let c = Arc::new(conversation);
        for (k, id) in ids.iter().enumerate() {
            self.by_request.insert(id.clone(), (c.clone(), k));
        }
    }

    /// Turns known.
    pub fn len(&self) -> usize {
        self.by_request.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.by_request.is_empty()
    }
}

/// Builds replay prompts.
#[derive(Debug, Clone)]
pub struct PromptBuilder {
    /// Tokens per prefix-hash block (`reprise.block_tokens` of the trace), if it has hashes.
    pub block_tokens: Option<usize>,
    /// Salt: different salts give unrelated prompts (e.g. per run, or per stream).
    pub salt: u64,
    /// Session turns whose prompts repeat their conversation (closed-session replay).
    pub conversations: Option<Arc<Conversations>>,
}

/// Seeds of a conversation's segments after its first prompt.
const USER: u64 = 0x5553_4552;
const ANSWER: u64 = 0x414E_5357;

impl PromptBuilder {
    /// A builder without conversations.
    pub fn new(block_tokens: Option<usize>, salt: u64) -> Self {
        PromptBuilder {
            block_tokens,
            salt,
            conversations: None,
        }
    }

    /// A prompt of exactly `tokens` tokens for the request `request_id` (a session turn's
    /// repeats its conversation so far, see the module's documentation).
    pub fn build(&self, request_id: &str, tokens: u32, prefix_hashes: Option<&[u64]>) -> String {
        if let Some((c, k)) = self
            .conversations
            .as_ref()
            .and_then(|cs| cs.by_request.get(request_id))
            .filter(|(_, k)| *k > 0)
        {
            return self.turn(c, *k, tokens as usize);
        }
        self.plain(request_id, tokens, prefix_hashes)
    }

    /// Turn `k` (from 0) of `c`, `words` words long.
    fn turn(&self, c: &Conversation, k: usize, words: usize) -> String {
        let (first_in, _) = c.turns[0];
        let mut out = self.plain(&c.first_id, first_in, c.first_hashes.as_deref());
        let seed = splitmix(fnv(&c.first_id) ^ self.salt);
        let mut used = first_in as usize;
        let mut history = first_in as usize;
        for (j, &(input, output)) in c.turns.iter().enumerate().take(k) {
            if j > 0 {
                // Turn j's own message: what its prompt has beyond the history before it.
                let own = (input as usize).saturating_sub(history);
                push_words(&mut out, splitmix(seed ^ USER ^ j as u64), own);
                used += own;
                history += own;
            }
            push_words(
                &mut out,
                splitmix(seed ^ ANSWER ^ j as u64),
                output as usize,
            );
            used += output as usize;
            history += output as usize;
            if used >= words {
                break;
            }
        }
        if out.starts_with(' ') {
            out.remove(0); // an empty first prompt: no leading space, as `plain` does
        }
        if used < words {
            push_words(&mut out, splitmix(seed ^ USER ^ k as u64), words - used);
        } else {
            // The history is longer than the turn (the client cut its context): its start.
            let cut = out
                .match_indices(' ')
                .nth(words.saturating_sub(1))
                .map_or(out.len(), |(i, _)| i);
            out.truncate(if words == 0 { 0 } else { cut });
        }
        out
    }

    fn plain(&self, request_id: &str, tokens: u32, prefix_hashes: Option<&[u64]>) -> String {
        let tokens = tokens as usize;
        let mut out = String::with_capacity(tokens * 5);
        let mut used = 0;
        if let (Some(block), Some(hashes)) = (self.block_tokens.filter(|&b| b > 0), prefix_hashes) {
            for &h in hashes.iter().take(tokens / block) {
                push_words(&mut out, splitmix(h ^ self.salt ^ 0x5EED), block);
                used += block;
            }
        }
        push_words(
            &mut out,
            splitmix(fnv(request_id) ^ self.salt),
            tokens - used,
        );
        // No leading space: SentencePiece vocabularies (llama) add a `▁` of their own, and
        // a second one would be an extra token at the start. The words stay one token each
        // in cl100k without their space.
        if out.starts_with(' ') {
            out.remove(0);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use reprise_tokenizer::{Cl100k, Tokenizer};

    fn common_prefix_tokens(a: &str, b: &str) -> usize {
        let (ta, tb) = (Cl100k.encode(a), Cl100k.encode(b));
        ta.iter().zip(&tb).take_while(|(x, y)| x == y).count()
    }

    #[test]
    fn equal_hashes_share_exactly_their_blocks() {
        let p = PromptBuilder::new(Some(16), 1);
        let a = p.build("a", 100, Some(&[1, 2, 3]));
        let b = p.build("b", 90, Some(&[1, 2, 9]));
        let c = p.build("c", 100, Some(&[7]));
        assert_eq!(Cl100k.count(&a), 100);
        assert_eq!(Cl100k.count(&b), 90);
        let shared = common_prefix_tokens(&a, &b);
        assert!((32..40).contains(&shared), "two equal blocks: {shared}");
        assert!(
            common_prefix_tokens(&a, &c) < 8,
            "different first hash: no shared block"
        );
        assert_eq!(a, p.build("a", 100, Some(&[1, 2, 3])), "deterministic");
    }

    fn session(turns: &[(u32, u32)]) -> PromptBuilder {
        let mut cs = Conversations::default();
        let ids: Vec<String> = (0..turns.len()).map(|k| format!("t{k}")).collect();
        cs.add(
            &ids,
            Conversation {
                first_id: "t0".into(),
                first_hashes: Some(vec![11, 12]),
                turns: turns.to_vec(),
            },
        );
        PromptBuilder {
            conversations: Some(Arc::new(cs)),
            ..PromptBuilder::new(Some(16), 5)
        }
    }

    #[test]
    fn a_turn_repeats_the_previous_turn_and_a_stand_in_answer() {
        let turns = [(40, 10), (70, 5), (90, 3)];
        let p = session(&turns);
        let prompts: Vec<String> = turns
            .iter()
            .enumerate()
            .map(|(k, &(i, _))| p.build(&format!("t{k}"), i, (k == 0).then_some(&[11, 12][..])))
            .collect();
        for (k, text) in prompts.iter().enumerate() {
            assert_eq!(Cl100k.count(text), turns[k].0 as usize, "turn {k}");
        }
        // Turn 1 holds turn 0's prompt, then a 10-token answer, then 20 tokens of its own.
        assert!(prompts[1].starts_with(&prompts[0]));
        assert!(prompts[2].starts_with(&prompts[1]));
        let shared = common_prefix_tokens(&prompts[1], &prompts[2]);
        assert!((70..72).contains(&shared), "{shared}");
        // The first turn is the plain prompt (its prefix hashes kept).
        assert_eq!(
            prompts[0],
            PromptBuilder::new(Some(16), 5).build("t0", 40, Some(&[11, 12]))
        );
        // Not a session turn: a plain prompt.
        assert_eq!(
            p.build("other", 8, None),
            PromptBuilder::new(Some(16), 5).build("other", 8, None)
        );
    }

    #[test]
    fn a_cut_context_keeps_the_start_of_the_conversation() {
        // Turn 1's 30 tokens are fewer than turn 0's prompt and answer (40 + 10).
        let p = session(&[(40, 10), (30, 5)]);
        let first = p.build("t0", 40, Some(&[11, 12]));
        let cut = p.build("t1", 30, None);
        assert_eq!(Cl100k.count(&cut), 30);
        assert!(first.starts_with(&cut));
        assert_eq!(p.build("t1", 0, None), "");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn session_turns_have_exact_counts_and_share_their_history(
            turns in proptest::collection::vec((1u32..300, 0u32..100), 1..6),
            grow in proptest::collection::vec(0u32..200, 6),
        ) {
            // Cumulative inputs as a conversation has them (or cut, when grow is 0).
            let mut t = turns.clone();
            for k in 1..t.len() {
                t[k].0 = if grow[k] == 0 { t[k].0 } else { t[k - 1].0 + t[k - 1].1 + grow[k] };
            }
            let p = session(&t);
            let mut previous: Option<String> = None;
            for (k, &(input, output)) in t.iter().enumerate() {
                let text = p.build(&format!("t{k}"), input, (k == 0).then_some(&[11, 12][..]));
                prop_assert_eq!(Cl100k.count(&text), input as usize);
                if let Some(prev) = &previous
                    && input >= t[k - 1].0 + t[k - 1].1
                {
                    prop_assert!(text.starts_with(prev.as_str()));
                }
                let _ = output;
                previous = Some(text);
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn token_count_is_exact(tokens in 0u32..3000, id in "[a-z0-9]{1,8}", hashes in proptest::collection::vec(any::<u64>(), 0..10), block in 1usize..600) {
            let p = PromptBuilder::new(Some(block), 3);
            prop_assert_eq!(Cl100k.count(&p.build(&id, tokens, Some(&hashes))), tokens as usize);
        }
    }
}
