//! Prompts with an exact token count under the default tokenizer, built deterministically so
//! that requests with equal `prefix_hashes` share exactly that prefix and no others collide.
//!
//! Prompts are made of [`reprise_tokenizer::OUTPUT_WORDS`]: words that are one cl100k token
//! each and never merge with their neighbours, so `n` words are exactly `n` tokens. Block `i`
//! of a prompt is derived from its `i`-th prefix hash alone (the hash already encodes the
//! whole prefix), so equal hashes give equal text; the remainder comes from the request id.
//! With 32 words per position, two different 16-token blocks collide with probability 2^-80.

use reprise_tokenizer::OUTPUT_WORDS;

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

fn fnv(s: &str) -> u64 {
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

/// Builds replay prompts.
#[derive(Debug, Clone)]
pub struct PromptBuilder {
    /// Tokens per prefix-hash block (`reprise.block_tokens` of the trace), if it has hashes.
    pub block_tokens: Option<usize>,
    /// Salt: different salts give unrelated prompts (e.g. per run, or per stream).
    pub salt: u64,
}

impl PromptBuilder {
    /// A prompt of exactly `tokens` tokens for the request `request_id`.
    pub fn build(&self, request_id: &str, tokens: u32, prefix_hashes: Option<&[u64]>) -> String {
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
        let p = PromptBuilder {
            block_tokens: Some(16),
            salt: 1,
        };
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

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn token_count_is_exact(tokens in 0u32..3000, id in "[a-z0-9]{1,8}", hashes in proptest::collection::vec(any::<u64>(), 0..10), block in 1usize..600) {
            let p = PromptBuilder { block_tokens: Some(block), salt: 3 };
            prop_assert_eq!(Cl100k.count(&p.build(&id, tokens, Some(&hashes))), tokens as usize);
        }
    }
}
