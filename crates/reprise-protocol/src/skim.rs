//! A fast path for [`crate::openai::chunk_facts`]: one pass over a streamed chunk's JSON
//! that validates it as serde_json would and reads only what a client measures (whether
//! `choices` is non-empty, whether any choice carries content, `usage`), without building
//! anything. Strings are skipped, not decoded.
//!
//! It answers only when it is sure to agree with the serde path: anything outside the
//! common shapes — a `\u` escape or any escape in a key, a non-null `error`, a duplicated
//! field that serde would refuse, a value of another type where serde expects a string, an
//! object or a count, nesting deeper than serde's limit, invalid JSON of any kind — returns
//! `None`, and the caller takes the serde path, which gives the exact answer or error. The
//! property tests in `openai.rs` compare the two on generated chunks.

use crate::openai::{ChunkFacts, Usage};

/// serde_json's recursion limit is 128; stay under it.
const MAX_DEPTH: u32 = 100;

struct Skim<'a> {
    b: &'a [u8],
    i: usize,
    depth: u32,
    /// The content strings met (`text`, `delta.content`, `delta.reasoning_content`).
    content: Content,
}

/// Where a chunk's content strings are: the first one's body (between its quotes), and
/// whether any other is non-empty. What [`crate::openai::ChunkReader`] compares chunks by.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Content {
    pub(crate) first: Option<(usize, usize)>,
    pub(crate) others: bool,
}

/// A string's raw content (between its quotes) and whether it held escapes.
struct Str {
    start: usize,
    end: usize,
    escaped: bool,
}

impl Str {
    fn is_empty(&self) -> bool {
        self.start == self.end
    }
}

/// The facts of a chunk, or `None` where the serde path must decide.
pub(crate) fn chunk_facts(data: &str) -> Option<ChunkFacts> {
    chunk_facts_and_content(data).map(|(facts, _)| facts)
}

/// [`chunk_facts`], and where its content strings are.
pub(crate) fn chunk_facts_and_content(data: &str) -> Option<(ChunkFacts, Content)> {
    let mut p = Skim {
        b: data.as_bytes(),
        i: 0,
        depth: 0,
        content: Content::default(),
    };
    let facts = p.chunk()?;
    p.ws();
    (p.i == p.b.len()).then_some((facts, p.content))
}

/// Whether `body` is the body of a JSON string (between its quotes) that this fast path
/// reads: no unescaped quote, no control character, no escape other than the short ones
/// (a `\u` escape is the serde path's), every escape whole within it.
pub(crate) fn plain_string_body(body: &[u8]) -> bool {
    string_body_end(body, 0).is_some_and(|(end, _)| end == body.len())
}

/// From `i` inside a JSON string's body: where the body ends (its closing quote, or the end
/// of `b` when none comes) and whether it held escapes; `None` at a raw control character,
/// at an escape this fast path leaves to serde (`\u`, or an invalid one), and at an escape
/// cut off by the end of `b`.
#[inline(always)]
fn string_body_end(b: &[u8], mut i: usize) -> Option<(usize, bool)> {
    let mut escaped = false;
    loop {
        i = plain_run(b, i);
        match b.get(i) {
            None | Some(b'"') => return Some((i, escaped)),
            Some(b'\\') => {
                escaped = true;
                match b.get(i + 1)? {
                    b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => i += 2,
                    _ => return None,
                }
            }
            // A raw control character: invalid in a JSON string.
            Some(_) => return None,
        }
    }
}

impl<'a> Skim<'a> {
    #[inline(always)]
    fn ws(&mut self) {
        while let Some(&c) = self.b.get(self.i) {
            // Most bytes are above the space: one comparison decides.
            if c <= b' ' && matches!(c, b' ' | b'\t' | b'\n' | b'\r') {
                self.i += 1;
            } else {
                break;
            }
        }
    }

    /// The next byte after whitespace, not consumed.
    #[inline(always)]
    fn peek(&mut self) -> Option<u8> {
        self.ws();
        self.b.get(self.i).copied()
    }

    #[inline(always)]
    fn eat(&mut self, c: u8) -> Option<()> {
        (self.peek()? == c).then(|| self.i += 1)
    }

    #[inline(always)]
    fn literal(&mut self, word: &[u8]) -> Option<()> {
        self.ws();
        self.b[self.i..]
            .starts_with(word)
            .then(|| self.i += word.len())
    }

    /// `null`, consumed, when it is next.
    #[inline(always)]
    fn null(&mut self) -> Option<bool> {
        if self.peek()? == b'n' {
            self.literal(b"null")?;
            return Some(true);
        }
        Some(false)
    }

    /// A string (the opening quote next); `None` for invalid strings and for any `\u`
    /// escape (whose surrogate rules the serde path applies).
    #[inline(always)]
    fn string(&mut self) -> Option<Str> {
        self.eat(b'"')?;
        let start = self.i;
        let (end, escaped) = string_body_end(self.b, start)?;
        if self.b.get(end) != Some(&b'"') {
            return None;
        }
        self.i = end + 1;
        Some(Str {
            start,
            end,
            escaped,
        })
    }

    /// An object key without escapes.
    #[inline(always)]
    fn key(&mut self) -> Option<&'a [u8]> {
        let s = self.string()?;
        if s.escaped {
            return None;
        }
        self.eat(b':')?;
        Some(&self.b[s.start..s.end])
    }

    fn digits(&mut self) -> usize {
        let start = self.i;
        while self.b.get(self.i).is_some_and(u8::is_ascii_digit) {
            self.i += 1;
        }
        self.i - start
    }

    /// A JSON number (RFC 8259 grammar).
    fn number(&mut self) -> Option<()> {
        self.ws();
        if self.b.get(self.i) == Some(&b'-') {
            self.i += 1;
        }
        match self.b.get(self.i)? {
            b'0' => self.i += 1,
            b'1'..=b'9' => {
                self.digits();
            }
            _ => return None,
        }
        if self.b.get(self.i) == Some(&b'.') {
            self.i += 1;
            if self.digits() == 0 {
                return None;
            }
        }
        if matches!(self.b.get(self.i), Some(b'e' | b'E')) {
            self.i += 1;
            if matches!(self.b.get(self.i), Some(b'+' | b'-')) {
                self.i += 1;
            }
            if self.digits() == 0 {
                return None;
            }
        }
        Some(())
    }

    /// A count as serde reads a `u32`: digits only, within range; `None` for anything
    /// else (a fraction, a sign, an exponent), which the serde path judges.
    fn count(&mut self) -> Option<u32> {
        self.ws();
        let start = self.i;
        if self.digits() == 0 || (self.b[start] == b'0' && self.i - start > 1) {
            return None;
        }
        if matches!(self.b.get(self.i), Some(b'.' | b'e' | b'E')) {
            return None;
        }
        std::str::from_utf8(&self.b[start..self.i])
            .ok()?
            .parse()
            .ok()
    }

    /// A count or `null`.
    fn opt_count(&mut self) -> Option<Option<u32>> {
        if self.null()? {
            return Some(None);
        }
        self.count().map(Some)
    }

    /// Any JSON value, validated and skipped.
    fn skip(&mut self) -> Option<()> {
        match self.peek()? {
            b'"' => self.string().map(drop),
            b'{' => self.object(|p, _| p.skip()),
            b'[' => self.array(|p| p.skip()),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            _ => self.number(),
        }
    }

    /// An object, each member's value read by `member` (given the key).
    fn object(&mut self, mut member: impl FnMut(&mut Self, &'a [u8]) -> Option<()>) -> Option<()> {
        self.sequence(b'{', b'}', |p| {
            let key = p.key()?;
            member(p, key)
        })
    }

    /// An array, each element read by `element`.
    fn array(&mut self, element: impl FnMut(&mut Self) -> Option<()>) -> Option<()> {
        self.sequence(b'[', b']', element)
    }

    /// `open`, items separated by commas, each read by `item`, then `close`; one nesting
    /// level deeper while inside.
    #[inline]
    fn sequence(
        &mut self,
        open: u8,
        close: u8,
        mut item: impl FnMut(&mut Self) -> Option<()>,
    ) -> Option<()> {
        self.eat(open)?;
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return None;
        }
        if self.peek()? == close {
            self.i += 1;
        } else {
            loop {
                item(self)?;
                match self.peek()? {
                    b',' => self.i += 1,
                    c if c == close => {
                        self.i += 1;
                        break;
                    }
                    _ => return None,
                }
            }
        }
        self.depth -= 1;
        Some(())
    }

    /// A content string or `null`: `Some(true)` for a non-empty string. Where it is goes
    /// into [`Content`].
    #[inline(always)]
    fn opt_text(&mut self) -> Option<bool> {
        if self.null()? {
            return Some(false);
        }
        if self.peek()? != b'"' {
            return None;
        }
        let s = self.string()?;
        let non_empty = !s.is_empty();
        if self.content.first.is_none() {
            self.content.first = Some((s.start, s.end));
        } else {
            self.content.others |= non_empty;
        }
        Some(non_empty)
    }

    fn chunk(&mut self) -> Option<ChunkFacts> {
        let mut facts = ChunkFacts::default();
        let (mut seen_choices, mut seen_usage, mut seen_error) = (false, false, false);
        self.object(|p, key| match key {
            b"choices" => {
                if std::mem::replace(&mut seen_choices, true) {
                    return None;
                }
                if p.null()? {
                    return Some(());
                }
                if p.peek()? != b'[' {
                    return None;
                }
                p.array(|p| {
                    facts.has_choices = true;
                    let content = p.choice()?;
                    facts.has_content |= content;
                    Some(())
                })
            }
            b"usage" => {
                if std::mem::replace(&mut seen_usage, true) {
                    return None;
                }
                if p.null()? {
                    return Some(());
                }
                facts.usage = p.usage()?;
                Some(())
            }
            b"error" => {
                // A non-null error is rendered as JSON text by the serde path.
                if std::mem::replace(&mut seen_error, true) || !p.null()? {
                    return None;
                }
                Some(())
            }
            _ => p.skip(),
        })?;
        Some(facts)
    }

    /// One choice: whether it carries content.
    fn choice(&mut self) -> Option<bool> {
        if self.peek()? != b'{' {
            return None;
        }
        let (mut seen_delta, mut seen_text) = (false, false);
        let mut content = false;
        self.object(|p, key| match key {
            b"text" => {
                if std::mem::replace(&mut seen_text, true) {
                    return None;
                }
                content |= p.opt_text()?;
                Some(())
            }
            b"delta" => {
                if std::mem::replace(&mut seen_delta, true) {
                    return None;
                }
                if p.null()? {
                    return Some(());
                }
                if p.peek()? != b'{' {
                    return None;
                }
                let (mut seen_content, mut seen_reasoning) = (false, false);
                p.object(|p, key| match key {
                    b"content" => {
                        if std::mem::replace(&mut seen_content, true) {
                            return None;
                        }
                        content |= p.opt_text()?;
                        Some(())
                    }
                    b"reasoning_content" => {
                        if std::mem::replace(&mut seen_reasoning, true) {
                            return None;
                        }
                        content |= p.opt_text()?;
                        Some(())
                    }
                    _ => p.skip(),
                })
            }
            _ => p.skip(),
        })?;
        Some(content)
    }

    /// `usage`: complete counts, or `None` inside when one is missing or null.
    fn usage(&mut self) -> Option<Option<Usage>> {
        if self.peek()? != b'{' {
            return None;
        }
        let mut counts: [Option<Option<u32>>; 3] = [None; 3];
        let mut cached: Option<Option<u32>> = None;
        self.object(|p, key| {
            let slot = match key {
                b"prompt_tokens" => 0,
                b"completion_tokens" => 1,
                b"total_tokens" => 2,
                b"prompt_tokens_details" => {
                    if cached.is_some() {
                        return None;
                    }
                    if p.null()? {
                        cached = Some(None);
                        return Some(());
                    }
                    if p.peek()? != b'{' {
                        return None;
                    }
                    let mut n: Option<Option<u32>> = None;
                    p.object(|p, key| match key {
                        b"cached_tokens" => {
                            if n.is_some() {
                                return None;
                            }
                            n = Some(p.opt_count()?);
                            Some(())
                        }
                        _ => p.skip(),
                    })?;
                    cached = Some(n.flatten());
                    return Some(());
                }
                _ => return p.skip(),
            };
            if counts[slot].is_some() {
                return None;
            }
            counts[slot] = Some(p.opt_count()?);
            Some(())
        })?;
        let [prompt, completion, total] = counts.map(Option::flatten);
        Some((|| {
            Some(Usage {
                prompt_tokens: prompt?,
                completion_tokens: completion?,
                total_tokens: total?,
                cached_tokens: cached.flatten(),
            })
        })())
    }
}

/// Where the run of bytes from `i` that need no attention inside a JSON string ends: the
/// index of the first quote, backslash or control character (or the end). Eight bytes at a
/// time (SWAR): a byte-by-byte loop was the largest cost of reading a chunk.
#[inline(always)]
fn plain_run(b: &[u8], mut i: usize) -> usize {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    while let Some(word) = b.get(i..i + 8) {
        let v = u64::from_le_bytes(word.try_into().expect("eight bytes"));
        // A byte's high bit is set where it is zero (after the xor) or below 0x20; bytes
        // above the first such byte may be flagged falsely, never bytes below it.
        let zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGHS;
        let flags = zero(v ^ (ONES * u64::from(b'"')))
            | zero(v ^ (ONES * u64::from(b'\\')))
            | (v.wrapping_sub(ONES * 0x20) & !v & HIGHS);
        if flags != 0 {
            return i + (flags.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while let Some(&c) = b.get(i) {
        if c == b'"' || c == b'\\' || c < 0x20 {
            break;
        }
        i += 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_runs_stop_at_the_first_byte_that_needs_attention() {
        for (text, run) in [
            (&b"abc"[..], 3),
            (b"", 0),
            (b"\"", 0),
            (b"0123456789abcdef\"x", 16),
            (b"0123456\\89", 7),
            (b"01234567\x1f9", 8),
            (b"\x7f\xc3\xa9 \xff\xfe!~", 8),
            (b"\x00\"", 0),
            // A borrow from a matching byte must not hide an earlier one.
            (b"ab\"\x00cdefgh", 2),
            (b"abcdefg\x1f\"", 7),
        ] {
            assert_eq!(plain_run(text, 0), run, "{text:?}");
            // From an offset: the same run, counted from there.
            let mut shifted = b"xy".to_vec();
            shifted.extend_from_slice(text);
            assert_eq!(plain_run(&shifted, 2), run + 2, "{text:?}");
        }
        // Every position of every special byte, against the plain loop.
        for special in [b'"', b'\\', 0u8, 0x1f] {
            for len in 0..20 {
                for at in 0..=len {
                    let mut v = vec![b'a'; len];
                    if at < len {
                        v[at] = special;
                    }
                    assert_eq!(plain_run(&v, 0), at.min(len), "{special} {len} {at}");
                }
            }
        }
    }
}
