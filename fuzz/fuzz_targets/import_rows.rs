//! Every importer (Azure, Mooncake, BurstGPT, generic CSV and JSONL) on the same bytes.
//! Errors are values, never panics; the body is `reprise_fuzz::targets::import_rows`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| reprise_fuzz::targets::import_rows(data));
