//! # reprise-tokenizer — token counts that the simulator and the replayer agree on
//!
//! [`Cl100k`] is the default tokenizer: OpenAI's cl100k BPE, embedded in the binary (no
//! network). The simulator counts `usage.prompt_tokens` with it and the replayer sizes
//! prompts with it, so the two agree exactly. A chat request's prompt is its messages' text
//! joined by `\n`, without a chat template.
//!
//! [`HfTokenizer`] loads a Hugging Face `tokenizer.json` from a local file, for sizing
//! prompts as a particular model counts them.
//!
//! [`OUTPUT_WORDS`] is a vocabulary of words that are one token each and never merge with
//! their neighbours (each starts with a space and is letters only, so cl100k's
//! pre-tokenizer splits them apart): generated text made of them has exactly as many
//! tokens as words.

use std::fmt::Debug;

mod hf;
pub use hf::{HfTokenizer, LoadError};

/// Something that turns text into token ids.
pub trait Tokenizer: Send + Sync + Debug {
    /// A short name, as recorded in `input_tokens_source` (`tokenizer:<name>`).
    fn name(&self) -> &str;
    /// Token ids of `text` (special-token text is encoded as ordinary text).
    fn encode(&self, text: &str) -> Vec<u32>;
    /// Number of tokens of `text`.
    fn count(&self, text: &str) -> usize {
        self.encode(text).len()
    }
}

/// OpenAI's cl100k_base BPE, embedded.
#[derive(Debug, Clone, Copy, Default)]
pub struct Cl100k;

impl Tokenizer for Cl100k {
    fn name(&self) -> &str {
        "cl100k"
    }

    fn encode(&self, text: &str) -> Vec<u32> {
        tiktoken_rs::cl100k_base_singleton().encode_ordinary(text)
    }
}

/// Builds [`Cl100k`]'s tables now rather than on its first use (about 0.1 s of CPU in a
/// release build, 0.6 s in a debug one): for a thread that is about to lower its priority,
/// so that the first prompts it tokenizes do not wait for them at that priority.
pub fn warm_up() {
    let _ = Cl100k.encode("");
}

/// Words that are single cl100k tokens and stay single when concatenated.
pub const OUTPUT_WORDS: [&str; 32] = [
    " the", " of", " and", " to", " in", " is", " that", " for", " it", " with", " as", " was",
    " on", " be", " at", " by", " this", " had", " not", " are", " but", " from", " or", " have",
    " an", " they", " which", " one", " you", " were", " all", " we",
];

/// The `i`-th generated word (a fixed, varied sequence).
pub fn output_word(i: u64) -> &'static str {
    let mixed = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 59;
    OUTPUT_WORDS[mixed as usize % OUTPUT_WORDS.len()]
}

/// Chained hashes of each full block of `block` tokens: the i-th hash depends on all tokens
/// of blocks 0..=i, so equal i-th hashes mean equal prefixes up to that block.
pub fn block_hashes(tokens: &[u32], block: usize, salt: u64) -> Vec<u64> {
    let mut out = Vec::with_capacity(tokens.len() / block.max(1));
    let mut h = salt ^ 0xcbf2_9ce4_8422_2325;
    for chunk in tokens.chunks_exact(block.max(1)) {
        for &t in chunk {
            // FNV-1a over the token's bytes, then a final mix per block.
            for b in t.to_le_bytes() {
                h ^= u64::from(b);
                h = h.wrapping_mul(0x0000_0100_0000_01b3);
            }
        }
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        out.push(h);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_known_text() {
        assert_eq!(Cl100k.count("hello world"), 2);
        assert_eq!(Cl100k.count(""), 0);
    }

    #[test]
    fn output_words_are_single_tokens_and_do_not_merge() {
        for w in OUTPUT_WORDS {
            assert_eq!(Cl100k.count(w), 1, "{w:?}");
        }
        let text: String = (0..500).map(output_word).collect();
        assert_eq!(Cl100k.count(&text), 500);
    }

    #[test]
    fn block_hashes_chain_prefixes() {
        let a: Vec<u32> = (0..64).collect();
        let mut b = a.clone();
        b[40] = 999;
        let (ha, hb) = (block_hashes(&a, 16, 1), block_hashes(&b, 16, 1));
        assert_eq!(ha.len(), 4);
        assert_eq!(ha[..2], hb[..2]);
        assert_ne!(ha[2], hb[2]);
        assert_ne!(ha[3], hb[3], "a difference propagates to every later block");
        assert_ne!(block_hashes(&a, 16, 2)[0], ha[0], "salted");
        assert_eq!(block_hashes(&a[..15], 16, 1), Vec::<u64>::new());
    }
}
