//! A Hugging Face `tokenizer.json` loaded from a local file (no network): the tokenizer a
//! model ships with, for sizing prompts as that model counts them.

use std::path::{Path, PathBuf};

use crate::Tokenizer;

/// A `tokenizer.json` that could not be used.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct LoadError {
    /// The file.
    pub path: PathBuf,
    /// What went wrong.
    pub message: String,
}

/// A Hugging Face tokenizer. Counts include the special tokens its post-processor adds (a
/// BOS token, for most decoder models), as servers count a completion prompt; no chat
/// template is applied.
pub struct HfTokenizer {
    name: String,
    inner: tokenizers::Tokenizer,
}

impl std::fmt::Debug for HfTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HfTokenizer")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl HfTokenizer {
    /// Loads `path` (a `tokenizer.json`, or a folder holding one).
    pub fn from_file(path: &Path) -> Result<Self, LoadError> {
        let file = if path.is_dir() {
            path.join("tokenizer.json")
        } else {
            path.to_owned()
        };
        let fail = |message: String| LoadError {
            path: file.clone(),
            message,
        };
        let bytes = std::fs::read(&file).map_err(|e| fail(e.to_string()))?;
        let inner = tokenizers::Tokenizer::from_bytes(&bytes)
            .map_err(|e| fail(format!("not a Hugging Face tokenizer.json: {e}")))?;
        let stem = if path.is_dir() { path } else { &file };
        let name = stem
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "tokenizer".into());
        let name = if name == "tokenizer" {
            file.parent()
                .and_then(Path::file_name)
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or(name)
        } else {
            name
        };
        Ok(Self { name, inner })
    }

    /// Size of the vocabulary, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
}

impl Tokenizer for HfTokenizer {
    fn name(&self) -> &str {
        &self.name
    }

    fn encode(&self, text: &str) -> Vec<u32> {
        // Encoding only fails on a broken model (e.g. a missing unknown token); such a
        // text counts as nothing rather than aborting a replay.
        self.inner
            .encode(text, true)
            .map(|e| e.get_ids().to_vec())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A word-level tokenizer with a BOS token added by a template post-processor.
    pub(crate) const WORD_LEVEL: &str = r#"{
      "version": "1.0",
      "truncation": null,
      "padding": null,
      "added_tokens": [{"id": 0, "content": "<s>", "single_word": false, "lstrip": false,
                        "rstrip": false, "normalized": false, "special": true},
                       {"id": 1, "content": "<unk>", "single_word": false, "lstrip": false,
                        "rstrip": false, "normalized": false, "special": true}],
      "normalizer": null,
      "pre_tokenizer": {"type": "Whitespace"},
      "post_processor": {"type": "TemplateProcessing",
                         "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                                    {"Sequence": {"id": "A", "type_id": 0}}],
                         "pair": [{"Sequence": {"id": "A", "type_id": 0}}],
                         "special_tokens": {"<s>": {"id": "<s>", "ids": [0], "tokens": ["<s>"]}}},
      "decoder": null,
      "model": {"type": "WordLevel", "vocab": {"<s>": 0, "<unk>": 1, "the": 2, "of": 3},
                "unk_token": "<unk>"}
    }"#;

    #[test]
    fn loads_a_file_and_counts_with_special_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokenizer.json");
        std::fs::write(&path, WORD_LEVEL).unwrap();
        let t = HfTokenizer::from_file(&path).unwrap();
        assert_eq!(t.encode("the of zebra"), vec![0, 2, 3, 1]);
        assert_eq!(t.count(""), 1, "the BOS token alone");
        assert_eq!(t.vocab_size(), 4);
        // A folder holding tokenizer.json loads too, named after the folder.
        let t = HfTokenizer::from_file(dir.path()).unwrap();
        assert_eq!(t.count("the the"), 3);
        assert_eq!(
            t.name(),
            dir.path().file_name().unwrap().to_string_lossy().as_ref()
        );
    }

    #[test]
    fn bad_files_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("broken.json");
        std::fs::write(&path, "{\"model\": 3}").unwrap();
        let e = HfTokenizer::from_file(&path).unwrap_err().to_string();
        assert!(
            e.starts_with(&path.display().to_string()) && e.contains("not a Hugging Face"),
            "{e}"
        );
        let e = HfTokenizer::from_file(&dir.path().join("missing.json"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing.json"), "{e}");
    }
}
